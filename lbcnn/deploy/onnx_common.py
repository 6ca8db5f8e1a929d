"""Shared pieces of the ONNX exporters and their registry.

Each family module (``onnx_lbcnn``, ``onnx_cbcnn``, ``onnx_lowbit``) imports this module and registers
``{ModelClass: build(model, input_channels=None) -> onnx.ModelProto}``; nothing here
imports a family module (the registry imports its providers by name on the first
lookup), so neither family module imports the other. ``onnx_export`` is the public entry.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry

OPSET = 17


def import_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx package (pip install 'lbcnn[export]'): "
                          f"{exc}") from None
    return onnx


# model class -> build(model, input_channels=None) -> onnx.ModelProto
ONNX_BUILDERS = Registry("ONNX exporter",
                         providers=("lbcnn.deploy.onnx_lbcnn", "lbcnn.deploy.onnx_cbcnn",
                                    "lbcnn.deploy.onnx_lowbit"))


def register_onnx_builder(model_cls: type, build) -> None:
    ONNX_BUILDERS.register(model_cls, build)


def class_names(model) -> list[str]:
    """The model file's class names, else the class ids as strings."""
    names = (getattr(model, "meta_", {}) or {}).get("class_names")
    classes = getattr(model, "classes_", None)
    k = len(classes) if classes is not None else len(names or [])
    if isinstance(names, list) and len(names) == k:
        return [str(n) for n in names]
    return [str(int(c)) for c in classes] if classes is not None else []


# what an exported file carries of its model file's data record, so ``lbcnn evaluate``
# rebuilds the same test split from an .onnx or .h5 with no data options
PROVENANCE_KEYS = ("dataset_path", "data_path", "preprocessing", "split", "label_values",
                   "test_accuracy", "test_size", "input_color")


def provenance_json(model) -> str:
    import json
    meta = getattr(model, "meta_", {}) or {}
    return json.dumps({k: meta[k] for k in PROVENANCE_KEYS if meta.get(k) is not None})
