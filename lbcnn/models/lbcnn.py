"""LB-CNN: a fixed random +-1 depthwise body and a closed-form ELM head.

The body is a stack of macro-layers, each a depthwise 3x3 conv with +-1
kernels (depth multiplier ``nf``), ``nl - 1`` extra ReLU + multiplier-1
depthwise convs, and a 4x4/2 'same' max-pool. Features flatten in (H, W, C)
order so they line up with the rows of a Keras ``Dense`` layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from ..binary import native
from ..binary.kernels import random_sign_kernels, sign_kernels_to_taps
from ..binary.pooling import pooled_size
from ..errors import ConfigError, DataError
from ..heads.elm import DualSystem, RidgeAccumulator, one_vs_rest_targets
from ..memory import require
from . import register_model
from ._sk import (PER_CLASS_SCORES, ParamError, as_value_error, classifier_tags, load_estimator, save_estimator,
                  softmax, validate_images, validate_targets)

MAX_LAYERS = 3
_SCRATCH_POOL: list[np.ndarray] = []


def _take_scratch(need: int) -> np.ndarray:
    """Reuse feature buffers across calls: fresh pages fault on first touch,
    which for a 64 MB batch buffer costs ~0.2 s per call on a VM."""
    for i, buf in enumerate(_SCRATCH_POOL):
        if buf.size >= need:
            return _SCRATCH_POOL.pop(i)
    return np.empty(need, dtype=np.float32)


def as_nhwc(x: np.ndarray) -> np.ndarray:
    """Accept (n, H, W) or (n, H, W, C) images; return a 4-D view."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"images must have shape (n, H, W) or (n, H, W, C), got {x.shape}")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"images must be uint8 or floating point, got dtype {x.dtype}")
    return x


def check_filters(filters) -> tuple[int, ...]:
    try:
        filters = tuple(int(f) for f in filters)
    except (TypeError, ValueError):
        raise ConfigError(f"filters must be integers, got {filters!r}") from None
    if not 1 <= len(filters) <= MAX_LAYERS:
        raise ConfigError(f"LB-CNN takes 1 to {MAX_LAYERS} conv layers, got {len(filters)}")
    if any(f < 1 for f in filters):
        raise ConfigError(f"every depth multiplier must be >= 1, got {filters}")
    return filters


