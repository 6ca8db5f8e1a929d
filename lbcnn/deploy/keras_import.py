"""Read Keras-2-era LB-CNN ``.h5`` files directly with h5py.

Keras 3 refuses these files (e.g. ``DepthwiseConv2D`` configs carry a
``groups`` key), so the importer reads the ``model_config`` JSON attribute and
the ``model_weights`` group itself. Supported: a linear chain (Sequential, or
Functional/Model whose every layer feeds the next) of ::

    InputLayer (optional; or batch_input_shape on the first layer)
    [DepthwiseConv2D(3x3, stride 1, 'same', use_bias=False, multiplier nf)
     (Activation('relu') | ReLU, DepthwiseConv2D(..., multiplier 1))*(nl-1)
     MaxPooling2D(4, strides=2, 'same')] * 1..3
    Flatten, Dense(classes, 'softmax' | 'linear')

with 1 or 3 input channels and kernels of exactly +-1. Anything else raises
``DataError`` naming the layer.

**Input scale.** An .h5 file does not say how its pixels were scaled. The
imported model takes uint8 images like every lbcnn model and multiplies them
by ``input_scale`` (default 1/255, the usual ``x / 255.`` of the Keras
scripts; pass e.g. 1/242 for Olivetti's ``x / x.max()``). Files written by
``lbcnn export`` carry ``lbcnn_input_scale`` and it is used when no explicit
value is given.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..metadata import load_json, validate_h5_attrs
from ..validate import MAX_CLASSES, check_input_shape

_POOL = {"MaxPooling2D", "MaxPool2D"}
_SKIP = {"Dropout"}  # inference no-ops (kept explicit; other layers are errors)


def _decode(v):
    return v.decode() if isinstance(v, bytes) else v


def _pair(v, what):
    if isinstance(v, int):
        return (v, v)
    return tuple(int(t) for t in v)


def _layers_in_order(cfg: dict, path) -> list[dict]:
    cls = cfg.get("class_name")
    inner = cfg.get("config", {})
    layers = inner["layers"] if isinstance(inner, dict) and "layers" in inner else inner
    if cls not in ("Sequential", "Functional", "Model") or not isinstance(layers, list):
        raise DataError(f"{path}: unsupported Keras model class {cls!r} (need Sequential or "
                        f"a Functional chain)")
    if cls != "Sequential":
        prev = None
        for layer in layers:
            name = layer.get("name") or layer["config"].get("name")
            inbound = layer.get("inbound_nodes") or []
            srcs = []
            for node in inbound:
                if isinstance(node, dict):  # Keras 3 style node
                    args = node.get("args", [])
                    srcs += [a["config"]["keras_history"][0] for a in args if isinstance(a, dict)]
                else:
                    srcs += [n[0] for n in node]
            if prev is not None and srcs != [prev]:
                raise DataError(f"{path}: layer {name!r} is not fed by the previous layer "
                                f"{prev!r}; only a linear chain of layers is supported")
            prev = name
    return layers


def _weights(f, name: str, where: str, check=None) -> dict[str, np.ndarray]:
    """A layer's weights, each read only after its declared dtype and shape are checked:
    numbers, no more than the memory plan allows, and what ``check(key, shape)`` (the
    layer's own rule) accepts. A gzip-compressed dataset can declare gigabytes in a few
    kilobytes, and ``[()]`` would allocate them before the first byte is inflated."""
    import h5py

    from ..memory import require
    root = f["model_weights"] if "model_weights" in f else f
    if name not in root:
        return {}
    g = root[name]
    names = [_decode(n) for n in np.asarray(g.attrs.get("weight_names", [])).reshape(-1)]
    out = {}
    for wn in names:
        key = str(wn).split("/")[-1].split(":")[0]
        ds = g[wn]
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu" or ds.ndim > 4:
            raise DataError(f"{where}: weights {wn!r} are not a numeric array of at most 4 "
                            f"dimensions")
        if check is not None:
            try:
                check(key, tuple(int(n) for n in ds.shape))
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
        require(int(ds.size) * 8, f"{where}: weights {wn!r} {tuple(ds.shape)}",
                "the file declares arrays larger than this machine can hold")
        out[key] = np.asarray(ds[()])
    return out


def _provenance(attrs, path) -> dict:
    """The model file's data record the export carried (``lbcnn_provenance``), if any."""
    from ..metadata import validate_provenance
    if "lbcnn_provenance" not in attrs:
        return {}
    raw = attrs["lbcnn_provenance"]
    raw = raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw
    if not isinstance(raw, (bytes, str)):
        raise DataError(f"{path}: attribute lbcnn_provenance must be JSON text")
    return validate_provenance(raw, f"{path}: attribute lbcnn_provenance")


def _check_depthwise(key: str, shape: tuple) -> None:
    if key in ("depthwise_kernel", "kernel") and (len(shape) != 4 or shape[:2] != (3, 3)
                                                  or shape[2] > 4096 or shape[3] > 4096):
        raise DataError(f"depthwise kernel shape {shape} is not (3, 3, C, m)")
    if key == "bias" and (len(shape) != 1 or shape[0] > 1 << 24):
        raise DataError(f"depthwise bias shape {shape} is not (C,)")


def _dense_check(input_shape, blocks):
    """The Dense kernel must be (features of the conv body, classes)."""
    features = None
    if input_shape is not None and blocks:
        h, w, c = input_shape
        for b in blocks:
            c *= b["conv"].shape[3]
            h, w = (h + 1) // 2, (w + 1) // 2
        features = h * w * c

    def check(key: str, shape: tuple) -> None:
        if key == "kernel" and (len(shape) != 2 or shape[1] > MAX_CLASSES or
                                (features is not None and shape[0] != features)):
            raise DataError(f"Dense kernel shape {shape} is not ({features}, classes)")
        if key == "bias" and (len(shape) != 1 or shape[0] > MAX_CLASSES):
            raise DataError(f"Dense bias shape {shape} is not (classes,)")
    return check


def import_keras_h5(path, input_scale: float | None = None, classes=None):
    """Return an ``LBCNN`` (``body_``, ``coef_``, ``intercept_``, ``classes_``).

    Anything the checks below do not foresee in a damaged file still ends as
    one ``DataError`` line, and non-finite weights are refused.
    """
    try:
        model = _import_keras_h5(path, input_scale, classes)
    except DataError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OSError,
            RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise DataError(f"{path}: damaged or unsupported .h5 model ({type(exc).__name__}"
                        f"{': ' + detail if detail else ''})") from None
    from ..validate import check_finite_arrays
    check_finite_arrays({"dense/kernel": model.coef_, "dense/bias": model.intercept_}, str(path))
    return model


def _import_keras_h5(path, input_scale: float | None = None, classes=None):
    try:
        import h5py
    except ImportError as exc:
        raise DataError(f"reading .h5 files needs h5py (pip install 'lbcnn[export]'): {exc}") from None
    from ..models.lbcnn import LBCNN, LBCNNBody, check_filters

    from ..io.sniff import require_regular_file

    path = Path(path)
    if not path.exists():
        raise DataError(f"model file not found: {path}")
    require_regular_file(path, "model file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot read {path} as HDF5: {exc}") from None
    with f:
        raw = f.attrs.get("model_config")
        if raw is None:
            raise DataError(f"{path} has no model_config attribute; not a Keras .h5 model")
        raw = raw.item() if isinstance(raw, np.ndarray) and raw.shape == () else raw
        if not isinstance(raw, (bytes, str)):
            raise DataError(f"{path}: model_config must be JSON text, got {type(raw).__name__}")
        cfg = load_json(raw, f"{path}: model_config")
        if not isinstance(cfg, dict):
            raise DataError(f"{path}: model_config must be a JSON object")
        recorded = validate_h5_attrs(f.attrs, str(path))
        if input_scale is None and "input_scale" in recorded:
            input_scale = recorded["input_scale"]
        if classes is None and "classes" in recorded:
            classes = recorded["classes"]
        extra_meta = {key: recorded[key] for key in ("class_names", "dataset") if key in recorded}
        extra_meta.update(_provenance(f.attrs, path))
        layers = _layers_in_order(cfg, path)

        input_shape = None
        blocks: list[dict] = []   # {"conv": k, "extras": [...]}
        state = "start"           # start | conv | relu | pooled | flat | dense
        head = None
        for layer in layers:
            cls = layer.get("class_name")
            c = layer.get("config", {})
            name = c.get("name") or layer.get("name")
            where = f"{path}: layer {name!r} ({cls})"
            shape = c.get("batch_input_shape") or c.get("batch_shape")
            if shape is not None and input_shape is None:
                if len(shape) != 4 or any(s is None for s in shape[1:]):
                    raise DataError(f"{where}: input shape {shape} is not (None, H, W, C)")
                input_shape = check_input_shape(shape[1:], where)
            if cls == "InputLayer":
                continue
            if cls in _SKIP:
                continue
            if c.get("data_format", "channels_last") != "channels_last":
                raise DataError(f"{where}: only channels_last is supported")
            if cls == "DepthwiseConv2D":
                if state not in ("start", "pooled", "relu"):
                    raise DataError(f"{where}: a depthwise conv must follow the input, a pooling "
                                    f"layer or a ReLU (found it after {state})")
                checks = {"kernel_size": _pair(c.get("kernel_size", 3), "k") == (3, 3),
                          "strides": _pair(c.get("strides", 1), "s") == (1, 1),
                          "padding": c.get("padding") == "same",
                          "dilation_rate": _pair(c.get("dilation_rate", 1), "d") == (1, 1),
                          "activation": c.get("activation", "linear") in ("linear", None),
                          "groups": int(c.get("groups", 1)) == 1}
                bad = [k for k, ok in checks.items() if not ok]
                if bad:
                    raise DataError(f"{where}: unsupported settings {bad} (need 3x3, stride 1, "
                                    f"'same', no dilation, linear activation)")
                w = _weights(f, name, where, _check_depthwise)
                if "depthwise_kernel" not in w and "kernel" in w:  # Keras 3 names it 'kernel'
                    w["depthwise_kernel"] = w["kernel"]
                if "depthwise_kernel" not in w:
                    raise DataError(f"{where}: no depthwise_kernel weights in the file")
                if c.get("use_bias", False) and np.any(w.get("bias", 0) != 0):
                    raise DataError(f"{where}: has a non-zero bias; LB-CNN convs have none")
                k = w["depthwise_kernel"]
                if k.ndim != 4 or k.shape[:2] != (3, 3):
                    raise DataError(f"{where}: kernel shape {k.shape} is not (3, 3, C, m)")
                if not np.all(np.abs(k) == 1):
                    dev = float(np.max(np.abs(np.abs(k) - 1)))
                    raise DataError(f"{where}: kernel values are not exactly +-1 (max deviation "
                                    f"{dev:.3g}); not a binary LB-CNN layer")
                k = k.astype(np.int8)
                if state == "relu":
                    if k.shape[3] != 1:
                        raise DataError(f"{where}: an extra conv after ReLU must have "
                                        f"depth_multiplier 1, got {k.shape[3]}")
                    blocks[-1]["extras"].append(k)
                else:
                    blocks.append({"conv": k, "extras": []})
                state = "conv"
            elif cls in ("Activation", "ReLU"):
                act = c.get("activation", "relu") if cls == "Activation" else "relu"
                plain = cls == "Activation" or (not c.get("max_value") and not c.get("negative_slope")
                                                and not c.get("threshold"))
                if act != "relu" or not plain:
                    raise DataError(f"{where}: only a plain ReLU is supported, got {act!r}")
                if state != "conv":
                    raise DataError(f"{where}: a ReLU must follow a depthwise conv (and be "
                                    f"followed by a multiplier-1 depthwise conv)")
                state = "relu"
            elif cls in _POOL:
                if state != "conv":
                    raise DataError(f"{where}: max-pooling must follow a depthwise conv")
                if (_pair(c.get("pool_size", 2), "p") != (4, 4)
                        or _pair(c.get("strides") or c.get("pool_size", 2), "s") != (2, 2)
                        or c.get("padding") != "same"):
                    raise DataError(f"{where}: only MaxPooling2D(4, strides=2, padding='same') "
                                    f"is supported")
                state = "pooled"
            elif cls == "Flatten":
                if state != "pooled":
                    raise DataError(f"{where}: Flatten must follow a max-pooling layer")
                state = "flat"
            elif cls == "Dense":
                if state != "flat":
                    raise DataError(f"{where}: Dense must follow Flatten")
                if c.get("activation", "linear") not in ("softmax", "linear"):
                    raise DataError(f"{where}: Dense activation {c.get('activation')!r}; "
                                    f"softmax or linear supported")
                w = _weights(f, name, where, _dense_check(input_shape, blocks))
                if "kernel" not in w:
                    raise DataError(f"{where}: no kernel weights in the file")
                kern = w["kernel"].astype(np.float32)
                bias = w.get("bias", np.zeros(kern.shape[1], np.float32)).astype(np.float32)
                head = (kern, bias)
                state = "dense"
            else:
                raise DataError(f"{where}: layer type {cls!r} is not supported by the LB-CNN "
                                f"importer")
        if head is None:
            raise DataError(f"{path}: no Dense output layer found")
        if input_shape is None:
            raise DataError(f"{path}: no input shape in the model config")
        if not blocks:
            raise DataError(f"{path}: no depthwise conv layers")
    nls = {len(b["extras"]) + 1 for b in blocks}
    if len(nls) != 1:
        raise DataError(f"{path}: conv blocks have different numbers of ReLU+conv extras "
                        f"({sorted(nls)}); LB-CNN uses one nl for all layers")
    nl = nls.pop()
    chans = input_shape[2]
    for i, b in enumerate(blocks):
        if b["conv"].shape[2] != chans:
            raise DataError(f"{path}: conv block {i} expects {b['conv'].shape[2]} channels, "
                            f"gets {chans}")
        chans *= b["conv"].shape[3]
    filters = check_filters([b["conv"].shape[3] for b in blocks])
    scale = float(input_scale) if input_scale is not None else 1.0 / 255.0
    if not math.isfinite(scale) or scale <= 0:
        raise DataError(f"{path}: input scale {scale} is not a finite positive number")
    body = LBCNNBody(input_shape, blocks, nl, scale)
    kern, bias = head
    if kern.shape[0] != body.n_features:
        raise DataError(f"{path}: Dense layer has {kern.shape[0]} inputs but the conv body "
                        f"gives {body.n_features} features")
    model = LBCNN(filters=filters, nl=nl, input_scale=body.input_scale)
    model.body_ = body
    model.coef_ = np.ascontiguousarray(kern)
    model.intercept_ = bias
    model.classes_ = np.asarray(classes) if classes is not None else np.arange(kern.shape[1])
    if len(model.classes_) != kern.shape[1]:
        raise DataError(f"{path}: {len(model.classes_)} class labels for {kern.shape[1]} outputs")
    names = extra_meta.get("class_names")
    if names is not None and len(names) != kern.shape[1]:
        raise DataError(f"{path}: {len(names)} class names for {kern.shape[1]} outputs")
    model.head_meta_ = {"kind": "float32"}
    model.meta_ = {"source": str(path), "keras_version": None, **extra_meta}
    return model
