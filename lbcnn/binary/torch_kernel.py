"""The LB-CNN feature kernel in torch: batched, float32, exact, on any device.

A depthwise 3x3 convolution with +-1 taps is computed as nine shifted
multiply-adds rather than with ``F.conv2d``: every product is +-x and every
partial sum of integer-valued inputs is an integer, so as long as the sums stay
below 2^24 in magnitude float32 holds them exactly and the result does not depend
on the order of the additions. That is what makes this path equal to the C
kernel (``_lbfeat.c``) bit for bit on the CPU and on CUDA, where cuDNN would be
free to pick TF32 or Winograd/FFT algorithms that round. uint8 pixels are
converted on the device (a quarter of the bytes cross the bus) and scaled once,
at the end, in float32, as the C kernel does.

Exactness bound: each conv multiplies the largest magnitude by at most 9, so a
body of ``L`` layers with ``nl`` convs each stays exact for uint8 input while
``255 * 9**(L * nl) < 2**24``, i.e. up to 5 convs in the worst case (any 3-layer,
nl=1 body, or 2 layers with nl=2); deeper bodies agree unless a partial sum
exceeds 2^24, which real images do not come near (``exact_bound``).

Work is chunked over images so the largest intermediate maps fit the memory
plan: free CUDA memory on a GPU, ``LBCNN_MEMORY_GB`` (or free RAM) on the CPU.
"""
from __future__ import annotations

import torch

from .pooling import maxpool_same, pooled_size

_CPU_CHUNK_BYTES = 256 << 20  # beyond this the CPU gains nothing from larger batches
_CUDA_FREE_SHARE = 0.4  # of free device memory one feature chunk may take


def exact_bound(n_convs: int, pixel_max: float = 255.0) -> float:
    """The largest magnitude a chain of ``n_convs`` +-1 3x3 convs can reach."""
    return pixel_max * 9.0 ** n_convs


def bytes_per_image(input_shape, filters, nl: int) -> int:
    """Peak float32 bytes one image occupies while its features are computed."""
    h, w, c = input_shape
    peak = 0
    for m in filters:
        co = c * m
        # padded input + conv output + (for nl > 1) the padded ReLU map of the extra conv
        live = (h + 2) * (w + 2) * c + h * w * co + (2 if nl > 1 else 1) * (h + 2) * (w + 2) * co
        peak = max(peak, live)
        h, w, c = pooled_size(h), pooled_size(w), co
    return 4 * (peak + h * w * c)


def chunk_rows(input_shape, filters, nl: int, device: torch.device, n: int) -> int:
    """Images per chunk: as many as the memory plan allows, at least one."""
    per = bytes_per_image(input_shape, filters, nl)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * _CUDA_FREE_SHARE)
    else:
        from ..settings import memory_budget_bytes
        budget = min(_CPU_CHUNK_BYTES, memory_budget_bytes() // 4)
    return max(1, min(n, budget // max(per, 1)))


def taps_tensor(kernel, device) -> torch.Tensor:
    """Keras (3, 3, C, m) +-1 kernel -> (9, C, m) float32 taps, tap ``3*row + col``."""
    kh, kw, c, m = kernel.shape
    return torch.as_tensor(kernel.reshape(kh * kw, c, m), dtype=torch.float32, device=device)


def depthwise3x3(x: torch.Tensor, taps: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """NHWC ``x`` (C channels) -> NHWC (C*m channels): output channel ``c*m + j`` is input
    channel ``c`` convolved with ``taps[:, c, j]``, zero padding 1 ('same')."""
    n, h, w, c = x.shape
    m = taps.shape[2]
    if relu:
        x = x.clamp_min(0.0)
    xp = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1)).unsqueeze(-1)  # (n, h+2, w+2, c, 1)
    out = xp[:, 0:h, 0:w] * taps[0]
    for t in range(1, 9):
        di, dj = divmod(t, 3)
        out.addcmul_(xp[:, di:di + h, dj:dj + w], taps[t])
    return out.reshape(n, h, w, c * m)


def pool_nhwc(x: torch.Tensor) -> torch.Tensor:
    """4x4/2 'same' max-pool of an NHWC tensor (a channels-last NCHW view for torch)."""
    return maxpool_same(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def body_features(x: torch.Tensor, layers, scale: float = 1.0) -> torch.Tensor:
    """NHWC images (uint8 or float, any device) -> (n, d) float32 features, flattened
    (H, W, C). ``layers``: per layer ``(main_taps, [extra_taps, ...])`` from ``taps_tensor``."""
    h = x.to(torch.float32) if x.dtype != torch.float32 else x
    for main, extras in layers:
        h = depthwise3x3(h, main)
        for extra in extras:
            h = depthwise3x3(h, extra, relu=True)
        h = pool_nhwc(h)
    h = h.reshape(h.shape[0], -1)
    if scale != 1.0:
        h = h.mul_(scale) if h.is_contiguous() else h * scale
    return h.contiguous()
