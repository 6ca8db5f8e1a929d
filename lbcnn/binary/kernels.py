"""Random +-1 depthwise kernels, stored in Keras' DepthwiseConv2D layout."""
from __future__ import annotations

import numpy as np
import torch


def random_sign_kernels(rng: np.random.Generator, in_channels: int, multiplier: int) -> np.ndarray:
    """A (3, 3, in_channels, multiplier) int8 array of exactly -1 and +1."""
    bits = rng.integers(0, 2, size=(3, 3, in_channels, multiplier), dtype=np.int8)
    return (bits * 2 - 1).astype(np.int8)


def sign_kernels_to_torch(kernel: np.ndarray, dtype=torch.float32, device=None) -> torch.Tensor:
    """Keras (3, 3, C, m) -> torch grouped-conv weight (C*m, 1, 3, 3).

    Keras numbers the outputs of a depthwise conv ``c * m + j``, and torch's
    grouped conv with ``groups=C`` does the same, so the reshape is direct.
    """
    kh, kw, c, m = kernel.shape
    w = torch.as_tensor(kernel.reshape(kh, kw, c * m), dtype=dtype, device=device)
    return w.permute(2, 0, 1).unsqueeze(1).contiguous()


def sign_kernels_to_taps(kernel: np.ndarray) -> np.ndarray:
    """Keras (3, 3, C, m) -> (9, C*m) float32 taps, the native kernel's layout."""
    kh, kw, c, m = kernel.shape
    return np.ascontiguousarray(kernel.reshape(kh * kw, c * m), dtype=np.float32)
