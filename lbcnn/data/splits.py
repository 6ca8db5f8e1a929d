"""Seeded, class-stratified subsets and splits.

Validation is always carved from training data. Groups (GTSRB's 30-frame
tracks) are held out whole, so near-duplicate frames never straddle the
train/validation boundary.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` across classes in proportion to ``counts`` (largest remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    if total > counts.sum():
        raise ConfigError(f"asked for {total:,} samples but only {counts.sum():,} are available")
    share = counts * (total / counts.sum())
    base = np.minimum(np.floor(share).astype(np.int64), counts)
    rest = total - base.sum()
    order = np.argsort(-(share - base), kind="stable")
    for c in order:
        if rest == 0:
            break
        if base[c] < counts[c]:
            base[c] += 1
            rest -= 1
    return base


def stratified_subset(y: np.ndarray, size: int, rng: np.random.Generator,
                      pool: np.ndarray | None = None) -> np.ndarray:
    """``size`` indices from ``pool`` (default: all), class proportions kept."""
    pool = np.arange(len(y)) if pool is None else np.asarray(pool)
    if size <= 0:
        raise ConfigError(f"subset size must be positive, got {size}")
    classes, counts = np.unique(y[pool], return_counts=True)
    take = allocate(counts, size)
    chosen = []
    for c, k in zip(classes, take):
        members = pool[y[pool] == c]
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def grouped_holdout(y: np.ndarray, groups: np.ndarray, size: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Hold out whole groups, per class, until about ``size`` samples are taken."""
    classes, counts = np.unique(y, return_counts=True)
    want = allocate(counts, size)
    chosen = []
    for c, k in zip(classes, want):
        if k == 0:
            continue
        members = np.flatnonzero(y == c)
        gids = np.unique(groups[members])
        rng.shuffle(gids)
        taken = 0
        for g in gids[:-1]:  # always leave one group of the class for training
            if taken >= k:
                break
            idx = members[groups[members] == g]
            chosen.append(idx)
            taken += len(idx)
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def train_val_split(y: np.ndarray, train_size: int | None, val_fraction: float, seed: int,
                    groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) from one labelled pool.

    ``train_size`` is the labelled budget the run may touch (default: all of
    it); ``val_fraction`` of that budget is carved out as validation first
    (whole groups when ``groups`` is given) and the rest is drawn, stratified,
    from the remaining samples.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(y)
    budget = n if train_size is None else int(train_size)
    if budget <= 0:
        raise ConfigError(f"train size must be positive, got {budget}")
    if budget > n:
        raise ConfigError(f"train size {budget:,} exceeds the {n:,} training images available")
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(budget * val_fraction)))
    if groups is not None:
        val = grouped_holdout(y, groups, n_val, rng)
    else:
        val = stratified_subset(y, n_val, rng)
    rest = np.setdiff1d(np.arange(n), val, assume_unique=True)
    n_train = min(budget - len(val), len(rest))
    if n_train <= 0:
        raise ConfigError("nothing left to train on after carving the validation split")
    train = rest if n_train == len(rest) else stratified_subset(y, n_train, rng, pool=rest)
    return train, val


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified (train, test) split for sources that have no test set."""
    rng = np.random.default_rng(seed)
    test = stratified_subset(y, max(1, int(round(len(y) * test_fraction))), rng)
    train = np.setdiff1d(np.arange(len(y)), test, assume_unique=True)
    return train, test


def test_sample(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` indices into a test split, seeded and stratified (every class in proportion,
    not the first ``n``, which a class-sorted split fills with its first classes); all of
    them, in order, when ``n`` covers the split."""
    y = np.asarray(y)
    if n >= len(y):
        return np.arange(len(y))
    return stratified_subset(y, int(n), np.random.default_rng(seed))


def kfold_ids(y: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """A fold id in [0, k) per sample: stratified by class, whole groups kept together.

    Within each class the samples (or groups) are shuffled and dealt round-robin,
    so every fold gets about 1/k of each class.
    """
    y = np.asarray(y)
    k = int(k)
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {k}")
    if k > len(y):
        raise ConfigError(f"{k} folds need at least {k} samples, got {len(y)}")
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), dtype=np.int64)
    offset = 0  # continue the deal across classes so small classes do not all start at fold 0
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        units = np.unique(groups[members]) if groups is not None else members
        units = rng.permutation(units)
        ids = (np.arange(len(units)) + offset) % k
        offset = (offset + len(units)) % k
        if groups is not None:
            for u, f in zip(units, ids):
                fold[members[groups[members] == u]] = f
        else:
            fold[units] = ids
    return fold


def search_indices(ds, model):
    """Training images the source run's search touched (fit + validation), or None."""
    meta = getattr(model, "meta_", {})
    if meta.get("dataset") != ds.name or meta.get("train_size") is None:
        return None
    tr, va = ds.split(int(meta["train_size"]), float(meta.get("val_fraction", 0.1)),
                      int(meta.get("seed", 0)))
    return np.union1d(tr, va)


def finetune_split(ds, model, val_fraction: float, seed: int, log=None):
    """(train, val, disjoint): train is the full training set minus val;
    ``disjoint`` says how val avoids the search's images ("groups", "images", ...).

    When the model came from a search on a subset, its kernels and ELM head
    have seen those images, so validation is carved only from images the
    search never touched (whole GTSRB tracks, so no near-duplicate frames
    leak). Otherwise it is ``ds.split(None, val_fraction, seed)``.
    """
    used = search_indices(ds, model)
    n = len(ds.y_train)
    if used is not None:
        free = np.ones(n, dtype=bool)
        free[used] = False
        n_val = int(round(n * val_fraction))
        levels = [("images", free)]
        if ds.groups_train is not None:
            levels.insert(0, ("groups", free & ~np.isin(ds.groups_train, ds.groups_train[used])))
        for level, mask in levels:
            pool = np.flatnonzero(mask)
            if len(pool) <= 2 * n_val or n_val == 0:
                continue
            if level == "images" and ds.groups_train is not None and log:
                log("the search touched almost every track: validation holds no image the "
                    "search used, but may hold other frames of the same tracks")
            groups = ds.groups_train[pool] if ds.groups_train is not None else None
            _, v = train_val_split(ds.y_train[pool], None, n_val / len(pool), seed, groups)
            va = np.sort(pool[v])
            tr = np.setdiff1d(np.arange(n), va, assume_unique=True)
            return tr, va, level
        if log:
            log("the search used (almost) all training images: validation overlaps them")
    tr, va = ds.split(None, val_fraction, seed)
    return tr, va, "yes (no search subset)" if used is None else "no"
