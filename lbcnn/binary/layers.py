"""Binary layers with latent float weights (larq's QuantConv2D / QuantDense).

The latent weights train in float; the forward pass binarizes them with
``kernel_quantizer``. Call ``clip_latent_()`` after each optimizer step to keep
them in [-1, 1] (outside it the STE gradient would be zero forever).
``scale=True`` multiplies each output channel by H, the mean absolute latent
weight of that channel (the paper's eqs 6-7).
``input_quantizer=None`` leaves the input real-valued (the first layer).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .quantizers import get_quantizer


class _BinaryMixin:
    def _setup(self, input_quantizer, kernel_quantizer, scale):
        self.input_quantizer_name = input_quantizer
        self.kernel_quantizer_name = kernel_quantizer
        self.input_quantizer = get_quantizer(input_quantizer)
        self.kernel_quantizer = get_quantizer(kernel_quantizer)
        self.scale = bool(scale)

    def binary_weight(self) -> torch.Tensor:
        w = self.kernel_quantizer(self.weight)
        if self.scale:
            dims = tuple(range(1, self.weight.dim()))
            h = self.weight.detach().abs().mean(dim=dims, keepdim=True)
            w = w * h
        return w

    @torch.no_grad()
    def clip_latent_(self) -> None:
        self.weight.clamp_(-1.0, 1.0)

    @property
    def input_binary(self) -> bool:
        return self.input_quantizer_name is not None and self.input_quantizer_name != "identity"


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size=3, padding=1, *,
                 input_quantizer="ste_sign", kernel_quantizer="ste_sign", scale=False, bias=False):
        if in_channels < 1 or out_channels < 1:
            raise ConfigError(f"conv widths must be >= 1, got {in_channels} -> {out_channels}")
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self._setup(input_quantizer, kernel_quantizer, scale)

    def forward(self, x):
        return F.conv2d(self.input_quantizer(x), self.binary_weight(), self.bias,
                        self.stride, self.padding, self.dilation, self.groups)


class BinaryLinear(_BinaryMixin, nn.Linear):
    def __init__(self, in_features, out_features, *, input_quantizer="ste_sign",
                 kernel_quantizer="ste_sign", scale=False, bias=False):
        if in_features < 1 or out_features < 1:
            raise ConfigError(f"dense widths must be >= 1, got {in_features} -> {out_features}")
        super().__init__(in_features, out_features, bias=bias)
        self._setup(input_quantizer, kernel_quantizer, scale)

    def forward(self, x):
        return F.linear(self.input_quantizer(x), self.binary_weight(), self.bias)


class BinaryActivation(nn.Module):
    def __init__(self, quantizer="ste_sign"):
        super().__init__()
        self.quantizer_name = quantizer
        self.quantizer = get_quantizer(quantizer)

    def forward(self, x):
        return self.quantizer(x)

    def extra_repr(self):
        return f"quantizer={self.quantizer_name!r}"


def clip_all_latent_(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, _BinaryMixin):
            m.clip_latent_()
