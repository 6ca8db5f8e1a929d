"""scikit-learn glue shared by the estimators (LBCNN, CBCNN, Hybrid).

Every estimator takes images ``(n, H, W)`` / ``(n, H, W, C)`` or flattened
rows ``(n, H*W*C)``. Flattened rows are reshaped with the estimator's
``input_shape`` hyperparameter; without one, the ``d`` features are laid out
row-major in the smallest square image of side ``max(ceil(sqrt(d)), min_side)``
(zero-padded when ``d`` is not that square: a UserWarning says so), which maps
flattened 28x28 MNIST back onto its images and lets generic tabular data
through scikit-learn's tooling. The layout chosen at ``fit`` is
``input_shape_``; ``predict`` reuses it.

Input errors raise ``InputError``, which is both lbcnn's ``DataError`` (one
line on the command line) and a ``ValueError`` (what scikit-learn expects).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ..errors import ConfigError, DataError


class InputError(DataError, ValueError):
    """Bad estimator input: a DataError for the CLI and a ValueError for scikit-learn."""


class ParamError(ConfigError, ValueError):
    """A hyperparameter that cannot work: a ConfigError and a ValueError."""


def as_value_error(exc: Exception) -> Exception:
    """lbcnn's DataError/ConfigError as the matching ValueError-compatible class."""
    if isinstance(exc, ValueError):
        return exc
    return (ParamError if isinstance(exc, ConfigError) else InputError)(str(exc))


def _integers_to_pixels(x: np.ndarray) -> np.ndarray:
    """Integer arrays holding 0..255 become uint8 pixels; other integers float32."""
    if x.dtype == np.uint8 or x.dtype.kind not in "iub":
        return x
    if x.size and (x.min() < 0 or x.max() > 255):
        return x.astype(np.float32)
    return x.astype(np.uint8)


def _shape3(shape) -> tuple[int, int, int]:
    try:
        s = tuple(int(v) for v in shape)
    except (TypeError, ValueError):
        raise ParamError(f"input_shape must be (H, W) or (H, W, C), got {shape!r}") from None
    if len(s) == 2:
        s = s + (1,)
    if len(s) != 3 or min(s) < 1:
        raise ParamError(f"input_shape must be (H, W) or (H, W, C) of positive sizes, got {shape!r}")
    return s


def square_layout(d: int, min_side: int = 1) -> tuple[int, int, int]:
    side = max(math.isqrt(d - 1) + 1 if d > 1 else 1, int(min_side))
    return side, side, 1


def rows_to_images(X: np.ndarray, input_shape, min_side: int = 1,
                   alt_channels: tuple[int, ...] = ()) -> np.ndarray:
    """(n, d) rows -> (n, H, W, C) images (see the module docstring)."""
    n, d = X.shape
    if input_shape is not None:
        h, w, c = _shape3(input_shape)
        for ch in (c, *alt_channels):
            if h * w * ch == d:
                return X.reshape(n, h, w, ch)
        raise InputError(f"X has {d} features but input_shape {(h, w, c)} needs {h * w * c}")
    h, w, c = square_layout(d, min_side)
    if h * w == d:
        return X.reshape(n, h, w, 1)
    warnings.warn(f"X has {d} features and no input_shape: laid out as a {h}x{w} image with "
                  f"{h * w - d} zero pixels; give input_shape=(H, W, C) for images", UserWarning,
                  stacklevel=3)
    out = np.zeros((n, h * w), dtype=X.dtype)
    out[:, :d] = X
    return out.reshape(n, h, w, 1)


