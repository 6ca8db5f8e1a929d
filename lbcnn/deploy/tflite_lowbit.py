"""TFLite export of a lowbit plan (:class:`~lbcnn.engine.lowbit_plan.LowBitPlan`): refused,
naming the first layer whose integers no TFLite op reproduces.

What maps and what does not (checked against TFLite's reference arithmetic,
``engine.requant``):

* the channel-path convs map exactly: a 16x8 ``DEPTHWISE_CONV_2D`` (int16 maps, int64
  accumulator) at per-channel weight scale ``2^-sh`` rescales by ``floor(acc / 2^sh + 1/2)``,
  the engine's ``rshift``, and the bias ``B`` added after the shift equals ``B * 2^sh`` added
  before it; fused ``RELU`` at int16 is the clamp to [0, 32767];
* the **input resize** (``size`` != the image's side) is the package's exact integer area
  resize, a rounded division by ``H * W`` with position-dependent overlap weights: no TFLite
  op computes it, and as a ``FULLY_CONNECTED`` it would need (H W) x size^2 weights of up to
  ``size^2`` (more than int8 holds) and a non-power-of-two rescale that TFLite's 16-bit
  multiplier rounds differently;
* every **dense layer** adds its bias *after* the fixed-point rescale
  (``rshift(sum q W * M, E) + B``), while TFLite's ``FULLY_CONNECTED`` adds it *before*
  (``(acc + b) * M / 2^E``): equal only where ``M`` divides ``B * 2^E``; and the output layer's
  logits are int64, past TFLite's int16 outputs.

So a ``.tflite`` would not be the deployed model; the C and ONNX exports are exact.
"""
from __future__ import annotations

from ..engine.lowbit_plan import LowBitPlan
from ..errors import ConfigError
from .tflite_common import TfliteGraph, TfliteOptions, register

_OTHER_FORMATS = "export it with --format c or onnx (both compute its integers exactly)"


def unmapped_layer(plan: LowBitPlan) -> str:
    """The first layer of ``plan`` that no TFLite op reproduces exactly, and why."""
    h, w = plan.input_shape[:2]
    size = int(plan.arch["size"])
    if (h, w) != (size, size):
        return (f"layer 'resize' ({h}x{w} -> {size}x{size}, exact integer area means): no "
                f"TFLite op computes it")
    return ("layer 'dense0' adds its bias after the fixed-point rescale "
            "(rshift(sum q*W*M, E) + B), where TFLite's FULLY_CONNECTED adds it before")


def build_lowbit(plan: LowBitPlan, options: TfliteOptions | None = None) -> TfliteGraph:
    raise ConfigError(f"TFLite export does not map a lowbit model exactly: "
                      f"{unmapped_layer(plan)}; {_OTHER_FORMATS}")


register(LowBitPlan, build_lowbit)

__all__ = ["build_lowbit", "unmapped_layer"]
