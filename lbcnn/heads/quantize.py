"""Signed n-bit fixed-point output layer.

Weights and bias become integers ``q`` in ``[-(2^(n-1)-1), 2^(n-1)-1]`` with
``value = q * scale`` (symmetric, no zero point). Each scale is taken from the
tensor it quantizes (the paper's code took it from the wrong tensor):

- weights: one scale for the whole (d, k) matrix (``per_tensor``) or one per
  output class (``per_class``, i.e. per column);
- bias: its own per-tensor scale, from the bias itself, with at least 8 bits
  (``bias_bits``): k biases cost nothing next to d*k weights, and a 3-bit
  bias would undo what bias correction moved into it.

``pow2=True`` rounds every scale up to a power of two, so hardware rescales
with a shift.

Clipping: the weight scale is not taken from the largest weight but searched on
a grid of clipping levels, 10 % to 100 % of the largest (64 levels, geometric;
100 % is always a candidate, so the criterion is never worse than absmax's).
A ridge head's weights are heavy-tailed: with absmax, a few large weights set
the step and most weights round to 0 or ±1 at 3–4 bits.

- ``clip="output"`` (the default when a sample of centred training features
  ``F`` is given): the level minimizing the logit error ``||F (W - Q(W))||²``
  (per class with per-class scales). What matters is the error each feature's
  spread turns into, not the weights' own error: on GTSRB (Y, 10 filters,
  43 classes) a 6-bit head scored 82.8 % validation with one absmax scale,
  79.0 % with one weight-MSE-clipped scale and 86.0 % with per-class
  output-clipped scales (float 86.6 %).
- ``clip="mse"`` (the default without a feature sample): the level minimizing
  the weights' squared rounding error.
- ``clip="absmax"``: the largest weight, the rule before clipping existed.

Bias correction (Nagel et al., 2019, "data-free quantization"): LB-CNN features
are max-pooled sums, large and all positive, so the weights' rounding errors
``e`` add up over every feature in the same direction: the logit error is
``h . e``. Given the training features' mean ``mu``, the expected part
``mu . e`` is moved into the bias before the bias is quantized, leaving only
``(h - mu) . e``. On Olivetti 5,4 (100 kernel sets, paper split) this cut the
8-bit head's changed test predictions from 36 to 9 of 15,000.

Rounding: given the Gram of the centred training features, ``rounding="gptq"``
replaces round-to-nearest with GPTQ (Frantar et al., 2023; Hassibi & Stork's
optimal brain surgeon, one input feature at a time): after each feature's row of
weights is rounded, its logit error is pushed onto the features not yet rounded,
through the inverse Gram. Features are correlated (overlapping 3x3 windows,
neighbouring pooled cells), so most of a row's rounding error can be cancelled
by its neighbours. The scales stay those clipping chose. On GTSRB (Y, 30
filters, 7,680 features, 43 classes, C=0.01) a 4-bit head scored 88.19 %
validation with nearest rounding and 91.47 % with GPTQ (float 91.86 %), a 3-bit
head 77.34 % and 90.45 % (benchmarks/head_rounding.py).

Only the integers and scales are stored in the model file (2..7-bit weights
bit-packed, n bits each: ``lbcnn.io.native``); the dequantized float head is what
``predict`` uses. A 2-bit head is ternary (-1, 0, +1), stored in 2 bits a weight.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError

SCALE_MODES = ("per_tensor", "per_class")
CLIP_MODES = ("output", "mse", "absmax")
ROUNDING_MODES = ("gptq", "nearest")
GPTQ_DAMP = 0.01  # of the Gram's mean diagonal: keeps the inverse finite for dead or
#                   collinear features (rank-deficient Grams when images < features)
_GPTQ_BLOCK = 128  # rows updated together before the rest of the matrix sees the errors
FEATURE_SAMPLE = 512  # training feature rows the output criterion weighs errors by
_CLIP_LEVELS = np.geomspace(0.1, 1.0, 64)  # 10 % .. 100 % of the largest weight, 3.7 % apart


def int_dtype(bits: int):
    return np.int8 if bits <= 8 else np.int16


def check_bits(bits: int) -> int:
    bits = int(bits)
    if not 2 <= bits <= 16:
        raise ConfigError(f"bits must be between 2 and 16, got {bits}")
    return bits


def _scale(absmax: np.ndarray, qmax: int, pow2: bool) -> np.ndarray:
    absmax = np.asarray(absmax, dtype=np.float64)
    s = np.where(absmax > 0, absmax / qmax, 1.0)
    if pow2:
        s = 2.0 ** np.ceil(np.log2(s))
    return s.astype(np.float32)


def _clip_scale(x: np.ndarray, absmax: np.ndarray, qmax: int, axis, pow2: bool,
                feature_sample: np.ndarray | None = None) -> np.ndarray:
    """The grid scale with the least squared error: of the weights, or (given a centred
    feature sample) of the logits; per column for ``axis=0``."""
    best_err, best = None, None
    for level in _CLIP_LEVELS:
        s = _scale(absmax * level, qmax, pow2)
        e = x - np.clip(np.rint(x / s), -qmax, qmax) * s
        if feature_sample is not None:
            e = feature_sample @ e
        err = (e.astype(np.float64) ** 2).sum(axis=axis)
        if best is None:
            best_err, best = err, s
        else:
            better = err < best_err
            best_err, best = np.where(better, err, best_err), np.where(better, s, best)
    return np.asarray(best, dtype=np.float32)


def quantize_tensor(x: np.ndarray, bits: int, axis=None, pow2: bool = False, clip: str = "absmax",
                    feature_sample: np.ndarray | None = None):
    """(q, scale): ``axis=None`` per tensor, ``axis=0`` one scale per column;
    ``clip`` "absmax", "mse" or "output" (needs ``feature_sample``, (n, rows of x));
    see the module docstring."""
    bits = check_bits(bits)
    if clip not in CLIP_MODES:
        raise ConfigError(f"clip must be one of {', '.join(CLIP_MODES)}, got {clip!r}")
    qmax = 2 ** (bits - 1) - 1
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError("cannot quantize a head with NaN or infinite weights")
    if clip == "output":
        if feature_sample is None:
            raise ConfigError("clip='output' needs a sample of training features")
        feature_sample = np.asarray(feature_sample, dtype=np.float32)
        if feature_sample.ndim != 2 or feature_sample.shape[1] != x.shape[0] or \
                not np.isfinite(feature_sample).all():
            raise DataError(f"feature sample must be finite (n, {x.shape[0]}), got "
                            f"{feature_sample.shape}")
    absmax = np.abs(x).max(axis=axis) if x.size else np.float32(0)
    if clip in ("mse", "output") and x.size:
        scale = _clip_scale(x, absmax, qmax, axis, pow2,
                            feature_sample if clip == "output" else None)
    else:
        scale = _scale(absmax, qmax, pow2)
    q = np.clip(np.rint(x / scale), -qmax, qmax).astype(int_dtype(bits))
    return q, scale


def gptq_bytes(d: int) -> int:
    """Peak memory of ``gptq_round`` on ``d`` features: the permuted Gram, factorized in
    place, in float32, plus a float64 block of it (a small extra)."""
    return 2 * int(d) * int(d) * 4 + 2 * _GPTQ_BLOCK * int(d) * 8


def gptq_round(w: np.ndarray, scale: np.ndarray, qmax: int, gram: np.ndarray,
               damp: float = GPTQ_DAMP, block: int = _GPTQ_BLOCK,
               dtype=np.float32, native_loop: bool = True) -> np.ndarray:
    """Integers ``q`` (same shape as ``w`` (d, k)) with ``q * scale`` close to ``w`` in
    logit error ``(W - Q)^T gram (W - Q)``; ``scale`` is a scalar or one per column.

    GPTQ, features in order of falling Gram diagonal (the largest errors are rounded
    first, while most features remain to absorb them), computed in its nearest-plane
    form (Babai's algorithm, which GPTQ equals): with the damped Gram ``H = R Rᵀ``, R
    upper triangular, feature j is rounded at ``w_j + (1/R_jj) Σ_{l<j} R_lj e_l``,
    ``e_l = w_l - q_l s`` the errors already made, which is the value the remaining
    features' optimal compensation gives it. One Cholesky factorization, no inverse
    (the inverse-Gram form needs a triangular inverse too, as much work again). See
    ``gptq_round_reference`` for the textbook form this equals. The factorization runs
    in ``dtype`` (float32: 5x faster than float64 at 8,000 features on 2 cores; the
    damping keeps it well conditioned); the rounding in float64, block by block, the
    in-block loop in C when the kernel builds (``binary.native.load_gptq``;
    ``native_loop=False`` runs the same loop in NumPy, with the same integers)."""
    from scipy.linalg import lapack

    w = np.asarray(w, dtype=np.float64)
    d = w.shape[0]
    gram = np.asarray(gram)
    if gram.shape != (d, d) or not np.isfinite(gram).all():
        raise DataError(f"GPTQ needs a finite ({d}, {d}) feature Gram, got shape {gram.shape}")
    potrf = lapack.spotrf if np.dtype(dtype) == np.float32 else lapack.dpotrf
    s = np.asarray(scale, dtype=np.float64)
    diag = np.diag(gram).astype(np.float64)
    order = np.argsort(-diag, kind="stable")
    # H = R R^T with R upper: the lower Cholesky factor of the reversed matrix, reversed;
    # Fortran order spares LAPACK a copy
    rev = order[::-1]
    h = np.asfortranarray(gram[np.ix_(rev, rev)], dtype=dtype)
    h[np.diag_indices(d)] += damp * max(float(diag.mean()), 1e-12)
    m, info = potrf(h, lower=1, overwrite_a=1)
    del h
    if info != 0:
        raise DataError("GPTQ: the damped feature Gram is not positive definite")
    r = m[::-1, ::-1]  # upper triangular view
    if not np.all(np.diag(r) > 0):
        raise DataError("GPTQ: the feature Gram's Cholesky factor is singular")
    w_ord = w[order]
    k = w_ord.shape[1]
    q = np.empty_like(w_ord)
    err = np.empty_like(w_ord)
    acc = np.zeros_like(w_ord)  # Σ_{l<j} R_lj e_l from the blocks already rounded
    s_cols = np.ascontiguousarray(np.broadcast_to(s, (k,)), dtype=np.float64)
    from ..binary import native
    lib = native.load_gptq() if native_loop else None
    for a in range(0, d, block):
        b = min(a + block, d)
        rb = np.ascontiguousarray(np.triu(r[a:b, a:b]), dtype=np.float64)
        if lib is not None:  # the loop below in C, GIL released (same arithmetic, same order)
            wb, ab = np.ascontiguousarray(w_ord[a:b]), np.ascontiguousarray(acc[a:b])
            qb, eb = np.empty_like(wb), np.empty_like(wb)
            lib.gptq_block(wb, ab, rb, s_cols, float(qmax), b - a, k, qb, eb)
            q[a:b], err[a:b] = qb, eb
        else:
            ab = acc[a:b]
            for i in range(b - a):
                v = w_ord[a + i] + ab[i] / rb[i, i]
                q[a + i] = np.clip(np.rint(v / s), -qmax, qmax)
                err[a + i] = w_ord[a + i] - q[a + i] * s
                ab[i + 1:] += np.outer(rb[i, i + 1:], err[a + i])
        acc[b:] += r[a:b, b:].T.astype(np.float64) @ err[a:b]
    out = np.empty_like(q)
    out[order] = q
    return out


def gptq_round_reference(w, scale, qmax, gram, damp: float = GPTQ_DAMP) -> np.ndarray:
    """Optimal-brain-surgeon rounding in its plain form (the oracle ``gptq_round`` is
    tested against): round one feature, move its error onto the rest with the
    inverse Gram's column, then remove that feature from the inverse."""
    w = np.array(w, dtype=np.float64)
    h = np.array(gram, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    d = len(w)
    h[np.diag_indices(d)] += damp * max(float(np.diag(gram).mean()), 1e-12)
    hinv = np.linalg.inv(h)
    q = np.zeros_like(w)
    for i in np.argsort(-np.diag(np.asarray(gram, np.float64)), kind="stable"):
        q[i] = np.clip(np.rint(w[i] / s), -qmax, qmax)
        delta = (w[i] - q[i] * s) / hinv[i, i]
        w -= np.outer(hinv[:, i], delta)
        w[i] = q[i] * s  # what the update leaves there, exactly
        hinv -= np.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
        hinv[i, :] = hinv[:, i] = 0
    return q


def quantize_head(coef: np.ndarray, intercept: np.ndarray, bits: int = 8,
                  per_class: bool = False, pow2: bool = False,
                  feature_mean: np.ndarray | None = None, clip: str | None = None,
                  feature_sample: np.ndarray | None = None,
                  feature_gram: np.ndarray | None = None,
                  rounding: str | None = None) -> tuple[dict, dict]:
    """Return ``(meta, arrays)`` for the model file; ``feature_mean`` (d,) turns on
    bias correction and ``clip`` picks the weight scale (default: "output" given
    ``feature_sample``, centred training features (n, d), else "mse"); ``rounding``
    "gptq" (the default given ``feature_gram``, the centred training features' Gram
    (d, d)) or "nearest". See the module docstring."""
    bits = check_bits(bits)
    if clip is None:
        clip = "output" if feature_sample is not None else "mse"
    if rounding is None:
        rounding = "gptq" if feature_gram is not None else "nearest"
    if rounding not in ROUNDING_MODES:
        raise ConfigError(f"rounding must be one of {', '.join(ROUNDING_MODES)}, got {rounding!r}")
    if rounding == "gptq" and feature_gram is None:
        raise ConfigError("rounding='gptq' needs the Gram of the training features")
    wq, ws = quantize_tensor(coef, bits, axis=0 if per_class else None, pow2=pow2, clip=clip,
                             feature_sample=feature_sample)
    if rounding == "gptq" and wq.size:
        from ..memory import require
        d = wq.shape[0]
        require(gptq_bytes(d), f"GPTQ rounding of a {d:,}-feature head",
                "quantize with rounding='nearest' (--rounding nearest), or use fewer features")
        wq = gptq_round(coef, ws, 2 ** (bits - 1) - 1, feature_gram).astype(wq.dtype)
    bias = np.asarray(intercept, dtype=np.float32)
    if feature_mean is not None:
        mu = np.asarray(feature_mean, dtype=np.float64)
        if mu.shape != (coef.shape[0],) or not np.isfinite(mu).all():
            raise DataError(f"feature mean must be {coef.shape[0]} finite values, got shape {mu.shape}")
        w_err = np.asarray(coef, np.float64) - wq.astype(np.float64) * np.asarray(ws, np.float64)
        bias = (bias + mu @ w_err).astype(np.float32)
    bias_bits = max(bits, 8)
    bq, bs = quantize_tensor(bias, bias_bits, axis=None, pow2=pow2)
    meta = {"kind": "fixed", "bits": bits, "scale": "per_class" if per_class else "per_tensor",
            "pow2": bool(pow2), "bias_bits": bias_bits, "bias_scale": "per_tensor", "clip": clip,
            "rounding": rounding}
    if feature_mean is not None:
        meta["bias_corrected"] = True
    arrays = {"head/weight_q": wq, "head/scale": np.atleast_1d(ws).astype(np.float32),
              "head/bias_q": bq, "head/bias_scale": np.atleast_1d(bs).astype(np.float32)}
    return meta, arrays


def dequantize(meta: dict, arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    w = arrays["head/weight_q"].astype(np.float32) * arrays["head/scale"].astype(np.float32)
    b = arrays["head/bias_q"].astype(np.float32) * arrays["head/bias_scale"].astype(np.float32)
    return w.astype(np.float32), b.astype(np.float32)


def head_from_arrays(meta: dict, arrays: dict):
    """Validate a stored fixed-point head; return (coef, intercept, int arrays)."""
    need = ("head/weight_q", "head/scale", "head/bias_q", "head/bias_scale")
    missing = [k for k in need if k not in arrays]
    if missing:
        raise DataError(f"fixed-point head is missing arrays {missing}")
    bits = check_bits(meta.get("bits", 8))
    bias_bits = check_bits(meta.get("bias_bits", bits))
    qmax, bias_qmax = 2 ** (bits - 1) - 1, 2 ** (bias_bits - 1) - 1
    wq, bq = arrays["head/weight_q"], arrays["head/bias_q"]
    if not (np.issubdtype(wq.dtype, np.integer) and np.issubdtype(bq.dtype, np.integer)):
        raise DataError("fixed-point head weights are not integers")
    if np.abs(wq.astype(np.int32)).max(initial=0) > qmax:
        raise DataError(f"fixed-point head has weights outside the signed {bits}-bit range")
    if np.abs(bq.astype(np.int32)).max(initial=0) > bias_qmax:
        raise DataError(f"fixed-point head has a bias outside the signed {bias_bits}-bit range")
    n_scales = wq.shape[1] if meta.get("scale") == "per_class" else 1
    if arrays["head/scale"].shape != (n_scales,):
        raise DataError(f"head/scale has shape {arrays['head/scale'].shape}, expected ({n_scales},)")
    w, b = dequantize(meta, arrays)
    kept = {k: arrays[k] for k in need}
    return w, b, kept


def sample_rows(n: int, sample: int = FEATURE_SAMPLE, seed: int = 0) -> np.ndarray:
    """Sorted indices of the ``sample`` training rows (all if fewer) output clipping reads."""
    if not sample or not n:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))


def _add_rows_gram(g: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``g`` (Fortran float32, upper triangle) plus ``rows^T rows``, in place via ``ssyrk``."""
    from scipy.linalg import blas

    rows = np.ascontiguousarray(rows, dtype=np.float32)
    return blas.ssyrk(1.0, rows.T, beta=1.0, c=g, trans=0, lower=0, overwrite_c=1)


def _mirrored(g: np.ndarray, block: int = 512) -> np.ndarray:
    """The full symmetric matrix from ``ssyrk``'s upper triangle, in place, a block of
    columns at a time (``np.triu`` on the whole matrix costs a d² mask and two copies:
    most of the time of a Gram at 8,000 features)."""
    d = g.shape[0]
    for a in range(0, d, block):
        b = min(a + block, d)
        # rows below the diagonal block take the transposed upper part; inside the
        # diagonal block, only the strictly lower entries
        g[b:, a:b] = g[a:b, b:].T
        blk = g[a:b, a:b]
        lower = np.tril_indices(b - a, -1)
        blk[lower] = blk.T[lower]
    return g


def centred_gram(h: np.ndarray, mean: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """The full symmetric Gram ``(h - mean)^T (h - mean)`` of feature rows ``h`` (n, d),
    float32, formed chunk by chunk with ``ssyrk`` (upper triangle, then mirrored)."""
    from ..memory import require

    h = np.asarray(h)
    d = h.shape[1]
    require(4 * d * d + 4 * min(len(h), chunk) * d, f"the {d:,}² feature Gram for GPTQ rounding",
            "quantize with rounding='nearest', or use fewer features")
    mu = np.zeros(d) if mean is None else np.asarray(mean, dtype=np.float64)
    g = np.zeros((d, d), dtype=np.float32, order="F")
    for a in range(0, len(h), chunk):
        c = np.ascontiguousarray(h[a:a + chunk] - mu, dtype=np.float32)
        g = _add_rows_gram(g, c)
    return _mirrored(g)


def training_feature_mean(model, X, batch_size: int = 2048) -> np.ndarray:
    """Mean feature vector of ``model``'s body over images ``X`` (float64, chunked)."""
    return training_feature_stats(model, X, batch_size, sample=0)[0]


def training_feature_stats(model, X, batch_size: int = 2048, sample: int = FEATURE_SAMPLE,
                           seed: int = 0, gram: bool = False):
    """(mean feature vector, ``sample`` seeded rows of centred features, or None) of
    ``model``'s body over images ``X``: what bias correction and output clipping read.
    ``gram=True`` adds a third item, the centred features' Gram (GPTQ rounding), from
    the same pass over the images."""
    total, n, g, shift = None, 0, None, None
    pick = sample_rows(len(X), sample, seed)
    rows = []
    for start, _, f in model.body_.iter_transform(X, batch_size):
        s = f.astype(np.float64).sum(0)
        total = s if total is None else total + s
        n += len(f)
        inside = pick[(pick >= start) & (pick < start + len(f))] - start
        if len(inside):
            rows.append(np.asarray(f[inside], dtype=np.float32))
        if gram:
            if g is None:
                from ..memory import require
                d = f.shape[1]
                require(4 * d * d, f"the {d:,}² feature Gram for GPTQ rounding",
                        "quantize with --rounding nearest, or use fewer features")
                # shifted by the first batch's mean, so the float32 sums do not
                # cancel the way raw (large, all-positive) features would
                shift = f.astype(np.float64).mean(0)
                g = np.zeros((d, d), dtype=np.float32, order="F")
            c = np.ascontiguousarray(f - shift, dtype=np.float32)
            g = _add_rows_gram(g, c)
    if not n:
        raise DataError("bias correction needs at least one training image")
    mean = total / n
    out = [mean, None if not rows else (np.concatenate(rows) - mean).astype(np.float32)]
    if gram:
        g = _mirrored(g)
        delta = (mean - shift).astype(np.float32)
        g -= n * np.outer(delta, delta)
        out.append(g)
    return tuple(out)


def apply_quantization(model, bits: int = 8, per_class: bool = False, pow2: bool = False,
                       feature_mean: np.ndarray | None = None, clip: str | None = None,
                       feature_sample: np.ndarray | None = None,
                       feature_gram: np.ndarray | None = None, rounding: str | None = None):
    """Quantize ``model``'s head in place; ``predict`` then uses the dequantized head.
    ``feature_mean`` (from training images: ``training_feature_stats(model, x_train)``)
    turns on bias correction; ``feature_gram`` GPTQ rounding."""
    if getattr(model, "head_meta_", {}).get("kind") == "fixed":
        raise ConfigError("the model head is already fixed point; quantize the float model")
    meta, arrays = quantize_head(model.coef_, model.intercept_, bits, per_class, pow2, feature_mean,
                                 clip, feature_sample, feature_gram, rounding)
    model.coef_, model.intercept_ = dequantize(meta, arrays)
    model.head_meta_ = meta
    model.head_arrays_ = arrays
    return model
