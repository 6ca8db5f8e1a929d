"""Shared pieces of the TFLite exporters and their registry.

Each family module (``tflite_lbcnn``, ``tflite_cbcnn``, ``tflite_hybrid``; ``tflite_lowbit``
only to refuse, naming the layer) registers
``{PlanClass: build(plan, options) -> TfliteGraph}`` with :func:`register`; nothing
here imports a family module (the registry imports its providers by name on the first
lookup), so no family imports another. :func:`lbcnn.deploy.tflite_export.export_tflite`
is the public entry.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..metadata import TFLITE_FORMAT
from ..registry import Registry

# plan class -> build(plan, options: TfliteOptions) -> TfliteGraph
TFLITE_BUILDERS = Registry("TFLite exporter",
                           providers=("lbcnn.deploy.tflite_lbcnn", "lbcnn.deploy.tflite_cbcnn",
                                      "lbcnn.deploy.tflite_hybrid", "lbcnn.deploy.tflite_lowbit"))

FORMAT = TFLITE_FORMAT
FORMAT_VERSION = 1
# what `lbcnn evaluate` needs to find the data and its test split again, from any working
# directory (the C export's model.json keys)
PROVENANCE_KEYS = ("dataset", "dataset_path", "data_path", "class_names", "preprocessing",
                   "label_values", "split", "seed", "val_fraction", "train_size", "input_color",
                   "test_accuracy", "test_size")


def register(plan_cls: type, build: Callable) -> None:
    TFLITE_BUILDERS.register(plan_cls, build)


def builder_for(plan) -> Callable | None:
    return TFLITE_BUILDERS.for_instance(plan)


@dataclass
class TfliteOptions:
    """``weights``: ``auto`` tries int4 for LB-CNN heads of at most 4 bits (the issue's
    rule), ``int4`` also for a CBCNN's +-2 binary-layer weights, ``int8`` never; int4 is kept
    only when TensorFlow Lite Micro loads and runs it, else int8 with its message. (TFLite
    Micro unpacks int4 weights into its arena: int4 trades arena for file size.)
    ``activations`` (LB-CNN): ``int16``
    (exact) or ``int8`` (lossy, power-of-two rescales chosen on ``calibration``, uint8
    training images, else on the worst-case bounds)."""
    weights: str = "auto"

    def __post_init__(self):
        from ..errors import ConfigError
        if self.weights not in ("auto", "int8", "int4"):
            raise ConfigError(f"weights must be auto, int8 or int4, got {self.weights!r}")
    activations: str = "int16"
    calibration: object = None


@dataclass
class TfliteGraph:
    """A built graph (serialised by :meth:`finish`, with the metadata), what is exact,
    and notes for the user."""
    builder: object                 # tflite_builder.ModelBuilder
    inputs: list[int]
    outputs: list[int]
    exactness: str
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def ops(self) -> list[str]:
        """The builtin ops, in first-use order (the op resolver's list)."""
        return list(self.builder.op_names)

    def finish(self, metadata: bytes | None = None) -> bytes:
        from .tflite_builder import METADATA_NAME
        if metadata is not None and not self.builder.metadata:
            self.builder.add_metadata(METADATA_NAME, metadata)
        return self.builder.finish(self.inputs, self.outputs)


def metadata_json(plan, family: str, extra: dict, meta: dict | None) -> bytes:
    """The ``lbcnn`` metadata entry: format, family, classes, class names, provenance,
    output quantization. Compact JSON (it is stored in the flatbuffer)."""
    record = {"format": FORMAT, "version": FORMAT_VERSION, "family": family,
              "classes": [int(c) for c in np.asarray(plan.classes)]}
    meta = meta or {}
    for k in PROVENANCE_KEYS:
        if meta.get(k) is not None:
            record[k] = meta[k]
    names = record.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(record["classes"])):
        record.pop("class_names")
    record.update(extra)
    return json.dumps(record, separators=(",", ":"), sort_keys=False).encode()


# -- the TFLite Micro bundle --------------------------------------------------------------
def resolver_lines(ops: list[str]) -> list[str]:
    """``MicroMutableOpResolver<N>`` registering exactly ``ops``."""
    lines = [f"static tflite::MicroMutableOpResolver<{len(ops)}> resolver;"]
    lines += [f"resolver.{_add_name(op)}();" for op in ops]
    return lines


def _add_name(op: str) -> str:
    special = {"DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "CONV_2D": "AddConv2D",
               "MAX_POOL_2D": "AddMaxPool2D", "FULLY_CONNECTED": "AddFullyConnected"}
    if op in special:
        return special[op]
    return "Add" + "".join(part.capitalize() for part in op.split("_"))


def model_data_cc(data: bytes, symbol: str = "g_lbcnn_model") -> tuple[str, str]:
    """``model_data.cc`` (the flatbuffer as an ``alignas(16)`` array) and ``model_data.h``."""
    if not symbol.isidentifier():
        raise ConfigError(f"not a C identifier: {symbol!r}")
    rows = []
    for i in range(0, len(data), 16):
        rows.append("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + 16]) + ",")
    cc = (f"// Generated by lbcnn export --format tflite: the .tflite flatbuffer.\n"
          f"// alignas(16): every constant buffer inside is 16-byte aligned in the file.\n"
          f'#include "model_data.h"\n\n'
          f"alignas(16) const unsigned char {symbol}[] = {{\n" + "\n".join(rows) + "\n};\n"
          f"const unsigned int {symbol}_len = {len(data)};\n")
    h = (f"// Generated by lbcnn export --format tflite.\n#ifndef LBCNN_MODEL_DATA_H\n"
         f"#define LBCNN_MODEL_DATA_H\n\nextern const unsigned char {symbol}[];\n"
         f"extern const unsigned int {symbol}_len;\n\n#endif\n")
    return cc, h
