"""The ridge head for many C from one pass over the data: the C sweep.

An ELM head is ``W(C) = (HᵀH + I/C)⁻¹ HᵀT`` (primal) or ``Hᵀ (HHᵀ + I/C)⁻¹ T``
(dual). Forming ``HᵀH`` or ``HHᵀ`` is the expensive part and does not depend on
C, so it is formed once per body and every C is solved from it, in one of two ways:

- ``"eigen"``: one symmetric eigendecomposition ``G = V diag(λ) Vᵀ`` (LAPACK
  ``syevd`` on the CPU, cuSOLVER on CUDA); then each C costs two thin matrix
  products, ``W = V diag(1/(λ + 1/C)) Vᵀ HᵀT``. It runs in float64 by default:
  LB-CNN features are all positive, so G has one eigenvalue far above the rest and a
  float32 decomposition loses the small ones. On MNIST (1,960 features, 3,000
  images) float32 eigenvectors gave heads 1e-5 to 0.16 away from the float64 solve
  (relative norm, growing with C), against 4e-6 to 1e-3 for the float32 Cholesky
  solve, and changed up to 7 of 1,000 validation predictions. Round-off can leave
  the smallest eigenvalues of a positive semi-definite G slightly negative; they are
  clamped at 0.
- ``"cholesky"``: one Cholesky factorization of ``G + I/C`` per C (float32, with
  the float64 fallback of ``heads.elm``).

``syevd`` costs far more than a Cholesky factorization of the same matrix (its
tridiagonal reduction is memory-bound): 11x at 1,000, 18x at 2,000, 24x at 4,000 on
one core of the benchmark machine, and float32 is no way out (see above). Measured on
2 cores (``benchmarks/bench_gpu.py --parts sweep``, 10 values, MNIST 40,4): at a
1,000-image rung (dual, 1,000²) the eigendecomposition sweep took 3.1x one Cholesky
head and the Cholesky sweep 4.1x; on 9,000 images (primal, 7,840²) 20.6x against
4.4x. So ``"auto"`` eigendecomposes only small systems or long sweeps
(``eigen_pays``).

``sweep`` scores each C on validation data and walks the grid: a full sweep, or
starting from a given C, its neighbours, moving on while the best lies on an edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError

DEFAULT_C_RANGE = (1e-5, 1.0)
STEPS_PER_DECADE = 2
def eigen_pays(m: int, n_values: int) -> bool:
    """Whether one eigendecomposition of an ``m``² system beats ``n_values`` Cholesky
    factorizations: the break-even grows with m (see the module docstring)."""
    if m <= 1200:
        return n_values >= 8
    if m <= 2500:
        return n_values >= 16
    return n_values >= 24


def c_grid(low: float = DEFAULT_C_RANGE[0], high: float = DEFAULT_C_RANGE[1],
           per_decade: int = STEPS_PER_DECADE) -> np.ndarray:
    """Log-spaced C values from ``low`` to ``high``, both included, ``per_decade`` steps a
    decade (rounded to a whole number of steps); one value when ``low == high``."""
    if not (0 < low <= high) or not math.isfinite(high):
        raise ConfigError(f"C range must be 0 < low <= high, got {low:g},{high:g}")
    if low == high:
        return np.array([float(low)])
    steps = max(1, int(round(per_decade * math.log10(high / low))))
    return np.geomspace(low, high, steps + 1)


def normalized_margins(logits, y) -> np.ndarray:
    """Per row, the true class's lead over the best other class, in units of that row's
    logit spread (standard deviation over classes), so C's shrinkage of every logit
    does not change it."""
    z = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(z))
    true = z[rows, y]
    other = z.copy()
    other[rows, y] = -np.inf
    return (true - other.max(1)) / (z.std(1) + 1e-12)


def validation_score(logits, y) -> tuple[float, float]:
    """(accuracy, mean normalized margin) of logits against labels: how a sweep ranks C
    (the margin only orders equal accuracies)."""
    if isinstance(logits, torch.Tensor):
        y_t = torch.as_tensor(y, device=logits.device)
        right = int((logits.argmax(1) == y_t).sum().item())
        logits = logits.double().cpu().numpy()
    else:
        right = int((np.asarray(logits).argmax(1) == y).sum())
    acc = right / len(y) if len(y) else 0.0
    margin = float(normalized_margins(logits, y).mean()) if len(y) else 0.0
    return acc, margin


class RidgePath:
    """Heads for any C from one formed system: a ``heads.elm.RidgeAccumulator``
    (primal) or ``heads.elm.DualSystem``. ``method``: "eigen", "cholesky" or "auto"
    (``eigen_pays``: eigen for small systems or long sweeps)."""

    def __init__(self, system, method: str = "auto", n_values: int = 1, dtype=np.float64):
        if method not in ("auto", "eigen", "cholesky"):
            raise ConfigError(f"ridge method must be auto, eigen or cholesky, got {method!r}")
        self.system = system
        from .elm import DualSystem
        self.dual = isinstance(system, DualSystem)
        self.device = _device_of(system)
        if method == "auto":
            m = system.n if self.dual else system.n_features
            method = "eigen" if eigen_pays(m, n_values) else "cholesky"
        self.method = method
        self.dtype = np.dtype(dtype)
        self._eig = None

    def weights(self, C: float, host: bool = True):
        """(W, solver) for ``C``: W (d, k) float32 (a device tensor when ``host=False``
        on CUDA)."""
        if self.method == "cholesky":
            if self.dual:
                return self.system.solve(C, host=host)
            w = self.system.solve(C, host=host)
            return w, self.system.solver_
        if self._eig is None:
            self._eig = self._factor()
        lam, v, q, kind = self._eig
        scaled = q / (lam + 1.0 / C)[:, None]
        w = v @ scaled
        if self.dual:
            h = self.system.h
            w = (h.T.to(w.dtype) if isinstance(h, torch.Tensor) else h.T.astype(w.dtype)) @ w
        if isinstance(w, torch.Tensor):
            w = w.float()
            return (w.cpu().numpy() if host else w), kind
        return w.astype(np.float32), kind

    def _factor(self):
        """(λ clamped >= 0, V, Vᵀ·rhs, solver name) of the primal Gram or dual kernel."""
        from ..memory import require

        side = "dual" if self.dual else "primal"
        if self.dual:
            g, rhs = self.system.k, self.system.t
        else:
            g, rhs = self.system._gram, self.system._hty
        m = g.shape[0]
        item = self.dtype.itemsize
        # the copy eigh overwrites, the eigenvectors and syevd's workspace (~2 m²)
        require(4 * item * m * m, f"the eigendecomposition of a {m:,}² matrix",
                "sweep C by Cholesky (method='cholesky'), or use fewer features")
        name = f"{side}-eigen-{self.dtype.name}"
        if isinstance(g, torch.Tensor):
            tdt = torch.float64 if self.dtype == np.float64 else torch.float32
            lam, v = torch.linalg.eigh(g.to(tdt))  # both triangles are formed on the device
            rhs = torch.as_tensor(rhs, device=g.device).to(tdt)
            return lam.clamp_min(0.0), v, v.T @ rhs, name
        from scipy.linalg import eigh
        # both systems hold the upper triangle only (BLAS syrk); eigh reads just that
        lam, v = eigh(np.array(g, dtype=self.dtype, order="F"), lower=False, driver="evd",
                      overwrite_a=True, check_finite=False)
        return np.maximum(lam, 0.0), v, v.T @ rhs.astype(self.dtype), name


def _device_of(system) -> torch.device:
    dev = getattr(system, "device", None)
    if dev is not None:
        return torch.device(dev)
    return system.h.device if getattr(system, "on_device", False) else torch.device("cpu")


@dataclass
class SweepResult:
    """The C a sweep chose, its head, and every C it tried with its validation score."""

    C: float
    weights: object
    solver: str
    accuracy: float
    margin: float
    table: list[dict] = field(default_factory=list)

    def record(self) -> list[dict]:
        return [{"C": r["C"], "val_accuracy": r["val_accuracy"]} for r in self.table]


def sweep(path: RidgePath, grid, score, start: float | None = None, host: bool = True,
          max_steps: int | None = None) -> SweepResult:
    """Choose C on ``grid`` by ``score(W) -> (accuracy, margin)``, the highest first.

    Without ``start`` every C of the grid is tried. With ``start`` (a grid value, or
    the nearest one), that C and its neighbours are tried and the walk continues in
    the direction of an edge winner until the best C has both neighbours tried or
    ends the grid: a few factorizations instead of the whole grid, for when a lower
    rung (or an earlier trial) already placed C.
    """
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or not len(grid) or not np.all(grid > 0):
        raise ConfigError("a C sweep needs at least one positive C")
    tried: dict[int, tuple[float, float, str]] = {}
    best: dict = {}

    def key(i: int):
        # highest accuracy, then margin; a full tie goes to the smaller C (more regularized)
        return (tried[i][0], tried[i][1], -i)

    def run(i: int) -> None:
        if i in tried:
            return
        w, solver = path.weights(float(grid[i]), host=host)
        acc, margin = score(w)
        tried[i] = (float(acc), float(margin), solver)
        if not best or key(i) > key(best["i"]):
            best.update(i=i, w=w)  # only the leader's head is kept: each is d x k

    def best_index() -> int:
        return best["i"]

    if start is None:
        for i in range(len(grid)):
            run(i)
    else:
        i0 = int(np.argmin(np.abs(np.log(grid) - math.log(start))))
        for i in (i0 - 1, i0, i0 + 1):
            if 0 <= i < len(grid):
                run(i)
        steps = 0
        while max_steps is None or steps < max_steps:
            b = best_index()
            nxt = [j for j in (b - 1, b + 1) if 0 <= j < len(grid) and j not in tried]
            if not nxt:
                break
            for j in nxt:
                run(j)
            steps += 1
    b = best_index()
    acc, margin, solver = tried[b]
    table = [{"C": float(grid[i]), "val_accuracy": tried[i][0], "val_margin": tried[i][1]}
             for i in sorted(tried)]
    return SweepResult(float(grid[b]), best["w"], solver, acc, margin, table)