@dataclass
class LBCNNBody:
    """The fixed feature expander. ``kernels[l]`` holds the layer's main conv
    ``(3, 3, C_in, nf)`` and its ``nl - 1`` extra ``(3, 3, C_out, 1)`` convs, int8 +-1."""

    input_shape: tuple[int, int, int]
    kernels: list[dict]
    nl: int = 1
    input_scale: float = 1.0 / 255.0
    _torch_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def random(cls, input_shape, filters, nl: int = 1, seed: int = 0,
               input_scale: float = 1.0 / 255.0) -> "LBCNNBody":
        filters = check_filters(filters)
        if nl < 1:
            raise ConfigError(f"nl must be >= 1, got {nl}")
        rng = np.random.default_rng(seed)
        channels = input_shape[2]
        kernels = []
        for nf in filters:
            main = random_sign_kernels(rng, channels, nf)
            channels *= nf
            extras = [random_sign_kernels(rng, channels, 1) for _ in range(nl - 1)]
            kernels.append({"conv": main, "extras": extras})
        return cls(tuple(int(s) for s in input_shape), kernels, nl, input_scale)

    @property
    def filters(self) -> tuple[int, ...]:
        return tuple(int(k["conv"].shape[3]) for k in self.kernels)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        h, w, c = self.input_shape
        for nf in self.filters:
            h, w, c = pooled_size(h), pooled_size(w), c * nf
        return h, w, c

    @property
    def n_features(self) -> int:
        h, w, c = self.output_shape
        return h * w * c

    @property
    def conv_bits(self) -> int:
        """One bit per kernel weight, the paper's conv count."""
        return sum(k["conv"].size + sum(e.size for e in k["extras"]) for k in self.kernels)

    def _check_images(self, x: np.ndarray) -> np.ndarray:
        x = as_nhwc(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DataError(f"images have shape {tuple(x.shape[1:])} but the model expects "
                            f"{tuple(self.input_shape)} (H, W, C)")
        return x

    def _batch_to_float(self, xb: np.ndarray) -> tuple[np.ndarray, float]:
        """uint8 pixels stay integer-valued (exact sums) and are scaled at the end."""
        if xb.dtype == np.uint8:
            return xb.astype(np.float32), float(self.input_scale)
        xb = np.asarray(xb, dtype=np.float32)
        if not np.isfinite(xb).all():
            raise DataError("images contain NaN or infinity")
        return xb, 1.0

    # -- torch path: the CUDA path, and the CPU fallback without a C compiler --
    def _torch_layers(self, device):
        key = str(device)
        if key not in self._torch_cache:
            from ..binary.torch_kernel import taps_tensor
            self._torch_cache[key] = [
                (taps_tensor(k["conv"], device), [taps_tensor(e, device) for e in k["extras"]])
                for k in self.kernels]
        return self._torch_cache[key]

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        """NHWC float tensor -> (n, d) unscaled features, in torch (autograd-free)."""
        from ..binary.torch_kernel import body_features
        with torch.inference_mode():
            return body_features(x, self._torch_layers(x.device))

    def iter_device(self, x, device, rows: int | None = None):
        """Yield ``(start, stop, features)`` with the features a float32 tensor on ``device``.

        ``x`` is uint8 or float NHWC, a NumPy array (copied to the device a chunk at a
        time, as uint8 when it is uint8) or a tensor already there. Chunks are as large
        as the memory plan allows (``binary.torch_kernel.chunk_rows``) unless ``rows``.
        """
        from ..binary.torch_kernel import body_features, chunk_rows

        device = torch.device(device)
        if isinstance(x, torch.Tensor) and x.dim() == 3:
            x = x.unsqueeze(-1)  # (n, H, W) -> NHWC, as as_nhwc does for arrays
        n = len(x)
        if rows is None:
            rows = chunk_rows(self.input_shape, self.filters, self.nl, device, n)
        layers = self._torch_layers(device)
        is_u8 = (x.dtype == torch.uint8) if isinstance(x, torch.Tensor) else x.dtype == np.uint8
        scale = float(self.input_scale) if is_u8 else 1.0
        with torch.inference_mode():
            for start in range(0, n, rows):
                xb = x[start:start + rows]
                if not isinstance(xb, torch.Tensor):
                    if not is_u8:
                        xb = np.asarray(xb, dtype=np.float32)
                    xb = torch.from_numpy(np.ascontiguousarray(xb))
                xb = xb.to(device)
                if not is_u8 and not torch.isfinite(xb).all():
                    raise DataError("images contain NaN or infinity")
                yield start, start + len(xb), body_features(xb, layers, scale)

    def features_device(self, x, device) -> torch.Tensor:
        """All (n, d) features as one float32 tensor on ``device`` (see ``iter_device``)."""
        device = torch.device(device)
        x = self._check_images(x) if not isinstance(x, torch.Tensor) else x
        out = torch.empty((len(x), self.n_features), dtype=torch.float32, device=device)
        for a, b, f in self.iter_device(x, device):
            out[a:b] = f
        return out

    def _taps(self) -> np.ndarray:
        if "taps" not in self._torch_cache:
            self._torch_cache["taps"] = np.concatenate([
                sign_kernels_to_taps(t).ravel()
                for k in self.kernels for t in [k["conv"], *k["extras"]]])
        return self._torch_cache["taps"]

    def _features_into(self, xb: np.ndarray, dst: np.ndarray, device, lib) -> None:
        """Features of one batch written into ``dst`` (len(xb), d)."""
        if lib is not None:
            if xb.dtype == np.uint8:  # the kernel converts per image, in cache
                xc, is_u8, scale = np.ascontiguousarray(xb), 1, float(self.input_scale)
            else:
                xf, scale = self._batch_to_float(xb)
                xc, is_u8 = np.ascontiguousarray(xf), 0
            n, hh, ww, cc = xc.shape
            rc = lib.lb_features(xc.ctypes.data, is_u8, n, hh, ww, cc, len(self.kernels),
                                 np.array(self.filters, dtype=np.int32), self.nl, self._taps(),
                                 scale, dst, native.threads())
            if rc != 0:
                raise MemoryError("native feature kernel ran out of memory")
            return
        device = torch.device(device)
        for a, b, f in self.iter_device(xb, device):
            dst[a:b] = f.cpu().numpy()

    def iter_transform(self, x: np.ndarray, batch_size: int = 2048, device=None):
        """Yield ``(start, stop, features)`` batches without holding all features.

        The features array is a reused buffer: consume it before the next step.
        """
        x = self._check_images(x)
        device = torch.device(device) if device is not None else torch.device("cpu")
        lib = native.load() if device.type == "cpu" else None
        rows = min(batch_size, len(x))
        flat = _take_scratch(rows * self.n_features)
        buf = flat[:rows * self.n_features].reshape(rows, self.n_features)
        try:
            for start in range(0, len(x), batch_size):
                xb = x[start:start + batch_size]
                view = buf[:len(xb)]
                self._features_into(xb, view, device, lib)
                yield start, start + len(xb), view
        finally:
            _SCRATCH_POOL.append(flat)
            del _SCRATCH_POOL[:-2]  # keep at most two idle buffers

    def transform(self, x: np.ndarray, batch_size: int = 2048, device=None,
                  out: np.ndarray | None = None) -> np.ndarray:
        """(n, n_features) float32 features; ``out`` reuses a buffer of that shape."""
        x = self._check_images(x)
        device = torch.device(device) if device is not None else torch.device("cpu")
        lib = native.load() if device.type == "cpu" else None
        if out is None:
            require(4 * len(x) * self.n_features,
                    f"features for {len(x):,} images x {self.n_features:,}",
                    "process fewer images at once (the search streams them) or use fewer filters")
            out = np.empty((len(x), self.n_features), dtype=np.float32)
        elif out.shape != (len(x), self.n_features) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {(len(x), self.n_features)}, got "
                             f"{out.dtype} {out.shape}")
        for start in range(0, len(x), batch_size):
            self._features_into(x[start:start + batch_size], out[start:start + batch_size],
                                device, lib)
        return out


