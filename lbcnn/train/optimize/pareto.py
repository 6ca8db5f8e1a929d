"""Pareto ranking for multi-objective successive halving.

Optuna 5's ``Trial.report`` raises NotImplementedError in multi-objective
studies, so its pruners cannot rank a rung; NSGA-II's order (non-dominated
rank, then crowding distance, larger first) does it here, in plain NumPy.
Every objective is turned into "larger is better" by the caller's signs.
"""
from __future__ import annotations

import numpy as np


def _as_max(points, maximize) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    sign = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
    return p * sign


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """``a`` is at least as good everywhere and better somewhere (maximizing)."""
    return bool(np.all(a >= b) and np.any(a > b))


def nondominated_ranks(points, maximize) -> np.ndarray:
    """Rank 0 for the Pareto front, 1 for the front once rank 0 is removed, ..."""
    p = _as_max(points, maximize)
    n = len(p)
    ge = np.all(p[:, None, :] >= p[None, :, :], axis=2)
    gt = np.any(p[:, None, :] > p[None, :, :], axis=2)
    dom = ge & gt  # dom[i, j]: i dominates j
    n_dominators = dom.sum(0)
    ranks = np.full(n, -1, dtype=np.int64)
    current = np.flatnonzero(n_dominators == 0)
    r = 0
    while current.size:
        ranks[current] = r
        n_dominators = n_dominators - dom[current].sum(0)
        n_dominators[ranks >= 0] = -1
        current = np.flatnonzero(n_dominators == 0)
        r += 1
    return ranks


def crowding_distance(points, maximize) -> np.ndarray:
    """NSGA-II crowding distance within one set of points (ends get infinity)."""
    p = _as_max(points, maximize)
    n, m = p.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(p[:, j], kind="stable")
        lo, hi = p[order[0], j], p[order[-1], j]
        dist[order[0]] = dist[order[-1]] = np.inf
        if hi == lo:
            continue
        dist[order[1:-1]] += (p[order[2:], j] - p[order[:-2], j]) / (hi - lo)
    return dist


def pareto_order(points, maximize) -> np.ndarray:
    """Indices best first: by non-dominated rank, then larger crowding distance,
    then index (so ties resolve the same way every run)."""
    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    ranks = nondominated_ranks(p, maximize)
    crowd = np.zeros(n)
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        crowd[idx] = crowding_distance(p[idx], maximize)
    return np.array(sorted(range(n), key=lambda i: (ranks[i], -crowd[i], i)), dtype=np.int64)


def pareto_front(points, maximize) -> np.ndarray:
    """Indices of the non-dominated points (duplicates of a front point all kept)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 0:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(nondominated_ranks(p, maximize) == 0)


def promote(points, maximize, fraction: float = 1 / 3, context=None) -> np.ndarray:
    """The best ``ceil(fraction * n)`` of ``points`` by ``pareto_order``.

    ``context`` (earlier results at the same rung) joins the ranking but is never
    picked: a bracket member dominated by what the study has already seen at this
    rung then ranks below one that extends the front, instead of being promoted
    because its own bracket happened to be weak there.
    """
    n = len(points)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    k = max(1, int(np.ceil(fraction * n - 1e-9)))
    if context is None or len(context) == 0:
        return pareto_order(points, maximize)[:k]
    allp = np.concatenate([np.asarray(context, dtype=np.float64).reshape(len(context), -1),
                           np.asarray(points, dtype=np.float64).reshape(n, -1)])
    ranks = nondominated_ranks(allp, maximize)
    crowd = np.zeros(len(allp))
    for r in np.unique(ranks):
        idx = np.flatnonzero(ranks == r)
        crowd[idx] = crowding_distance(allp[idx], maximize)
    off = len(allp) - n
    order = sorted(range(n), key=lambda i: (ranks[off + i], -crowd[off + i], i))
    return np.array(order[:k], dtype=np.int64)
