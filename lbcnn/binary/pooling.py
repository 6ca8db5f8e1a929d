"""4x4 stride-2 'same' max-pooling, the LB-CNN downsampler."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: pooled_size serves the CLI's parser
    import torch


def pooled_size(n: int) -> int:
    """'same' padding with stride 2 keeps ceil(n / 2) positions."""
    return (n + 1) // 2


def maxpool_same(x: torch.Tensor) -> torch.Tensor:
    """Max-pool NCHW with a 4x4 window, stride 2, Keras/TF 'same' padding.

    TF pads ``max((out-1)*2 + 4 - n, 0)`` cells, one before and the rest after.
    torch's symmetric padding=1 plus ceil_mode lets the last window run past
    the end, which is the same window set; padded cells are -inf, so they
    never win. A loop oracle in the tests pins this down for odd and even n.
    """
    import torch.nn.functional as F
    return F.max_pool2d(x, kernel_size=4, stride=2, padding=1, ceil_mode=True)