class LBCNN(ClassifierMixin, BaseEstimator):
    """scikit-learn LB-CNN classifier.

    >>> LBCNN(filters=(40, 4), C=1e-3, random_state=0).fit(X, y).predict(X)

    ``X`` is uint8 or float images ``(n, H, W[, C])`` or flattened rows
    ``(n, H*W*C)`` reshaped with ``input_shape`` (see ``lbcnn.models._sk``).
    ``random_state`` seeds the +-1 kernels; the head is solved in closed form.
    Learned state: ``body_``, ``coef_`` (d, k), ``intercept_`` (k,), ``classes_``,
    ``input_shape_``, ``n_features_in_``.
    """

    _OWN_CONFIG_KEYS = ("input_shape", "filters", "nl", "input_scale", "C", "classes", "head")
    _expected_failed_checks = {"check_classifiers_train": PER_CLASS_SCORES,
                               "check_classifiers_classes": PER_CLASS_SCORES}

    def __init__(self, filters=(40, 4), nl: int = 1, C: float = 1e-3, random_state: int = 0,
                 input_scale: float | None = None, batch_size: int = 2048, device=None,
                 input_shape=None):
        self.filters = filters
        self.nl = nl
        self.C = C
        self.random_state = random_state
        self.input_scale = input_scale
        self.batch_size = batch_size
        self.device = device
        self.input_shape = input_shape

    def __sklearn_tags__(self):
        return classifier_tags(super().__sklearn_tags__(), poor_score=False)

    def _device(self):
        from ..settings import default_device
        return torch.device(self.device) if self.device is not None else default_device()

    def _images(self, X, reset: bool) -> np.ndarray:
        shape = self.input_shape if reset else getattr(self.body_, "input_shape", None)
        return validate_images(self, X, reset=reset, input_shape=shape)

    def fit(self, X, y, body: LBCNNBody | None = None):
        X = self._images(X, reset=True)
        self.classes_, y_idx = validate_targets(y, len(X))
        if not (isinstance(self.C, (int, float, np.number)) and self.C > 0):
            raise ParamError(f"C must be a positive number, got {self.C!r}")
        scale = self.input_scale if self.input_scale is not None else 1.0 / 255.0
        try:
            self.body_ = body if body is not None else LBCNNBody.random(
                X.shape[1:], self.filters, self.nl, self.random_state, scale)
            self.coef_, self.solver_ = fit_elm(self.body_, X, y_idx, len(self.classes_), self.C,
                                               self.batch_size, self._device())
        except (DataError, ConfigError) as exc:
            raise as_value_error(exc) from None
        self.intercept_ = np.zeros(len(self.classes_), dtype=np.float32)
        return self

    def forward_features(self, X) -> np.ndarray:
        check_is_fitted(self, "body_")
        return self.body_.transform(self._images(X, reset=False), self.batch_size, self._device())

    def reset_classifier(self, num_classes: int):
        self.coef_ = np.zeros((self.body_.n_features, num_classes), dtype=np.float32)
        self.intercept_ = np.zeros(num_classes, dtype=np.float32)
        self.classes_ = np.arange(num_classes)
        return self

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = self._images(X, reset=False)
        out = np.empty((len(X), self.coef_.shape[1]), dtype=np.float32)
        try:
            for a, b, f in self.body_.iter_transform(X, self.batch_size, self._device()):
                out[a:b] = f @ self.coef_ + self.intercept_
        except DataError as exc:
            raise as_value_error(exc) from None
        return out

    def predict_proba(self, X) -> np.ndarray:
        """Softmax of the ELM's one-vs-rest scores: sums to 1 per row and its argmax is
        ``predict``; a ranking, not a calibrated probability."""
        return softmax(self.decision_function(X))

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[self.decision_function(X).argmax(1)]

    def save(self, path) -> None:
        """Write the native ``.npz`` model file (``LBCNN.load`` reads it back)."""
        save_estimator(self, path)

    @classmethod
    def load(cls, path) -> "LBCNN":
        """Read a native LB-CNN model file or run folder."""
        return load_estimator(cls, path)

    def _save_native(self, path, **meta) -> None:
        save_lbcnn(self, path, **meta)


