"""ELM0: the closed-form ridge-regression output layer.

Solves ``(I/C + HᵀH) W = HᵀT`` (primal, features < samples) or
``W = Hᵀ (I/C + HHᵀ)⁻¹ T`` (dual) on +-1 one-vs-rest targets T.

The primal Gram is accumulated chunk by chunk with a symmetric rank-k update
(BLAS syrk, half the flops of a gemm), so the training set never has to sit in
memory as one n x d matrix. Cholesky runs in float32 and falls back to float64
when float32 loses positive definiteness.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas, lapack

from ..errors import DataError
from ..memory import require


# Gram-sized buffers are reused across solves: a fresh 250 MB array costs
# tens of thousands of first-touch page faults, a large share of a trial.
_POOL: dict[tuple, np.ndarray] = {}


def _take(kind: str, d: int) -> np.ndarray:
    buf = _POOL.pop((kind, d), None)
    return buf if buf is not None else np.empty((d, d), dtype=np.float32, order="F")


def _give(kind: str, buf: np.ndarray) -> None:
    _POOL[(kind, buf.shape[0])] = buf
    while len(_POOL) > 2:  # keep only the most recent size
        _POOL.pop(next(iter(_POOL)))


def one_vs_rest_targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    t = np.full((len(y), n_classes), -1.0, dtype=np.float32)
    t[np.arange(len(y)), y] = 1.0
    return t


def _check_finite(h, what="features"):
    ok = torch.isfinite(h).all().item() if isinstance(h, torch.Tensor) else np.isfinite(h).all()
    if not ok:
        raise DataError(f"{what} contain NaN or infinity; check the input images")


class RidgeAccumulator:
    """Streams (features, targets) chunks into HᵀH and HᵀT, then solves.

    On the CPU the sums live in NumPy and use OpenBLAS ``ssyrk`` (only the
    upper triangle is formed); on CUDA they live in torch on the device
    (``torch_backend=True`` runs that torch code on the CPU: the tests' view of it).
    """

    def __init__(self, n_features: int, n_outputs: int, C: float = 1e-3, device=None,
                 torch_backend: bool | None = None):
        if C <= 0:
            from ..errors import ConfigError
            raise ConfigError(f"C must be positive, got {C}")
        self.n_features = n_features
        self.n_outputs = n_outputs
        self.C = C
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        # Gram + its float32 factor; a float64 fallback is planned when it is needed.
        require(2 * 4 * n_features**2, f"the {n_features:,}² Gram matrix",
                "use fewer filters or layers (fewer features), or the dual with a smaller --train-size")
        self.n_samples = 0
        self.solver_ = None
        self.torch = self.device.type == "cuda" if torch_backend is None else bool(torch_backend)
        if self.torch:
            self._gram = torch.zeros(n_features, n_features, device=self.device)
            self._hty = torch.zeros(n_features, n_outputs, device=self.device)
        else:
            self._gram = _take("gram", n_features)
            self._gram.fill(0.0)
            self._hty = np.zeros((n_features, n_outputs), dtype=np.float32)

    def update(self, h, t) -> None:
        _check_finite(h)
        self.n_samples += h.shape[0]
        if self.torch:
            h = torch.as_tensor(h, device=self.device, dtype=torch.float32)
            t = torch.as_tensor(t, device=self.device, dtype=torch.float32)
            self._gram.addmm_(h.T, h)
            self._hty.addmm_(h.T, t)
            return
        h = np.ascontiguousarray(h, dtype=np.float32)
        # h.T is Fortran-contiguous (d, n): syrk(trans=0) adds h.T @ h in place.
        blas.ssyrk(1.0, h.T, beta=1.0, c=self._gram, trans=0, lower=0, overwrite_c=1)
        self._hty += h.T @ t

    @property
    def hty(self):
        """HᵀT as accumulated (NumPy, or a tensor on CUDA)."""
        return self._hty

    def release(self) -> None:
        """Hand the Gram buffer back for reuse; the accumulator is done."""
        if not self.torch and self._gram is not None:
            _give("gram", self._gram)
        self._gram = None

    def gram(self) -> np.ndarray:
        """The full symmetric HᵀH (for tests and diagnostics)."""
        if self.torch:
            return self._gram.cpu().numpy()
        return np.triu(self._gram) + np.triu(self._gram, 1).T

    def solve(self, C: float | None = None, host: bool = True):
        """The head for ``C`` (default: the accumulator's); the sums are kept, so any
        number of C can be solved from one pass over the data. ``host=False`` on CUDA
        leaves the weights on the device."""
        lam = 1.0 / (self.C if C is None else C)
        if self.torch:
            a = self._gram.clone()
            a.diagonal().add_(lam)
            factor, info = torch.linalg.cholesky_ex(a)
            if info.item() == 0:
                self.solver_ = "primal-cholesky-float32"
                w = torch.cholesky_solve(self._hty, factor)
                return w.cpu().numpy() if host else w
            del a, factor
            a = self._gram.double()
            a.diagonal().add_(lam)
            self.solver_ = "primal-cholesky-float64"
            factor = torch.linalg.cholesky(a)
            w = torch.cholesky_solve(self._hty.double(), factor).float()
            return w.cpu().numpy() if host else w
        a = _take("work", self.n_features)
        try:
            a[...] = self._gram
            a[np.diag_indices_from(a)] += lam
            factor, info = lapack.spotrf(a, lower=0, clean=0, overwrite_a=1)
            if info == 0:
                w, info = lapack.spotrs(factor, self._hty, lower=0)
                if info == 0 and np.isfinite(w).all():
                    self.solver_ = "primal-cholesky-float32"
                    return w.astype(np.float32)
            del factor
        finally:
            _give("work", a)
        require(8 * self.n_features**2, "the float64 Cholesky fallback", "use fewer features")
        a = self._gram.astype(np.float64, order="F")
        a[np.diag_indices_from(a)] += lam
        factor, info = lapack.dpotrf(a, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise DataError("the ELM system is not positive definite even in float64; "
                            "the features are degenerate (check for constant images)")
        w, _ = lapack.dpotrs(factor, self._hty.astype(np.float64), lower=0)
        self.solver_ = "primal-cholesky-float64"
        return w.astype(np.float32)


class DualSystem:
    """The dual ridge system for when features outnumber samples: the kernel
    ``K = HHᵀ`` (n x n) is formed once, and ``solve(C)`` gives
    ``W = Hᵀ (I/C + K)⁻¹ T`` for any C. NumPy for an array ``h``, torch on its device
    for a tensor (CUDA in practice)."""

    def __init__(self, h, t):
        _check_finite(h)
        n = h.shape[0]
        require(2 * 8 * n * n, f"the {n:,}² dual kernel matrix", "use a smaller --train-size")
        self.on_device = isinstance(h, torch.Tensor)
        if self.on_device:
            self.h = h.float()
            self.t = torch.as_tensor(t, dtype=torch.float32, device=h.device)
            self.k = self.h @ self.h.T
        else:
            self.h = np.ascontiguousarray(h, dtype=np.float32)
            self.t = np.ascontiguousarray(t, dtype=np.float32)
            # h.T is Fortran (d, n): syrk(trans=1) forms (h.T).T @ h.T = h @ h.T (upper).
            self.k = blas.ssyrk(1.0, self.h.T, trans=1, lower=0)
        self._k64 = None

    @property
    def n(self) -> int:
        return self.h.shape[0]

    def solve(self, C: float, host: bool = True):
        """(W, solver): W (d, k) float32, a NumPy array unless ``host=False`` on CUDA."""
        lam = 1.0 / C
        if self.on_device:
            a = self.k.clone()
            a.diagonal().add_(lam)
            factor, info = torch.linalg.cholesky_ex(a)
            if info.item() == 0:
                w, solver = self.h.T @ torch.cholesky_solve(self.t, factor), "dual-cholesky-float32"
            else:
                a = self.k.double()
                a.diagonal().add_(lam)
                alpha = torch.cholesky_solve(self.t.double(), torch.linalg.cholesky(a))
                w, solver = (self.h.T.double() @ alpha).float(), "dual-cholesky-float64"
            return (w.cpu().numpy() if host else w), solver
        k = self.k.copy(order="F")
        k[np.diag_indices_from(k)] += lam
        factor, info = lapack.spotrf(k, lower=0, clean=0, overwrite_a=1)
        if info == 0:
            alpha, info = lapack.spotrs(factor, self.t, lower=0)
            if info == 0 and np.isfinite(alpha).all():
                return (self.h.T @ alpha).astype(np.float32), "dual-cholesky-float32"
        del k, factor
        if self._k64 is None:
            self._k64 = blas.dsyrk(1.0, self.h.T.astype(np.float64), trans=1, lower=0)
        k = self._k64.copy(order="F")
        k[np.diag_indices_from(k)] += lam
        factor, info = lapack.dpotrf(k, lower=0, clean=0, overwrite_a=1)
        if info != 0:
            raise DataError("the ELM dual system is not positive definite even in float64")
        alpha, _ = lapack.dpotrs(factor, self.t.astype(np.float64), lower=0)
        return (self.h.T.astype(np.float64) @ alpha).astype(np.float32), "dual-cholesky-float64"


def solve_dual(h: np.ndarray, t: np.ndarray, C: float = 1e-3) -> tuple[np.ndarray, str]:
    """W = Hᵀ (I/C + HHᵀ)⁻¹ T, for when features outnumber samples."""
    return DualSystem(h, t).solve(C)
