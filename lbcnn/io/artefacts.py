"""Open any lbcnn artefact, by content: a run folder, a native ``.npz``, a Keras ``.h5``
(or ``.keras``), an ``.onnx`` file (run through onnxruntime), a ``.tflite`` file or the
folder ``lbcnn export --format tflite`` writes (run in TensorFlow Lite Micro's reference
interpreter, or LiteRT's reference kernels) or an exported C folder (compiled with the
system C compiler; its ``main.c`` reads raw uint8 images on stdin).

``load_any(path)`` gives the Python model (native and Keras files, which every command
can use); ``open_predictor(path)`` gives one ``Predictor`` over every kind, for
``lbcnn evaluate`` and ``lbcnn predict``. A mix-up (an ONNX file named .npz, an image
passed as the model) stops with one line saying what the file looks like (``sniff``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from ..metadata import validate_onnx_metadata
from ..validate import check_input_shape
from .sniff import sniff

# datasets whose images have one channel (a CBCNN with y_channel then takes gray input)
GRAY_DATASETS = {"mnist", "fashion_mnist", "olivetti"}
# lbcnn writes .tflite files of a few hundred KB; the interpreters hold the whole file
MAX_TFLITE_BYTES = 256 << 20


def _not_a_model(path, kind: str) -> DataError:
    return DataError(f"{path}: not an lbcnn model file: looks like {kind}")


def load_any(path):
    """A native model file (``.npz``) or a Keras ``.h5`` in the LB-CNN layout, by content."""
    path = Path(path)
    kind = sniff(path)
    if kind == "run folder":
        path, kind = path / "model.npz", sniff(path / "model.npz")
    if kind == "HDF5" or (kind == "zip" and path.suffix.lower() == ".keras"):
        from ..deploy.keras_import import import_keras_h5
        return import_keras_h5(path)
    if kind == "zip":
        from ..models import load_model
        return load_model(path)
    if kind == "C folder":
        raise DataError(f"{path}: an exported C folder; lbcnn evaluate and lbcnn predict run "
                        f"it, other commands need the model file it came from")
    if kind == "ONNX":
        raise DataError(f"{path}: an ONNX file; lbcnn evaluate and lbcnn predict run it, other "
                        f"commands need the native .npz model it was exported from")
    if kind in ("TFLite", "TFLite folder"):
        raise DataError(f"{path}: a TFLite model; lbcnn evaluate, predict and info run it, "
                        f"other commands need the native .npz model it was exported from")
    raise _not_a_model(path, kind)


@dataclass
class Predictor:
    """One interface over every model artefact."""

    kind: str                       # native, h5, onnx, tflite, c
    path: Path
    input_shape: tuple              # raw uint8 image (H, W, C) fed to it
    classes: np.ndarray             # label value of each output index
    class_names: list | None        # recorded names (None: not recorded)
    config: dict = field(default_factory=dict)   # the recorded model config / metadata
    _labels: Callable | None = None              # uint8 NHWC -> labels
    _scores: Callable | None = None              # uint8 NHWC -> (n, k) probabilities

    @property
    def dataset(self) -> str | None:
        return self.config.get("dataset")

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = self._check(x)
        if self._labels is not None:
            return self._labels(x)
        return self.classes[self._scores(x).argmax(1)]

    def predict_proba(self, x: np.ndarray) -> np.ndarray | None:
        """(n, k) scores summing to 1 per row, or None (a C folder prints classes only)."""
        return None if self._scores is None else self._scores(self._check(x))

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DataError(f"images have shape {tuple(x.shape[1:])} but {self.path} expects "
                            f"{tuple(self.input_shape)} (H, W, C)")
        return np.ascontiguousarray(x, dtype=np.uint8)

    def names(self, k: int | None = None) -> list[str]:
        """Class names by output index: recorded, else "0".."K-1" (the labels)."""
        k = len(self.classes) if k is None else k
        if self.class_names is not None and len(self.class_names) == len(self.classes):
            names = [str(n) for n in self.class_names]
        else:
            names = [str(c) for c in self.classes]
        return names + [str(i) for i in range(len(names), k)]


def open_predictor(path, trust_c: bool = False, interpreter: str = "tflm") -> Predictor:
    """A run folder, native ``.npz``, Keras ``.h5``, ``.onnx``, ``.tflite`` (or its export
    folder) or exported C folder.

    A C folder's sources are compiled and run only when they match the SHA-256 that
    ``lbcnn export`` recorded in its ``model.json``, unless ``trust_c`` (``--trust-c``).
    ``interpreter`` runs a ``.tflite``: ``tflm`` (TensorFlow Lite Micro's reference
    interpreter) or ``litert`` (LiteRT's reference kernels)."""
    path = Path(path)
    kind = sniff(path)
    if kind == "C folder":
        from .c_folder import c_predictor
        return _luma_adapter(c_predictor(path, trust=trust_c))
    if kind == "ONNX":
        return _luma_adapter(_onnx_predictor(path))
    if kind in ("TFLite", "TFLite folder"):
        return _luma_adapter(_tflite_predictor(path if kind == "TFLite" else path / "model.tflite",
                                               interpreter))
    if kind == "folder":
        raise DataError(f"{path}: a folder with neither model.npz (a run folder), "
                        f"model.h + model.c (an exported C folder) nor model.tflite")
    model = load_any(path)
    return _luma_adapter(_native_predictor(model, path, "h5" if kind == "HDF5" else "native"))


def _luma_adapter(pred: Predictor) -> Predictor:
    """A model fitted on the Y channel of colour data (``lbcnn optimize``'s colour choice
    "y") records ``input_color: "y"``: it takes the RGB images its dataset holds and
    converts them with the same exact-integer BT.601 luma the fit used."""
    if pred.config.get("input_color") != "y" or tuple(pred.input_shape)[-1] != 1:
        return pred
    from ..preprocess import rgb_to_y
    inner_labels, inner_scores = pred._labels, pred._scores
    h, w, _ = pred.input_shape
    return Predictor(pred.kind, pred.path, (h, w, 3), pred.classes, pred.class_names, pred.config,
                     _labels=None if inner_labels is None else lambda x: inner_labels(rgb_to_y(x)),
                     _scores=None if inner_scores is None else lambda x: inner_scores(rgb_to_y(x)))


def _model_input_shape(model, config: dict) -> tuple:
    from ..models import is_cbcnn, is_lowbit

    if is_lowbit(model):   # the raw image: the model resizes it itself
        return tuple(int(s) for s in model.frozen_["input_shape"])

    if is_cbcnn(model):
        h, w, c = model.net.input_shape
        if model.preprocess.y_channel and c == 1:
            gray = config.get("dataset") in GRAY_DATASETS or \
                (config.get("preprocessing") or {}).get("grayscale")
            c = 1 if gray else 3
        return (h, w, c)
    shape = tuple(int(s) for s in model.body_.input_shape)
    return shape if len(shape) == 3 else shape + (1,)


def _native_predictor(model, path: Path, kind: str) -> Predictor:
    from ..models._sk import softmax

    config = dict(getattr(model, "meta_", {}) or {})
    classes = getattr(model, "classes_", None)
    if classes is None:
        classes = np.arange(model.net.n_classes)

    def scores(x):
        return softmax(model.decision_function(x))

    return Predictor(kind, path, _model_input_shape(model, config), np.asarray(classes),
                     config.get("class_names"), config, _labels=model.predict, _scores=scores)


def _onnx_predictor(path: Path) -> Predictor:
    from ..models._sk import softmax

    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("running .onnx files needs onnxruntime: pip install onnxruntime") from None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise DataError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:200]})") \
            from None
    inp = sess.get_inputs()[0]
    shape = inp.shape
    if len(shape) != 4 or not all(isinstance(s, int) for s in shape[1:]) or \
            "uint8" not in inp.type:
        raise DataError(f"{path}: not an lbcnn ONNX graph (input {inp.name} {inp.type} {shape}; "
                        f"lbcnn graphs take uint8 NHWC images)")
    input_shape = check_input_shape(shape[1:], f"{path}: graph input")
    out_shape = sess.get_outputs()[0].shape
    k = out_shape[-1] if out_shape else None
    if not isinstance(k, int) or not 1 <= k <= 100_000:
        raise DataError(f"{path}: not an lbcnn ONNX graph (output shape {out_shape})")
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    recorded = validate_onnx_metadata(meta, k, str(path))
    classes = np.asarray(recorded.pop("classes", range(k)))
    names = recorded.pop("class_names", None)
    config = {"class_names": names, **recorded}
    if not config.get("dataset"):
        config.pop("dataset", None)
    name = inp.name

    def scores(x):
        outs = [sess.run(None, {name: x[i:i + 1024]})[0] for i in range(0, len(x), 1024)]
        return softmax(np.concatenate(outs) if outs else np.zeros((0, k), np.float32))

    return Predictor("onnx", path, input_shape, classes, names, config, _scores=scores)


