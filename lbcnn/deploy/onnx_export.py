"""ONNX export of any family: the public entry over the per-family builders that
``onnx_lbcnn``, ``onnx_cbcnn`` and ``onnx_lowbit`` register in ``onnx_common.ONNX_BUILDERS``.

Every graph takes ``images``, uint8 NHWC raw pixels, and returns ``logits`` (N, classes):
float32, or a lowbit model's exact integer logits in float64; the metadata records
classes, class names and the dataset.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .onnx_common import ONNX_BUILDERS


def build_any(model, input_channels=None):
    """The ONNX model of any exportable family (LB-CNN, CBCNN, lowbit)."""
    build = ONNX_BUILDERS.for_instance(model)
    if build is None:
        raise ConfigError(f"ONNX export supports the lbcnn, cbcnn and lowbit families, "
                          f"not {type(model).__name__}")
    return build(model, input_channels)


def export_onnx(model, path, input_channels=None) -> Path:
    """Write ``model`` (LB-CNN, CBCNN or lowbit) as ONNX; ``input_channels`` only matters for a
    CBCNN with ``y_channel`` preprocessing (3 = RGB input, the default; 1 = gray)."""
    path = Path(path)
    om = build_any(model, input_channels)
    from ..outputs import atomic_write_bytes
    return atomic_write_bytes(path, om.SerializeToString())
