"""The wall-clock budget of ``lbcnn optimize``: every start is checked against it.

``--minutes`` bounds the whole command: the search, the refit of every front
member on the whole budget, its one test read and the outputs. Nothing can be
stopped halfway (a LAPACK call is not interruptible), so the bound is kept by
not starting what would not finish: each evaluation and refit is predicted from
a work count (``work_eval`` / ``work_refit``: features, the ridge system and its
factorizations, GPTQ's Gram and Cholesky) times a rate measured on this run's own
evaluations (seconds per unit of work, a high quantile of the recent ratios, so
one fast trial does not make the next start look cheaper than it is). Before
the first measurement a conservative prior is used.
"""
from __future__ import annotations

import math
import time
from collections import deque

import numpy as np

PRIOR_RATE = 5e-11  # seconds per unit of work before any measurement: 20 Gflop/s
OVERHEAD = 0.3  # seconds per evaluation beyond its arithmetic, until it is measured
OUTPUT_SECONDS = 3.0  # CSV, JSON, the front plot (matplotlib's import is most of it)
SAFETY = 0.03  # of the budget, kept back against prediction error ...
MIN_SAFETY = 1.5  # ... and at least this many seconds
REFIT_OVERHEAD = 0.5  # seconds a refit costs beyond its arithmetic (estimator, saving, scoring)