def read_tflite_file(path) -> bytes:
    """A ``.tflite`` file's bytes: a regular file (a folder's ``model.tflite`` may be a FIFO
    or a device) of at most ``MAX_TFLITE_BYTES``."""
    from .sniff import require_regular_file

    path = Path(path)
    require_regular_file(path, "model")
    size = path.stat().st_size
    if size > MAX_TFLITE_BYTES:
        raise DataError(f"{path}: {size:,} bytes; lbcnn reads .tflite files of at most "
                        f"{MAX_TFLITE_BYTES:,} bytes")
    return path.read_bytes()


def _tflite_predictor(path: Path, interpreter: str) -> Predictor:
    from ..deploy.tflite_builder import METADATA_NAME, read_metadata
    from ..deploy.tflite_runtime import Runner
    from ..metadata import validate_tflite_metadata
    from ..models._sk import softmax

    data = read_tflite_file(path)
    runner = Runner(data, interpreter)   # validates the flatbuffer before the C++ sees it
    if len(runner.input_shape) != 4 or runner.input_shape[0] != 1:
        raise DataError(f"{path}: not an lbcnn TFLite graph (input shape {runner.input_shape}; "
                        f"lbcnn graphs take one (1, H, W, C) image)")
    input_shape = check_input_shape(tuple(int(v) for v in runner.input_shape[1:]),
                                     f"{path}: graph input")
    k = runner.n_outputs
    config = validate_tflite_metadata(read_metadata(data).get(METADATA_NAME), k,
                                      f"{path}: metadata {METADATA_NAME}")
    classes = np.asarray(config.get("classes") or np.arange(k))
    names = config.get("class_names")

    def labels(x):
        return classes[runner.run(x).argmax(1)]

    def scores(x):
        logits = (runner.run(x) - runner.output_zero_point) * runner.output_scale
        return softmax(logits.astype(np.float64))

    return Predictor("tflite", path, input_shape, classes, names, config,
                     _labels=labels, _scores=scores)
