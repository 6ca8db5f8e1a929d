"""The trial objective: a pure function of (configuration, kernel seed, data, rung,
and the C a lower rung chose).

No study, no storage, no clock-dependent choices in here, so the same
arguments give the same numbers in-process and on a Ray worker.

C is not sampled: each body solves it (``heads.ridge_path``): the ridge system
is formed once per rung, every C of the space's grid (rung 0, or no start) or a
walk from the C the rung below chose is solved from it, the float head with the
best validation accuracy wins, and only that head is quantized.

Bodies stay resident between rungs: ``FEATURES`` keeps, per body, the features
of the validation images and of the fit images seen so far (the rungs are nested
prefixes of one class-stratified order, so a higher rung only adds rows). Features
are exact, so a cached row equals a recomputed one bit for bit, and the cache can
only change speed.
"""
from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ...data.splits import kfold_ids, stratified_subset
from ...errors import ConfigError
from ...heads.elm import DualSystem, RidgeAccumulator, one_vs_rest_targets
from ...heads.quantize import centred_gram, dequantize, quantize_head, sample_rows
from ...heads.ridge_path import (RidgePath, c_grid, normalized_margins, sweep,  # noqa: F401
                                 validation_score)
from ...memory import require
from ...models.lbcnn import LBCNN, LBCNNBody
from .space import FLOAT_BITS, Config, features


def kernel_seed(run_seed: int, number: int) -> int:
    """Trial ``number``'s kernel seed: ``search.trial_seeds(run_seed, n)[number]``
    for any n > number, without spawning n children."""
    ss = np.random.SeedSequence(run_seed, spawn_key=(int(number),))
    return int(ss.generate_state(1, dtype=np.uint32)[0])


@dataclass
class TrialData:
    """What trials may read: the fit and validation images (never the test set).

    ``rungs[r]`` indexes the fit images of rung ``r`` (the last rung is all of
    them). With ``folds`` set, ``x_fit`` is the whole budget and the score is
    cross-validated (one rung).
    """

    x_fit: np.ndarray
    y_fit: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    n_classes: int
    input_scale: float
    rungs: list[np.ndarray]
    folds: np.ndarray | None = None
    luma: dict = field(default_factory=dict)  # "fit"/"val" -> Y-channel copies for colour data
    flip: bool = False  # every fit also sees its images mirrored left-right; never validation
    c_grid: np.ndarray = field(default_factory=c_grid)  # the C a body chooses from
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # names it in FEATURES
    device: str = "cpu"  # "cuda": features, ridge systems and sweeps on the GPU

    @property
    def on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    @property
    def rung_sizes(self) -> list[int]:
        return [len(r) for r in self.rungs]

    def images(self, color: str):
        if color == "y":
            return self.luma["fit"], self.luma["val"]
        return self.x_fit, self.x_val

    def input_shape(self, color: str = "gray") -> tuple[int, int, int]:
        h, w, c = self.x_fit.shape[1:]
        return (int(h), int(w), 1 if color == "y" else int(c))

    def budget(self, color: str = "gray"):
        """All training images of the budget (fit + validation), for the final refit."""
        xf, xv = self.images(color)
        if self.folds is not None:
            return xf, self.y_fit
        return np.concatenate([xf, xv]), np.concatenate([self.y_fit, self.y_val])


def nested_order(y: np.ndarray, sizes, seed: int) -> np.ndarray:
    """An order of the fit images whose first ``sizes[r]`` are a class-stratified subset,
    each containing the one before: rung r's images are a stratified draw from those
    no lower rung took, then the rest in their order."""
    taken = np.zeros(0, dtype=np.int64)
    for i, n in enumerate(sizes):
        rest = np.setdiff1d(np.arange(len(y)), taken)
        more = stratified_subset(y, n - len(taken), np.random.default_rng([seed, i]), pool=rest)
        taken = np.concatenate([taken, more])
    return np.concatenate([taken, np.setdiff1d(np.arange(len(y)), taken)])


def with_mirrors(x: np.ndarray, y: np.ndarray, flip: bool):
    """(x, y) plus, when ``flip``, every image mirrored left-right with its label."""
    if not flip:
        return x, y
    return np.concatenate([x, x[:, :, ::-1]]), np.concatenate([y, y])