def elm_system(body: LBCNNBody, X: np.ndarray, y_idx: np.ndarray, n_classes: int,
               batch_size: int = 2048, device=None, timer=None, C: float = 1e-3):
    """Stream the body's features into the ridge system the head is solved from: a
    ``RidgeAccumulator`` (primal, features < samples) or a ``DualSystem``. On CUDA the
    images go to the device as uint8 and the features never leave it.

    ``timer``, when given, is a dict that receives seconds spent in 'features' and
    'solve' (here: forming the Gram or kernel).
    """
    import time

    d, n = body.n_features, len(X)
    device = torch.device(device) if device is not None else torch.device("cpu")
    on_gpu = device.type == "cuda"
    t_feat = t_solve = 0.0
    if d < n:
        system = RidgeAccumulator(d, n_classes, C, device)
        batches = body.iter_device(X if isinstance(X, torch.Tensor) else body._check_images(X),
                                   device) if on_gpu else \
            body.iter_transform(X, batch_size, device)
        t0 = time.perf_counter()
        for a, b, f in batches:
            t1 = time.perf_counter()
            t_feat += t1 - t0
            system.update(f, one_vs_rest_targets(y_idx[a:b], n_classes))
            t0 = time.perf_counter()
            t_solve += t0 - t1
    else:
        t0 = time.perf_counter()
        h = body.features_device(X, device) if on_gpu else body.transform(X, batch_size, device)
        t1 = time.perf_counter()
        system = DualSystem(h, one_vs_rest_targets(y_idx, n_classes))
        t_feat += t1 - t0
        t_solve += time.perf_counter() - t1
    if timer is not None:
        timer["features"] = timer.get("features", 0.0) + t_feat
        timer["solve"] = timer.get("solve", 0.0) + t_solve
    return system


def solve_system(system, C: float, host: bool = True):
    """(W, solver) for ``C`` from an ``elm_system``."""
    if isinstance(system, DualSystem):
        return system.solve(C, host=host)
    w = system.solve(C, host=host)
    return w, system.solver_


