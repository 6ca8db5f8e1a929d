"""The public entry of the TFLite export, for every family: ``export_tflite(model, out_dir)``
compiles the model to its integer plan, hands it to the builder its family registered in
``tflite_common.TFLITE_BUILDERS`` and writes a TensorFlow Lite Micro bundle:

* ``model.tflite`` -- the fully-integer flatbuffer, class names and provenance in its
  ``lbcnn`` metadata entry;
* ``model_data.cc`` / ``model_data.h`` -- the same bytes as an ``alignas(16)`` C array;
* ``README.md`` -- the arena TFLite Micro reports, the op resolver with exactly the ops
  used, and what is exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .tflite_common import (TfliteOptions, builder_for, metadata_json, model_data_cc,
                            resolver_lines)


def _plan_of(model_or_plan, bits: int):
    if builder_for(model_or_plan) is not None:
        return model_or_plan
    from ..engine.plan import compile_plan
    return compile_plan(model_or_plan, bits=bits)


def build_tflite(model_or_plan, bits: int = 8, meta: dict | None = None,
                 options: TfliteOptions | None = None):
    """(flatbuffer bytes, :class:`TfliteGraph`, plan) of any family with a TFLite builder."""
    plan = _plan_of(model_or_plan, bits)
    build = builder_for(plan)
    if build is None:
        raise ConfigError(f"TFLite export has no builder for a {type(plan).__name__}")
    graph = build(plan, options or TfliteOptions())
    if meta is None:
        meta = dict(getattr(model_or_plan, "meta_", {}) or {})
    family = getattr(plan, "family", "lbcnn")
    extra = {"exactness": graph.exactness, **graph.details.get("metadata", {})}
    data = graph.finish(metadata_json(plan, family, extra, meta))
    return data, graph, plan


def export_tflite(model_or_plan, out_dir, bits: int = 8, meta: dict | None = None,
                  options: TfliteOptions | None = None, measure: bool = True) -> dict:
    """Write the bundle to ``out_dir`` (created; written staged, so a failure leaves it as
    it was); returns a summary (sizes, ops, arena)."""
    from ..outputs import staged_folder

    data, graph, plan = build_tflite(model_or_plan, bits, meta, options)
    out = Path(out_dir)
    arena = None
    if measure:
        from .tflite_runtime import Runner
        arena = Runner(data, "tflm").allocations()
    from .tflite_builder import describe
    d = describe(data)
    io = {k: {"dtype": d["tensors"][d[k + "s"][0]]["dtype"],
              "shape": d["tensors"][d[k + "s"][0]]["shape"]} for k in ("input", "output")}
    summary = {"out": str(out), "file": str(out / "model.tflite"), "bytes": len(data),
               "input": io["input"], "output": io["output"],
               "c_weight_bytes": int(plan.weight_bytes()["total"]), "ops": graph.ops,
               "resolver": resolver_lines(graph.ops), "exactness": graph.exactness,
               "notes": graph.notes, "arena": arena,
               "details": {k: v for k, v in graph.details.items()
                           if k not in ("requant", "metadata")}}
    cc, hh = model_data_cc(data)
    with staged_folder(out) as stage:
        (stage / "model.tflite").write_bytes(data)
        (stage / "model_data.cc").write_text(cc, encoding="utf-8")
        (stage / "model_data.h").write_text(hh, encoding="utf-8")
        (stage / "README.md").write_text(_readme(summary, plan), encoding="utf-8")
    return summary


def _readme(summary: dict, plan) -> str:
    arena = summary["arena"]
    inp, outp = summary["input"], summary["output"]
    if arena:
        arena_line = (f"- **TFLite Micro arena: {arena['total']:,} bytes** (activations "
                      f"{arena.get('head', 0):,} + persistent {arena.get('tail', 0):,}), as "
                      f"TFLite Micro's RecordingMicroAllocator reports it on the exporting "
                      f"(64-bit) host; the persistent part is smaller on a 32-bit MCU. "
                      f"`lbcnn info model.tflite` lists the allocations.")
    else:
        arena_line = "- arena not measured (`lbcnn info model.tflite` measures it)"
    lines = ["# LB-CNN for TensorFlow Lite Micro (generated)", "",
             f"- `model.tflite`: {summary['bytes']:,} bytes, fully integer; input "
             f"`{inp['dtype']}{inp['shape']}` = uint8 pixel - 128 (H, W, C order); output "
             f"`{outp['dtype']}{outp['shape']}` logits (argmax = class index, first maximum "
             f"wins)",
             f"- the same bytes as `alignas(16) const unsigned char g_lbcnn_model[]` in "
             f"`model_data.cc` / `model_data.h`",
             arena_line,
             f"- exact: {summary['exactness']}",
             *[f"- note: {n}" for n in summary["notes"]], "",
             "## Op resolver", "", "```cpp",
             '#include "tensorflow/lite/micro/micro_interpreter.h"',
             '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
             '#include "model_data.h"', "",
             *summary["resolver"], "",
             f"alignas(16) static uint8_t tensor_arena[{_arena_hint(arena)}];",
             "const tflite::Model *model = tflite::GetModel(g_lbcnn_model);",
             "tflite::MicroInterpreter interpreter(model, resolver, tensor_arena, "
             "sizeof tensor_arena);",
             "interpreter.AllocateTensors();",
             "// interpreter.input(0)->data.int8[i] = pixel[i] - 128; interpreter.Invoke();",
             f"// logits: interpreter.output(0)->data."
             f"{'i16' if outp['dtype'] == 'int16' else 'int8'}", "```", ""]
    return "\n".join(lines)


def _arena_hint(arena) -> str:
    if not arena:
        return "/* lbcnn info model.tflite */ 100000"
    return f"{int(np.ceil(arena['total'] / 1024)) * 1024}"