def prepare(ds, train_size, val_fraction: float, seed: int, rung_sizes=(1000, 3000),
            cv: int = 0, colors=("rgb",), flip: bool = False) -> TrialData:
    if flip:
        from ...data.augment import check_flip_allowed
        check_flip_allowed(ds.name)
    tr, va = ds.split(train_size, val_fraction, seed)
    if cv:
        pool = np.concatenate([tr, va])
        groups = ds.groups_train[pool] if ds.groups_train is not None else None
        folds = kfold_ids(ds.y_train[pool], cv, seed, groups)
        data = TrialData(ds.x_train[pool], ds.y_train[pool], ds.x_train[:0], ds.y_train[:0],
                         ds.n_classes, ds.input_scale, [np.arange(len(pool))], folds)
    else:
        y_fit = ds.y_train[tr]
        sizes = sorted(set(int(s) for s in rung_sizes))
        if any(n < 1 for n in sizes):
            raise ConfigError(f"rung sizes must be positive, got {min(sizes)}")
        sizes = [n for n in sizes if n < len(tr)]
        order = nested_order(y_fit, sizes, seed)
        tr = tr[order]
        # every rung is a prefix of one class-stratified order: the same images for
        # every trial, and a higher rung adds rows to the one below
        rungs = [np.arange(n) for n in sizes] + [np.arange(len(tr))]
        data = TrialData(ds.x_train[tr], ds.y_train[tr], ds.x_train[va], ds.y_train[va],
                         ds.n_classes, ds.input_scale, rungs)
    if data.x_fit.shape[-1] == 3 and "y" in colors:
        from ...preprocess import rgb_to_y
        data.luma = {"fit": rgb_to_y(data.x_fit), "val": rgb_to_y(data.x_val)}
    data.flip = bool(flip)
    return data


def _system(h, t):
    """The ridge system of features ``h`` (an array, or a CUDA tensor) and targets ``t``:
    primal when samples outnumber features, else dual."""
    n, d = h.shape
    if d < n:
        acc = RidgeAccumulator(d, t.shape[1], device=getattr(h, "device", None))
        acc.update(h, t)
        return acc
    return DualSystem(h, t)


def _release(system) -> None:
    if isinstance(system, RidgeAccumulator):
        system.release()


def _quantized(h, w, n_classes: int, bits: int):
    """(W, b): the float head, or (bits < 32) the bias-corrected n-bit head with per-class
    scales clipped for the least logit error and GPTQ rounding (``heads.quantize``)
    against the features ``h`` it was fitted on."""
    b = np.zeros(n_classes, dtype=np.float32)
    if bits == FLOAT_BITS:
        return w, b
    pick = sample_rows(len(h))  # the rows refit() samples, through training_feature_stats
    if isinstance(h, np.ndarray):
        mu = h.mean(0, dtype=np.float64)
        sample, gram = (h[pick] - mu).astype(np.float32), centred_gram(h, mu)
    else:  # CUDA: the centred Gram on the device; GPTQ rounding on the CPU
        import torch
        mu_t = h.double().mean(0)
        hc = (h - mu_t.float())
        gram = _host(hc.T @ hc)
        sample, mu = _host(hc[torch.as_tensor(pick, device=h.device)]), _host(mu_t)
        del hc
    meta, arrays = quantize_head(_host(w), b, bits, per_class=True, feature_mean=mu,
                                 feature_sample=sample, feature_gram=gram)
    return dequantize(meta, arrays)


def _fit_head(body: LBCNNBody, x, y, n_classes: int, C: float, bits: int):
    """(W, b, solver) of ``bits``' head at a fixed C on images ``x``: the ELM head (dual
    when samples do not outnumber features), then ``_quantized``."""
    h = body.transform(x)
    system = _system(h, one_vs_rest_targets(y, n_classes))
    w, solver = RidgePath(system, "cholesky").weights(C)
    _release(system)
    w, b = _quantized(h, w, n_classes, bits)
    return w, b, solver


def _correct(body: LBCNNBody, w, b, x, y) -> int:
    if len(y) == 0:
        return 0
    return int(((body.transform(x) @ w + b).argmax(1) == y).sum())


