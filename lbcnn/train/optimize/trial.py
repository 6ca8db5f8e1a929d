"""The trial objective: a pure function of (configuration, kernel seed, data, rung).

No study, no storage, no clock-dependent choices in here, so the same
arguments give the same numbers in-process and on a Ray worker.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from ...data.splits import kfold_ids, stratified_subset
from ...errors import ConfigError
from ...heads.elm import RidgeAccumulator, one_vs_rest_targets, solve_dual
from ...heads.quantize import centred_gram, dequantize, quantize_head, sample_rows
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
        rungs = []
        for i, n in enumerate(sorted(set(int(s) for s in rung_sizes))):
            if n < 1:
                raise ConfigError(f"rung sizes must be positive, got {n}")
            if n < len(tr):
                # a fixed, class-stratified subset per rung: same images for every trial
                rungs.append(stratified_subset(y_fit, n, np.random.default_rng([seed, i])))
        rungs.append(np.arange(len(tr)))
        data = TrialData(ds.x_train[tr], y_fit, ds.x_train[va], ds.y_train[va], ds.n_classes,
                         ds.input_scale, rungs)
    if data.x_fit.shape[-1] == 3 and "y" in colors:
        from ...preprocess import rgb_to_y
        data.luma = {"fit": rgb_to_y(data.x_fit), "val": rgb_to_y(data.x_val)}
    data.flip = bool(flip)
    return data


def _fit_head(body: LBCNNBody, x, y, n_classes: int, C: float, bits: int):
    """Float ELM head, then (bits < 32) the bias-corrected n-bit head with per-class scales
    clipped for the least logit error and GPTQ rounding (``heads.quantize``); returns
    (W, b, solver).
    The dual solve is used whenever samples do not outnumber features."""
    h = body.transform(x)
    t = one_vs_rest_targets(y, n_classes)
    d, n = h.shape[1], h.shape[0]
    if d < n:
        acc = RidgeAccumulator(d, n_classes, C)
        acc.update(h, t)
        w = acc.solve()
        acc.release()
        solver = acc.solver_
    else:
        w, solver = solve_dual(h, t, C)
    b = np.zeros(n_classes, dtype=np.float32)
    if bits != FLOAT_BITS:
        mu = h.mean(0, dtype=np.float64)
        pick = sample_rows(n)  # the rows refit() samples, through training_feature_stats
        meta, arrays = quantize_head(w, b, bits, per_class=True, feature_mean=mu,
                                     feature_sample=(h[pick] - mu).astype(np.float32),
                                     feature_gram=centred_gram(h, mu))
        w, b = dequantize(meta, arrays)
    return w, b, solver


def _correct(body: LBCNNBody, w, b, x, y) -> int:
    if len(y) == 0:
        return 0
    return int(((body.transform(x) @ w + b).argmax(1) == y).sum())


# BLAS threads inside a trial. OpenBLAS sums in a different order with another thread
# count, and GPTQ rounding carries such last-bit differences into other integers, so a
# trial pins its count: then it gives the same numbers in this process, on a Ray
# worker (which Ray starts with one thread per CPU it asked for) and on any machine.
# Both cores are used by running two trials at once (--workers 2), not two threads.
TRIAL_BLAS_THREADS = 1


def evaluate(config: Config, seed: int, data: TrialData, rung: int) -> dict:
    """Validation accuracy of ``config``'s quantized head fitted on rung ``rung``'s images."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=TRIAL_BLAS_THREADS, user_api="blas"):
        return _evaluate(config, seed, data, rung)


def _evaluate(config: Config, seed: int, data: TrialData, rung: int) -> dict:
    t0 = time.perf_counter()
    x_fit, x_val = data.images(config.color)
    body = LBCNNBody.random(data.input_shape(config.color), config.filters, config.nl, seed,
                            data.input_scale)
    extra = {}
    if data.folds is not None:
        correct, solver, margins = 0, "", []
        for f in range(int(data.folds.max()) + 1):
            fit, held = data.folds != f, data.folds == f
            w, b, solver = _fit_head(body, *with_mirrors(x_fit[fit], data.y_fit[fit], data.flip),
                                     data.n_classes, config.C, config.bits)
            logits = body.transform(x_fit[held]) @ w + b
            correct += int((logits.argmax(1) == data.y_fit[held]).sum())
            margins.append(normalized_margins(logits, data.y_fit[held]))
        acc, n_train, n_val = correct / len(data.y_fit), len(data.y_fit), len(data.y_fit)
        extra["val_margin"] = float(np.concatenate(margins).mean())
    else:
        idx = data.rungs[rung]
        w, b, solver = _fit_head(body, *with_mirrors(x_fit[idx], data.y_fit[idx], data.flip),
                                 data.n_classes, config.C, config.bits)
        acc, n_train, n_val = _correct(body, w, b, x_val, data.y_val) / len(data.y_val), len(idx), \
            len(data.y_val)
    return {"rung": int(rung), "n_train": int(n_train), "n_val": int(n_val),
            "val_accuracy": float(acc), "solver": solver, **extra,
            "seconds": round(time.perf_counter() - t0, 4)}


def normalized_margins(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, the true class's lead over the best other class, in units of that row's
    logit spread (standard deviation over classes), so C's shrinkage of every logit
    does not change it."""
    z = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(z))
    true = z[rows, y]
    other = z.copy()
    other[rows, y] = -np.inf
    return (true - other.max(1)) / (z.std(1) + 1e-12)


def rank_accuracy(result: dict) -> float:
    """The accuracy objective a trial is ranked by: validation accuracy, and with
    cross-validation ties broken by the mean held-out normalized margin. A few hundred
    images make ties common (Olivetti with --flip: many configurations at 250/250);
    the margin term stays below half of one image's 1/n, so it only orders equals."""
    acc = float(result["val_accuracy"])
    if "val_margin" not in result:
        return acc
    return acc + (np.tanh(result["val_margin"]) + 1) / 2 * 0.999 / (2 * int(result["n_val"]))


def memory_need(n_features: int, n_train: int) -> int:
    """Peak bytes of one trial: the feature matrix plus the Gram (primal) or kernel (dual),
    plus GPTQ rounding's centred Gram and factors (``heads.quantize.gptq_bytes``)."""
    from ...heads.quantize import gptq_bytes

    feats = 4 * n_features * n_train
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
    would build it."""
    from ...heads.quantize import apply_quantization, training_feature_stats

    t0 = time.perf_counter()
    x, y = with_mirrors(*data.budget(config.color), data.flip)
    model = LBCNN(filters=config.filters, nl=config.nl, C=config.C, random_state=seed,
                  input_scale=data.input_scale, device="cpu")
    d = features(x.shape[1:], config.filters)
    require(memory_need(d, len(x)) // 2, f"refitting {config.label()}", "narrow the search space")
    model.fit(x, np.asarray(y))
    if config.bits != FLOAT_BITS:
        mu, sample, gram = training_feature_stats(model, x, gram=True)
        apply_quantization(model, config.bits, per_class=True, feature_mean=mu,
                           feature_sample=sample, feature_gram=gram)
    return model, time.perf_counter() - t0
