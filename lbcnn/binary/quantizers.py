"""Small, named, swappable quantizers (larq-style).

Stateless ones are functions (``get_quantizer``); the multi-bit LSQ quantizers keep a
learned step and are modules (``make_quantizer``); ``list_quantizers`` names both.

``SignSTE`` is the CBCNN paper's Algorithm 1: the forward pass is
``sign(x)`` with ``sign(0) = +1`` (values are exactly -1 or +1), the backward
pass is the straight-through estimator of the hard sigmoid (eqs 3-5): the
gradient passes unchanged where ``|x| <= 1`` and is zero outside.
"""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """-1/+1 with sign(0) = +1 (and -0.0 -> +1), same dtype as ``x``."""
    # 2 * [x >= 0] - 1: two cheap in-place passes over a fresh tensor, where
    # torch.where with two ones_like tensors was ~2x slower on CPU
    return (x >= 0).to(x.dtype).mul_(2).sub_(1)


class SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        # keep the 1-byte pass mask, not x: a quarter of the memory until backward
        ctx.save_for_backward(x.abs() <= 1)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad_out):
        (inside,) = ctx.saved_tensors
        return grad_out * inside.to(grad_out.dtype)


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    return SignSTE.apply(x)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


_QUANTIZERS = {"ste_sign": ste_sign, "identity": identity}


def list_quantizers() -> list[str]:
    return sorted(_QUANTIZERS) + sorted(_STATEFUL)


def get_quantizer(name):
    """A quantizer by name; ``None`` means none (identity); callables pass through."""
    if name is None:
        return identity
    if callable(name):
        return name
    if name in _STATEFUL:
        raise ConfigError(f"{name} keeps a learned step: build one with make_quantizer({name!r}, ...)")
    if name not in _QUANTIZERS:
        raise ConfigError(f"unknown quantizer {name!r}; choose from {', '.join(list_quantizers())}")
    return _QUANTIZERS[name]


def quantizer_name(q) -> str | None:
    for k, v in _QUANTIZERS.items():
        if v is q:
            return k
    return None


# -- multi-bit quantizers with learned scales (LSQ) --------------------------------------
# Esser et al. 2020, "Learned Step Size Quantization". A weight quantizer maps w to
# ``(clamp(round(w / s - off), lo, hi) + off) * s`` with a learned step ``s`` per output
# channel (or per tensor); an activation quantizer maps x >= 0 to
# ``clamp(round(x / s), 0, 2^n - 1) * s``. Rounding passes the gradient straight
# through (STE), and the step's gradient is scaled by 1 / sqrt(n_elements * q_max) as
# the paper prescribes. The step starts at the MSE-optimal value for the first tensor it
# sees (``initialized``, a buffer, so a checkpoint restores it).
#
# Level grids (``weight_levels``): "symnz" has 2^n levels and no zero, +-0.5, +-1.5, ...
# (1 bit: +-0.5, i.e. sign(w)), whose integers 2 * level are odd; "int" is symmetric two's
# complement without -2^(n-1) (2 bits: ternary), whose integers are the levels.
WEIGHT_MODES = ("symnz", "int")


def weight_levels(bits: int, mode: str) -> tuple[int, int, float]:
    """(lo, hi, offset): level index range and offset; a level is ``(i + offset) * step``."""
    bits = int(bits)
    if mode not in WEIGHT_MODES:
        raise ConfigError(f"unknown weight mode {mode!r}; choose from {', '.join(WEIGHT_MODES)}")
    if mode == "symnz":
        if not 1 <= bits <= 8:
            raise ConfigError(f"symnz weights take 1..8 bits, got {bits}")
        n = 1 << (bits - 1)
        return -n, n - 1, 0.5
    if not 2 <= bits <= 8:
        raise ConfigError(f"int weights take 2..8 bits, got {bits}")
    q = (1 << (bits - 1)) - 1
    return -q, q, 0.0