class FeatureCache:
    """Per body, the features of the validation images and of a prefix of the fit
    images (and of their mirrors with ``--flip``), kept between rungs and dropped
    when the trial ends or, least recently used first, when ``max_bytes`` is reached."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = max_bytes
        self._store: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.hits = self.misses = 0

    def _limit(self) -> int:
        if self.max_bytes is None:
            from ...settings import memory_budget_bytes
            self.max_bytes = max(256 << 20, min(2 << 30, memory_budget_bytes() // 8))
            import torch
            if torch.cuda.is_available():  # device tensors count against the GPU's memory
                self.max_bytes = min(self.max_bytes, torch.cuda.mem_get_info()[0] // 4)
        return self.max_bytes

    @staticmethod
    def key(config: Config, seed: int, data: TrialData) -> tuple:
        return (data.token, config.color, tuple(config.filters), int(config.nl), int(seed))

    def features(self, key, body: LBCNNBody, x, rows: int, part: str, device: str = "cpu"):
        """Features of ``x[:rows]`` (``part`` names the image set: "val", "fit", "fit-mirror"):
        a NumPy array, or a tensor on ``device`` when that is CUDA. The seconds spent
        computing are counted for the calling thread (``take_seconds``)."""
        t0 = time.perf_counter()
        try:
            return self._features(key, body, x, rows, part, str(device))
        finally:
            self._local.seconds = getattr(self._local, "seconds", 0.0) + time.perf_counter() - t0

    def take_seconds(self) -> float:
        """Feature seconds this thread spent since the last call."""
        out = getattr(self._local, "seconds", 0.0)
        self._local.seconds = 0.0
        return out

    def _features(self, key, body, x, rows: int, part: str, device: str):
        key = (*key, device)
        with self._lock:
            entry = self._store.get(key)
            have = entry.get(part) if entry else None
            if entry is not None:
                self._store.move_to_end(key)
        if have is not None and len(have) >= rows:
            self.hits += 1
            return have[:rows]
        self.misses += 1
        start = 0 if have is None else len(have)
        if device.startswith("cuda"):
            import torch
            more = body.features_device(x[start:rows], device)
            h = more if have is None else torch.cat([have, more])
        else:
            more = body.transform(x[start:rows])
            h = more if have is None else np.concatenate([have, more])
        with self._lock:
            entry = self._store.setdefault(key, {})
            entry[part] = h
            self._store.move_to_end(key)
            self._evict(keep=key)
        return h

    def _evict(self, keep) -> None:
        total = sum(_nbytes(a) for e in self._store.values() for a in e.values())
        for k in list(self._store):
            if total <= self._limit():
                break
            if k == keep:
                continue
            total -= sum(_nbytes(a) for a in self._store.pop(k).values())

    def discard(self, key) -> None:
        with self._lock:
            for k in [k for k in self._store if k[:len(key)] == key]:
                del self._store[k]

    def clear(self) -> None:
        with self._lock:
            self._store.clear()

    def nbytes(self) -> int:
        with self._lock:
            return sum(_nbytes(a) for e in self._store.values() for a in e.values())


def _nbytes(a) -> int:
    return a.nbytes if isinstance(a, np.ndarray) else a.element_size() * a.nelement()


FEATURES = FeatureCache()


def _is_prefix(idx: np.ndarray) -> bool:
    return len(idx) == 0 or (int(idx[0]) == 0 and int(idx[-1]) == len(idx) - 1 and
                             len(idx) == len(np.unique(idx)))


def _fit_features(body, key, data: TrialData, x_fit, idx):
    """Features and labels of the rows ``idx`` of the fit set, mirrors appended with flip."""
    dev = data.device
    if _is_prefix(idx):
        h = FEATURES.features(key, body, x_fit, len(idx), "fit", dev)
        if data.flip:
            hm = FEATURES.features(key, body, x_fit[:, :, ::-1], len(idx), "fit-mirror", dev)
            h = _cat([h, hm])
    else:
        t0 = time.perf_counter()
        x = with_mirrors(x_fit[idx], data.y_fit[idx], data.flip)[0]
        h = body.features_device(x, dev) if data.on_gpu else body.transform(x)
        FEATURES._local.seconds = getattr(FEATURES._local, "seconds", 0.0) + \
            time.perf_counter() - t0
    return h, with_mirrors(x_fit[:0], data.y_fit[idx], data.flip)[1]


def _cat(parts):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch
    return torch.cat(parts)


def _host(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else a.detach().cpu().numpy()


def _correct_of(logits, y) -> int:
    if len(y) == 0:
        return 0
    if isinstance(logits, np.ndarray):
        return int((logits.argmax(1) == y).sum())
    import torch
    return int((logits.argmax(1) == torch.as_tensor(y, device=logits.device)).sum().item())


# BLAS threads inside a trial. OpenBLAS sums in a different order with another thread
# count, and GPTQ rounding carries such last-bit differences into other integers, so a
# trial pins its count: then it gives the same numbers in this process, on a Ray
# worker (which Ray starts with one thread per CPU it asked for) and on any machine.
# Both cores are used by running two trials at once (--workers 2), not two threads.
TRIAL_BLAS_THREADS = 1


def evaluate(config: Config, seed: int, data: TrialData, rung: int,
             C_start: float | None = None) -> dict:
    """Validation accuracy of ``config``'s quantized head fitted on rung ``rung``'s images,
    with C chosen on validation from ``data.c_grid`` (all of it, or a walk from
    ``C_start``, the C the rung below chose), unless ``config.C`` fixes it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=TRIAL_BLAS_THREADS, user_api="blas"):
        return _evaluate(config, seed, data, rung, C_start)


