"""The public entry of the C99 export, for every family: ``export_c(model_or_plan,
out_dir)`` compiles the model to its integer plan and hands it to the generator the
plan's family registered in ``c_common.EXPORTERS`` (``c_lbcnn``, ``c_cbcnn``,
``c_hybrid``, ``c_lowbit``).

Every project holds ``model.h`` / ``model.c`` (``int lbcnn_predict(const uint8_t
*image)``, ``lbcnn_predict_logits``), ``main.c``, test vectors and a self test when
images are given, a Cortex-M linker script and a README with build lines and sizes.
No malloc, no libm, no float, no libc.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .c_common import c_template, exporter_for


def export_c(model_or_plan, out_dir, bits: int = 8, measure: bool = True,
             test_images=None, class_names=None, layout: str = "c", record=None) -> dict:
    """Write the C project for any family (LB-CNN, CBCNN, Hybrid, lowbit) to ``out_dir``.

    ``test_images`` (uint8, a handful, in the model's input format) adds
    ``test_vectors.[ch]`` with the classes the NumPy integer engine predicts for them,
    and ``selftest.c``; ``class_names`` go into ``LBCNN_CLASS_NAMES`` ("0".."K-1" when
    absent). ``layout="arduino"``: an Arduino library (``c_project``). ``model.json``
    records the sources' SHA-256 (checked before ``lbcnn evaluate`` compiles them) and
    ``record`` (the model file's provenance: dataset, class names, ...). The folder appears
    complete or not at all; files already in it that the export does not write are kept.
    """
    from ..engine.plan import IntegerPlan, compile_plan

    plan = model_or_plan if exporter_for(model_or_plan) is not None \
        else compile_plan(model_or_plan, bits=bits)
    exporter = exporter_for(plan)
    if exporter is None:
        raise ConfigError(f"no C generator for a {type(plan).__name__}")
    vectors = None
    if test_images is not None and len(test_images):
        from ..engine.numpy_engine import NumpyEngine
        x = np.asarray(test_images, dtype=np.uint8)
        if x.ndim == 3 and len(plan.input_shape) == 3:
            x = x[..., None]
        if tuple(x.shape[1:]) != tuple(plan.input_shape):
            raise ConfigError(f"test images have shape {tuple(x.shape[1:])} but the model takes "
                              f"{tuple(plan.input_shape)}")
        eng = NumpyEngine(plan)
        # what lbcnn_predict returns: the label for LB-CNN, the class index otherwise
        vectors = (x, eng.predict(x) if isinstance(plan, IntegerPlan) else
                   eng.predict_index(x))
    if class_names is None and record:
        class_names = record.get("class_names")
    return exporter(plan, out_dir, measure=measure, test_vectors=vectors,
                    class_names=class_names, layout=layout, record=record)


def bench_source() -> str:
    """A timing harness: argv[1] = file of raw images, argv[2] = repeats. Prints JSON."""
    return c_template("bench_main.c")
