"""Integer-only inference: compile a model to a plan, run it in NumPy or C."""
from .numpy_engine import NumpyEngine, agreement, xnor_popcount_conv2d, xnor_popcount_dense
from .plan import IntegerPlan, compile_plan, dequantized_model, pack_signs_u64, quantize_head

__all__ = ["IntegerPlan", "NumpyEngine", "agreement", "compile_plan", "dequantized_model",
           "pack_signs_u64", "quantize_head", "xnor_popcount_conv2d", "xnor_popcount_dense"]