def _evaluate(config: Config, seed: int, data: TrialData, rung: int, C_start=None) -> dict:
    t0 = time.perf_counter()
    FEATURES.take_seconds()
    x_fit, x_val = data.images(config.color)
    body = LBCNNBody.random(data.input_shape(config.color), config.filters, config.nl, seed,
                            data.input_scale)
    key = FEATURES.key(config, seed, data)
    grid = np.array([float(config.C)]) if config.C is not None else np.asarray(data.c_grid)
    if data.folds is not None:
        out = _evaluate_cv(config, body, key, data, x_fit, grid)
    else:
        idx = data.rungs[rung]
        h, y = _fit_features(body, key, data, x_fit, idx)
        h_val = FEATURES.features(key, body, x_val, len(x_val), "val", data.device)
        system = _system(h, one_vs_rest_targets(y, data.n_classes))
        start = None if C_start is None or len(grid) == 1 else float(C_start)
        path = RidgePath(system, "auto", len(grid) if start is None else 3)
        res = sweep(path, grid, lambda w: validation_score(h_val @ w, data.y_val), start=start,
                    host=not data.on_gpu)
        _release(system)
        w, b = _quantized(h, res.weights, data.n_classes, config.bits)
        if data.on_gpu:
            import torch
            w, b = torch.as_tensor(_host(w), device=h_val.device), torch.as_tensor(b, device=h_val.device)
        correct = _correct_of(h_val @ w + b, data.y_val)
        out = {"n_train": int(len(idx)), "n_val": int(len(data.y_val)),
               "val_accuracy": correct / max(len(data.y_val), 1), "solver": res.solver,
               "C": res.C, "float_val_accuracy": res.accuracy}
        if len(grid) > 1:
            out["C_sweep"] = res.record()
    return {"rung": int(rung), **out, "seconds": round(time.perf_counter() - t0, 4),
            "seconds_features": round(FEATURES.take_seconds(), 4)}


def _evaluate_cv(config, body, key, data, x_fit, grid) -> dict:
    """K-fold cross-validation: every fold's system solves every C of the grid, the C with
    the most held-out images right (then the largest mean margin) wins, and each fold's
    head at that C is quantized and scored on its held-out fold."""
    n = len(data.y_fit)
    h_all = FEATURES.features(key, body, x_fit, n, "fit")
    h_mir = FEATURES.features(key, body, x_fit[:, :, ::-1], n, "fit-mirror") if data.flip else None
    n_folds = int(data.folds.max()) + 1
    correct, margins, paths = np.zeros(len(grid)), np.zeros(len(grid)), []
    for f in range(n_folds):
        fit, held = data.folds != f, data.folds == f
        hf = h_all[fit] if h_mir is None else np.concatenate([h_all[fit], h_mir[fit]])
        yf = with_mirrors(x_fit[:0], data.y_fit[fit], data.flip)[1]
        path = RidgePath(_system(hf, one_vs_rest_targets(yf, data.n_classes)), "auto", len(grid))
        for i, c in enumerate(grid):
            w, solver = path.weights(float(c))
            logits = h_all[held] @ w
            correct[i] += int((logits.argmax(1) == data.y_fit[held]).sum())
            margins[i] += float(normalized_margins(logits, data.y_fit[held]).sum())
        paths.append((path, hf, solver))
    best = max(range(len(grid)), key=lambda i: (correct[i], margins[i], -i))
    C = float(grid[best])
    if config.bits == FLOAT_BITS:
        right, margin = int(correct[best]), margins[best] / n
    else:
        right, parts = 0, []
        for f, (path, hf, _) in enumerate(paths):
            held = data.folds == f
            w, b = _quantized(hf, path.weights(C)[0], data.n_classes, config.bits)
            logits = h_all[held] @ w + b
            right += int((logits.argmax(1) == data.y_fit[held]).sum())
            parts.append(normalized_margins(logits, data.y_fit[held]))
        margin = float(np.concatenate(parts).mean())
    for path, _, _ in paths:
        _release(path.system)
    out = {"n_train": n, "n_val": n, "val_accuracy": right / n, "solver": paths[-1][2],
           "C": C, "float_val_accuracy": float(correct[best] / n), "val_margin": float(margin)}
    if len(grid) > 1:
        out["C_sweep"] = [{"C": float(c), "val_accuracy": float(correct[i] / n)}
                          for i, c in enumerate(grid)]
    return out


