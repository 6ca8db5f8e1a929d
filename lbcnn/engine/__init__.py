"""Integer-only inference: compile a model to a plan, run it in NumPy or C.

Each family's plan module registers its compiler and runner (``registry``);
importing the package imports them all.
"""
from . import cbcnn_plan as _cbcnn_plan  # noqa: F401  (registers the CBCNN family)
from . import hybrid_plan as _hybrid_plan  # noqa: F401  (registers the hybrid family)
from . import lowbit_plan as _lowbit_plan  # noqa: F401  (registers the lowbit family)
from .numpy_engine import NumpyEngine, agreement, xnor_popcount_conv2d, xnor_popcount_dense
from .plan import IntegerPlan, compile_plan, dequantized_model, pack_signs_u64, quantize_head

__all__ = ["IntegerPlan", "NumpyEngine", "agreement", "compile_plan", "dequantized_model",
           "pack_signs_u64", "quantize_head", "xnor_popcount_conv2d", "xnor_popcount_dense"]