def integer_weight_map(mode: str) -> tuple[int, int]:
    """(a, b) with integer weight ``W = a * i + b`` for level index ``i``: the level
    ``(i + offset) * step`` is ``W * step / a``."""
    return (2, 1) if mode == "symnz" else (1, 0)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x forward, gradient times g backward."""
    return (x - x * g).detach() + x * g


@torch.no_grad()
def mse_step(w2d: torch.Tensor, lo: int, hi: int, offset: float, grid: int = 60) -> torch.Tensor:
    """Per-row step minimising the squared quantization error, searched on a grid of
    multiples of mean |w| (rows: output channels, or one row for a tensor)."""
    mean = w2d.abs().mean(1, keepdim=True).clamp_min(1e-8)
    best_err, best = None, None
    for f in torch.linspace(0.05, 4.0, grid):
        s = mean * f / max(hi + offset, 0.5)
        q = (torch.clamp(torch.round(w2d / s - offset), lo, hi) + offset) * s
        err = ((q - w2d) ** 2).sum(1, keepdim=True)
        if best is None:
            best_err, best = err, s.clone()
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, s, best)
    return best


class LSQWeight(torch.nn.Module):
    """n-bit weight quantizer with a learned step per output channel (``per="channel"``)
    or per tensor; ``bits=0`` passes the weight through (a float layer)."""

    def __init__(self, shape, bits: int, mode: str = "symnz", per: str = "channel"):
        super().__init__()
        if per not in ("channel", "tensor"):
            raise ConfigError(f"scale granularity must be channel or tensor, got {per!r}")
        self.bits, self.mode, self.per = int(bits), mode, per
        self.lo, self.hi, self.offset = weight_levels(bits, mode) if bits else (0, 0, 0.0)
        n = int(shape[0]) if per == "channel" else 1
        self.step = torch.nn.Parameter(torch.ones(n, *([1] * (len(shape) - 1))))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def effective_step(self) -> torch.Tensor:
        return self.step.abs() + 1e-12

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.bits:
            return w
        if not bool(self.initialized):
            with torch.no_grad():
                rows = w.reshape(w.shape[0], -1) if self.per == "channel" else w.reshape(1, -1)
                self.step.copy_(mse_step(rows, self.lo, self.hi, self.offset)
                                .reshape(self.step.shape))
                self.initialized.fill_(True)
        s = grad_scale(self.effective_step(), 1.0 / math.sqrt(w[0].numel() * max(self.hi, 1)))
        q = torch.clamp(round_ste(w / s - self.offset), self.lo, self.hi) + self.offset
        return q * s

    @torch.no_grad()
    def levels(self, w: torch.Tensor) -> torch.Tensor:
        """The level index of every weight (int64), as the forward pass rounds it."""
        s = self.effective_step()
        return torch.clamp(torch.round(w / s - self.offset), self.lo, self.hi).long()

    def extra_repr(self):
        return f"bits={self.bits}, mode={self.mode!r}, per={self.per!r}"


class LSQActivation(torch.nn.Module):
    """Unsigned n-bit activation quantizer with one learned step: x -> integers
    0 .. 2^n - 1 times the step."""

    def __init__(self, bits: int = 8):
        super().__init__()
        if not 2 <= int(bits) <= 8:
            raise ConfigError(f"activation bits must be 2..8, got {bits}")
        self.bits = int(bits)
        self.step = torch.nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def q_max(self) -> int:
        return (1 << self.bits) - 1

    def effective_step(self) -> torch.Tensor:
        return self.step.abs() + 1e-12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hi = self.q_max
        if not bool(self.initialized):
            with torch.no_grad():
                xs = x.detach().flatten()
                if xs.numel() > 200_000:   # a seeded subsample: the init stays deterministic
                    g = torch.Generator().manual_seed(0)
                    xs = xs[torch.randperm(xs.numel(), generator=g)[:200_000]]
                top = xs.max().clamp_min(1e-8)
                best_err, best = None, None
                for f in torch.linspace(0.05, 1.0, 40):
                    s = top * f / hi
                    err = ((torch.clamp(torch.round(xs / s), 0, hi) * s - xs) ** 2).sum()
                    if best is None or err < best_err:
                        best_err, best = err, s
                self.step.fill_(float(best))
                self.initialized.fill_(True)
        s = grad_scale(self.effective_step(), 1.0 / math.sqrt(x[0].numel() * hi))
        return torch.clamp(round_ste(x / s), 0, hi) * s

    def extra_repr(self):
        return f"bits={self.bits}"


# stateful quantizers are classes: ``make_quantizer(name, **kwargs)`` builds one
_STATEFUL = {"lsq_weight": LSQWeight, "lsq_activation": LSQActivation}


def make_quantizer(name, **kwargs):
    """A quantizer by name: the function of a stateless one (``ste_sign``, ``identity``),
    or a new module of a stateful one (``lsq_weight``, ``lsq_activation``) built with
    ``kwargs``."""
    if name in _STATEFUL:
        return _STATEFUL[name](**kwargs)
    if kwargs:
        raise ConfigError(f"quantizer {name!r} takes no settings")
    return get_quantizer(name)