def rank_accuracy(result: dict) -> float:
    """The accuracy objective a trial is ranked by: validation accuracy, and with
    cross-validation ties broken by the mean held-out normalized margin. A few hundred
    images make ties common (Olivetti with --flip: many configurations at 250/250);
    the margin term stays below half of one image's 1/n, so it only orders equals."""
    acc = float(result["val_accuracy"])
    if "val_margin" not in result:
        return acc
    return acc + (np.tanh(result["val_margin"]) + 1) / 2 * 0.999 / (2 * int(result["n_val"]))


def memory_need(n_features: int, n_train: int, n_val: int = 0) -> int:
    """Peak bytes of one trial: the fit and validation feature matrices plus the Gram
    (primal) or kernel (dual), plus GPTQ rounding's centred Gram and factors
    (``heads.quantize.gptq_bytes``)."""
    from ...heads.quantize import gptq_bytes

    feats = 4 * n_features * (n_train + n_val)
    rounding = 4 * n_features ** 2 + gptq_bytes(n_features)
    if n_features < n_train:
        return feats + 2 * 4 * n_features ** 2 + rounding
    return feats + 2 * 8 * n_train ** 2 + rounding


@functools.lru_cache(maxsize=4096)
def _account(filters, nl, bits, input_shape, n_classes) -> dict:
    from ...deploy.accounting import account

    model = LBCNN(filters=filters, nl=nl)
    model.body_ = LBCNNBody.random(input_shape, filters, nl, 0)
    d = model.body_.n_features
    model.coef_ = np.zeros((d, n_classes), dtype=np.float32)
    model.intercept_ = np.zeros(n_classes, dtype=np.float32)
    model.classes_ = np.arange(n_classes)
    if bits != FLOAT_BITS:
        # the same meta apply_quantization writes, so the count is the saved model's
        meta, _ = quantize_head(np.zeros((1, n_classes), np.float32),
                                np.zeros(n_classes, np.float32), bits, per_class=True,
                                feature_mean=np.zeros(1), feature_sample=np.zeros((1, 1)))
        model.head_meta_ = meta
    info = account(model, sizes=False)
    params = sum(r["weights"] for r in info["layers"] if r["layer"] != "head scales")
    return {"kbits": float(info["total_kbits"]), "macs": int(info["macs"]),
            "params": int(params), "features": int(d)}


def cost(config: Config, input_shape, n_classes: int) -> dict:
    """kbits (as ``lbcnn info`` prints for the saved model), MACs, parameters, features."""
    shape = tuple(int(s) for s in input_shape)
    if config.color == "y":
        shape = (shape[0], shape[1], 1)
    return dict(_account(tuple(config.filters), int(config.nl), int(config.bits), shape,
                         int(n_classes)))


def refit(config: Config, seed: int, data: TrialData):
    """The front member's final model: ELM head on the whole training budget, then the
    bias-corrected, GPTQ-rounded n-bit head, exactly as ``lbcnn quantize --per-class``
    would build it. BLAS runs with the trials' thread count: the same integers on any
    machine, and the time the run's predictions (learned on trials) expect."""
    from threadpoolctl import threadpool_limits

    from ...heads.quantize import apply_quantization, training_feature_stats

    t0 = time.perf_counter()
    x, y = with_mirrors(*data.budget(config.color), data.flip)
    model = LBCNN(filters=config.filters, nl=config.nl, C=config.C, random_state=seed,
                  input_scale=data.input_scale, device=data.device if data.on_gpu else "cpu")
    d = features(x.shape[1:], config.filters)
    require(memory_need(d, len(x)) // 2, f"refitting {config.label()}", "narrow the search space")
    with threadpool_limits(limits=TRIAL_BLAS_THREADS, user_api="blas"):
        model.fit(x, np.asarray(y))
        if config.bits != FLOAT_BITS:
            mu, sample, gram = training_feature_stats(model, x, gram=True)
            apply_quantization(model, config.bits, per_class=True, feature_mean=mu,
                               feature_sample=sample, feature_gram=gram)
    return model, time.perf_counter() - t0
