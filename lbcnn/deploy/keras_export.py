"""Export an LB-CNN to a Keras 3 ``.h5`` file in the paper's layer layout.

Input (H, W, C) float32, the pixels already scaled: ``x_uint8 * input_scale``
(``model.body_.input_scale``, stored in the file as the Input layer's name
suffix is not portable, so it is also written to the HDF5 root attribute
``lbcnn_input_scale``). Then per macro-layer::

    DepthwiseConv2D(3, padding='same', depth_multiplier=nf, use_bias=False)
    [Activation('relu'), DepthwiseConv2D(3, padding='same', depth_multiplier=1,
                                         use_bias=False)] * (nl - 1)
    MaxPooling2D(4, strides=2, padding='same')

then ``Flatten`` and ``Dense(classes, activation='softmax')``. Kernels are the
exact +-1 values (as float32, which is what Keras stores). A fixed-point head
is exported dequantized.
"""
from __future__ import annotations

import json

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .onnx_common import class_names


def import_keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception as exc:  # ImportError, or a missing backend
        raise ConfigError(f"Keras export needs keras 3 with the torch backend "
                          f"(pip install 'lbcnn[keras]'): {exc}") from None
    return keras


def build_keras_model(model):
    keras = import_keras()
    L = keras.layers
    body = model.body_
    inp = keras.Input(shape=tuple(body.input_shape), dtype="float32", name="input")
    h = inp
    weights = []
    for i, k in enumerate(body.kernels):
        conv = L.DepthwiseConv2D(3, padding="same", depth_multiplier=int(k["conv"].shape[3]),
                                 use_bias=False, name=f"binary_conv{i}")
        h = conv(h)
        weights.append((conv, [k["conv"]]))
        for j, e in enumerate(k["extras"]):
            h = L.Activation("relu", name=f"relu{i}_{j}")(h)
            extra = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1, use_bias=False,
                                      name=f"binary_conv{i}_{j}")
            h = extra(h)
            weights.append((extra, [e]))
        h = L.MaxPooling2D(4, strides=2, padding="same", name=f"pool{i}")(h)
    h = L.Flatten(name="flatten")(h)
    dense = L.Dense(len(model.classes_), activation="softmax", name="head")
    out = dense(h)
    weights.append((dense, [model.coef_, model.intercept_]))
    km = keras.Model(inp, out, name="lbcnn")
    for layer, ws in weights:
        layer.set_weights([np.asarray(w, dtype=np.float32) for w in ws])
    return km


def export_h5(model, path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"Keras export writes .h5 files; got {path.name}")
    if not hasattr(model, "body_"):
        raise ConfigError(f"Keras .h5 export is for LB-CNN models, not a "
                          f"{type(model).__name__}; use ONNX or C")
    km = build_keras_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.h5")
    import logging
    import warnings
    logging.getLogger("absl").setLevel(logging.ERROR)  # "HDF5 is legacy" notice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras 3 calls .h5 "legacy"; it is the paper's format
        km.save(tmp)
    import h5py
    with h5py.File(tmp, "a") as f:
        f.attrs["lbcnn_input_scale"] = float(model.body_.input_scale)
        f.attrs["lbcnn_classes"] = np.asarray(model.classes_, dtype=np.int64)
        meta = getattr(model, "meta_", {}) or {}
        f.attrs["lbcnn_class_names"] = json.dumps(class_names(model))
        if meta.get("dataset"):
            f.attrs["lbcnn_dataset"] = json.dumps(meta["dataset"])
        from .onnx_common import provenance_json
        f.attrs["lbcnn_provenance"] = provenance_json(model)
    os.replace(tmp, path)
    return path