def fit_elm(body: LBCNNBody, X: np.ndarray, y_idx: np.ndarray, n_classes: int, C: float,
            batch_size: int = 2048, device=None, timer=None) -> tuple[np.ndarray, str]:
    """Stream the body's features into the ELM solver (primal or dual); (W, solver).

    ``timer``, when given, is a dict that receives seconds spent in
    'features' and 'solve'.
    """
    import time

    system = elm_system(body, X, y_idx, n_classes, batch_size, device, timer, C)
    t0 = time.perf_counter()
    w, solver = solve_system(system, C)
    if isinstance(system, RidgeAccumulator):
        system.release()
    if timer is not None:
        timer["solve"] = timer.get("solve", 0.0) + time.perf_counter() - t0
    return w, solver


register_model("lbcnn", LBCNN)


# -- model files --------------------------------------------------------------
def body_to_arrays(body: LBCNNBody, prefix: str = "body") -> dict[str, np.ndarray]:
    arrays = {}
    for i, k in enumerate(body.kernels):
        arrays[f"{prefix}/{i}/conv"] = k["conv"]
        for j, e in enumerate(k["extras"]):
            arrays[f"{prefix}/{i}/extra/{j}"] = e
    return arrays


def body_config(body: LBCNNBody) -> dict:
    return {"input_shape": list(body.input_shape), "filters": list(body.filters),
            "nl": body.nl, "input_scale": body.input_scale}


def body_from_file(config: dict, arrays: dict, prefix: str = "body") -> LBCNNBody:
    kernels = []
    for i in range(len(config["filters"])):
        conv = arrays[f"{prefix}/{i}/conv"].astype(np.int8)
        extras = [arrays[f"{prefix}/{i}/extra/{j}"].astype(np.int8) for j in range(config["nl"] - 1)]
        for k in [conv, *extras]:
            if not np.all(np.abs(k) == 1):
                raise DataError("model file kernels are not all +-1")
        kernels.append({"conv": conv, "extras": extras})
    return LBCNNBody(tuple(config["input_shape"]), kernels, int(config["nl"]),
                     float(config["input_scale"]))


def save_lbcnn(model: LBCNN, path, **meta) -> None:
    from ..io.native import save_model_file

    config = {"family": "lbcnn", **body_config(model.body_),
              "C": model.C, "classes": [int(c) for c in model.classes_],
              "head": getattr(model, "head_meta_", {"kind": "float32"}), **meta}
    arrays = body_to_arrays(model.body_)
    packed = {}
    if config["head"].get("kind") == "fixed":
        # n-bit head: only the integers and scales are stored (see heads/quantize.py),
        # 2..7-bit weights bit-packed, n bits each
        arrays.update(model.head_arrays_)
        bits = int(config["head"].get("bits", 8))
        if bits < 8:
            packed["head/weight_q"] = bits
    else:
        arrays["head/weight"] = model.coef_
        arrays["head/bias"] = model.intercept_
    save_model_file(path, config, arrays, packed=packed)


def load_lbcnn(config: dict, arrays: dict) -> LBCNN:
    body = body_from_file(config, arrays)
    model = LBCNN(filters=tuple(config["filters"]), nl=config["nl"], C=config.get("C", 1e-3),
                  input_scale=config["input_scale"])
    model.body_ = body
    head = config.get("head", {"kind": "float32"})
    if head.get("kind") == "fixed":
        from ..heads.quantize import head_from_arrays
        model.coef_, model.intercept_, model.head_arrays_ = head_from_arrays(head, arrays)
    else:
        model.coef_ = arrays["head/weight"].astype(np.float32)
        model.intercept_ = arrays["head/bias"].astype(np.float32)
    if model.coef_.shape != (body.n_features, len(config["classes"])):
        raise DataError(f"head weight shape {model.coef_.shape} does not match the body "
                        f"({body.n_features} features, {len(config['classes'])} classes)")
    model.classes_ = np.array(config["classes"])
    model.head_meta_ = config.get("head", {"kind": "float32"})
    model.meta_ = config
    model.input_shape_ = tuple(body.input_shape)
    model.n_features_in_ = int(np.prod(body.input_shape))
    return model