def validate_images(est, X, *, reset: bool, input_shape=None, min_side: int = 1,
                    alt_channels: tuple[int, ...] = ()) -> np.ndarray:
    """Check ``X`` like ``sklearn.utils.validation.validate_data`` and return uint8 or
    float NHWC images. Sets ``n_features_in_`` (and ``input_shape_``) when ``reset``."""
    from sklearn.utils.validation import check_array, validate_data

    ndim = getattr(X, "ndim", None)
    if ndim is None:
        try:
            ndim = np.asarray(X).ndim
        except ValueError:  # ragged nested lists
            ndim = 2
    try:
        if ndim in (3, 4):
            x = check_array(X, allow_nd=True, dtype=None, ensure_all_finite=True,
                            ensure_min_samples=1, input_name="X")
            if x.dtype.kind not in "uifb":
                x = check_array(x, allow_nd=True, dtype=np.float32, input_name="X")
            x = x[..., None] if x.ndim == 3 else x
            d = int(np.prod(x.shape[1:]))
            if reset:
                est.n_features_in_ = d
                est.input_shape_ = tuple(int(s) for s in x.shape[1:])
                if hasattr(est, "feature_names_in_"):
                    del est.feature_names_in_
            else:
                want = getattr(est, "input_shape_", None) or input_shape
                ok = want is None or any(tuple(x.shape[1:]) == _shape3(want)[:2] + (ch,)
                                         for ch in (_shape3(want)[2], *alt_channels))
                if not ok:
                    raise InputError(f"images have shape {tuple(x.shape[1:])} but the model expects "
                                     f"{tuple(want)} (H, W, C)")
        else:
            x = validate_data(est, X, reset=reset, dtype=[np.float32, np.float64, np.uint8, np.int64,
                                                            np.int32, np.int16, np.uint16],
                              ensure_all_finite=True)
            shape = input_shape
            if not reset and getattr(est, "input_shape_", None) is not None:
                shape = est.input_shape_
                h, w, c = _shape3(shape)
                if c == 1 and h * w > x.shape[1] and h == w and (h, w, c) == square_layout(
                        x.shape[1], min_side):  # fit laid the rows out zero-padded
                    x = np.concatenate([x, np.zeros((len(x), h * w - x.shape[1]), x.dtype)], 1)
            elif not reset and shape is None:
                raise InputError("flattened rows need the model's input shape; this model "
                                 "records none, so pass (n, H, W, C) images")
            x = rows_to_images(np.asarray(x), shape, min_side, alt_channels)
            if reset:
                est.input_shape_ = tuple(int(s) for s in x.shape[1:])
    except (DataError, ConfigError) as exc:
        raise as_value_error(exc) from None
    x = _integers_to_pixels(x)
    if x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x


def validate_targets(y, n: int):
    """(classes_, y_idx) for a classifier; 1-D labels of length ``n``."""
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import column_or_1d

    y = column_or_1d(y, warn=True)
    check_classification_targets(y)
    if len(y) != n:
        raise InputError(f"{n} images but {len(y)} labels")
    classes, y_idx = np.unique(y, return_inverse=True)
    return classes, y_idx


def classifier_tags(tags, *, poor_score: bool = True):
    """Tags shared by the image classifiers."""
    tags.input_tags.two_d_array = True
    tags.input_tags.three_d_array = True
    tags.input_tags.allow_nan = False
    tags.classifier_tags.multi_class = True
    tags.classifier_tags.poor_score = poor_score
    return tags


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def save_estimator(model, path) -> None:
    """``model.save(path)``: the native ``.npz`` of the model's family."""
    from pathlib import Path

    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model)
    path = Path(path)
    if path.suffix != ".npz":
        raise ParamError(f"native model files end in .npz, got {path.name}")
    own = {"format", "version", "family", *getattr(model, "_OWN_CONFIG_KEYS", ())}
    meta = {k: v for k, v in getattr(model, "meta_", {}).items() if k not in own}
    model._save_native(path, **meta)


def load_estimator(cls, path):
    """``cls.load(path)``: a native model file (or run folder) of that family."""
    from ..io.native import resolve_model_path
    from . import load_model

    model = load_model(resolve_model_path(path))
    if not isinstance(model, cls):
        raise DataError(f"{path} holds a {type(model).__name__} model, not a {cls.__name__}; "
                        f"use lbcnn.models.load_model for any family")
    return model


# The checks of ``sklearn.utils.estimator_checks`` that cannot apply, with the reason;
# pass ``expected_failed_checks=expected_failed_checks`` to ``parametrize_with_checks``
# or ``expected_failed_checks(est)`` to ``check_estimator``.
PER_CLASS_SCORES = ("decision_function returns one score per class, (n, k), also for two "
                    "classes: the integer engine, the exports and the C code compare per-class "
                    "scores; predict and predict_proba follow scikit-learn")
EAGER_NET = ("a CBCNN builds its randomly initialized network at construction (exporters and "
             "the integer engine use such networks without fit), so an unknown preset or "
             "preprocessing spec fails in __init__ and predict works before fit")


def expected_failed_checks(estimator) -> dict[str, str]:
    """{check name: reason} of the checks this estimator declares as not applicable."""
    return dict(getattr(estimator, "_expected_failed_checks", {}))
