"""Losses of the binary trainers, on per-class scores ``out`` (n, k) and labels ``y`` (n,)."""
from __future__ import annotations

import torch


def squared_hinge(out: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """mean over samples and classes of max(0, 1 - t * out)^2, t the +-1 one-hot target."""
    t = torch.full_like(out, -1.0)
    t.scatter_(1, y.view(-1, 1), 1.0)
    return torch.clamp(1.0 - t * out, min=0.0).pow(2).mean()


def cross_entropy(out: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(out, y)