def warm_imports() -> None:
    """Import now what the final refits and outputs import on first use, so the end of
    the run costs what its predictions say (a cold import is seconds on a loaded VM)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import sklearn.utils.validation  # noqa: F401

    from ...deploy import accounting  # noqa: F401
    from ...io import native  # noqa: F401


def process_age() -> float:
    """Seconds since this process started (0 where /proc is not available): a command's
    clock starts when the user starts it, not when its imports are done."""
    try:
        import os
        with open("/proc/self/stat") as fh:
            start_ticks = float(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Clock:
    """A deadline ``seconds`` after ``started`` (a ``time.perf_counter`` value)."""

    def __init__(self, seconds: float, started: float | None = None):
        self.budget = float(seconds)
        self.started = time.perf_counter() if started is None else float(started)
        self.end = self.started + self.budget - OUTPUT_SECONDS - max(SAFETY * self.budget,
                                                                      MIN_SAFETY)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        """Seconds left for work (the outputs' share and the safety margin excluded)."""
        return self.end - time.perf_counter()


def _ridge_work(n: int, d: int, n_val: int, k: int, n_c: int) -> float:
    if d < n:  # primal: HᵀH, one Cholesky per C
        form, factor, back = float(n) * d * d, d ** 3 / 3.0, 2.0 * d * d * k
    else:  # dual: HHᵀ, one Cholesky per C, W = Hᵀα
        form, factor, back = float(n) * n * d, n ** 3 / 3.0, 2.0 * n * d * k
    return form + n_c * (factor + back + 2.0 * n_val * d * k)


def _gptq_work(n: int, d: int, k: int, bits: int) -> float:
    if bits == 32:
        return 0.0
    # centred Gram, one Cholesky, the rounding's trailing updates, 64 clipping levels
    return float(n) * d * d + d ** 3 / 3.0 + 2.0 * d * d * k + 64 * 2.0 * 512 * d * k


def work_eval(d: int, macs: int, n_fit: int, n_val: int, k: int, bits: int, n_c: int,
              cached_rows: int = 0) -> tuple[float, float]:
    """(arithmetic work units, feature MACs) of one evaluation: the ridge system and
    ``n_c`` solves scored on validation, then (n-bit heads) GPTQ; and the features of
    the rows not yet cached."""
    feats = float(macs) * max(0, n_fit + n_val - cached_rows)
    return _ridge_work(n_fit, d, n_val, k, n_c) + _gptq_work(n_fit, d, k, bits), feats


def work_refit(d: int, macs: int, n_budget: int, n_test: int, k: int, bits: int
               ) -> tuple[float, float]:
    """A front member's refit on the whole budget (features streamed twice: the head, then
    the quantizer's statistics), its quantization and its test read."""
    feats = float(macs) * (2 * n_budget + n_test)
    return _ridge_work(n_budget, d, 0, k, 1) + _gptq_work(n_budget, d, k, bits), feats


def calibrate(threads: int = 1) -> float:
    """Seconds per work unit of a small Gram and Cholesky factorization on this machine,
    now (its load included), with ``threads`` BLAS threads: the prior before the first
    evaluation is measured. Small matrices run below peak, as feature extraction and
    memory-bound steps do, so this errs on the slow side."""
    from scipy.linalg import blas, lapack
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    h = rng.normal(size=(768, 384)).astype(np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        t0 = time.perf_counter()
        for _ in range(3):
            g = blas.ssyrk(1.0, h.T, trans=0, lower=0)
            g[np.diag_indices_from(g)] += 1.0
            lapack.spotrf(g, lower=0, clean=0, overwrite_a=1)
        seconds = (time.perf_counter() - t0) / 3
    return max(seconds / (768 * 384 * 384 + 384 ** 3 / 3.0), 1e-13)


class CostModel:
    """Seconds from ``(work, feature MACs)``: ``margin * (a + b * work + f * macs)``, ``a`` a
    fixed cost per evaluation (Python, allocation, small kernels), ``b`` seconds per unit
    of BLAS/LAPACK work, ``f`` seconds per feature MAC (the feature kernel runs far from
    peak on thin layers, so it gets its own rate). ``f`` is the median of the measured
    feature seconds per MAC; ``a`` and ``b`` are fitted to the rest of the measured
    seconds by least squares on relative error (the last ``window`` measurements). Before
    ``min_points`` measurements: ``a = OVERHEAD``, ``b = prior`` (e.g. 1.5x
    ``calibrate()``) and ``f = 20 b``."""

    def __init__(self, prior: float = PRIOR_RATE, window: int = 60, margin: float = 1.2,
                 min_points: int = 3):
        self.prior = prior
        self.margin = margin
        self.min_points = min_points
        self._points: deque = deque(maxlen=window)
        self._feature_rates: deque = deque(maxlen=window)
        self._fit = None

    def observe(self, work, seconds: float, feature_seconds: float | None = None) -> None:
        """A measured evaluation or refit: ``work`` as ``work_eval`` gives it."""
        w, macs = work
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        if feature_seconds is not None and macs > 0 and feature_seconds > 0:
            self._feature_rates.append(feature_seconds / macs)
            rest = max(seconds - feature_seconds, 1e-4)
        else:
            rest = max(seconds - self.feature_rate() * macs, 1e-4)
        if w > 0:
            self._points.append((float(w), float(rest)))
        self._fit = None

    @property
    def measured(self) -> int:
        return len(self._points)

    def feature_rate(self) -> float:
        if not self._feature_rates:
            return 20 * self.coefficients()[1]
        return float(np.median(np.asarray(self._feature_rates)))

    def coefficients(self) -> tuple[float, float]:
        if len(self._points) < self.min_points:
            return OVERHEAD, self.prior
        if self._fit is None:
            w, s = np.asarray(self._points).T
            # minimize sum(((a + b w - s) / s)^2): weighted least squares, weights 1/s^2
            x = np.stack([1.0 / s, w / s], axis=1)
            (a, b), *_ = np.linalg.lstsq(x, np.ones_like(s), rcond=None)
            if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
                a, b = OVERHEAD, float(np.median((s - OVERHEAD).clip(1e-6) / w))
            self._fit = (float(min(max(a, 0.0), 5.0)), float(max(b, 1e-14)))
        return self._fit

    def rate(self) -> float:
        return self.coefficients()[1]

    def seconds(self, work) -> float:
        w, macs = work
        a, b = self.coefficients()
        return self.margin * (a + b * w + self.feature_rate() * macs)
