"""Integer plan of a lowbit model (``models.lowbit``), its NumPy runner and its C layout.

The plan holds the frozen integers (``models.lowbit_int``) and what the generated C stores
of them (``c_arrays``): per conv layer the kernels' level indices as one bit stream (the
model file's layout, ``bits.pack_signed``; int8 at 8 bits), the per-channel shifts
(uint8) and biases (int16); per path the head-input multiplier (int16) and shift; per
dense layer the level indices in 32-weight lane groups (``bits.pack_lanes``, 2..7 bits;
int8 at 8), and the per-output multipliers (int16), shifts (uint8) and biases (int16, the
output layer's int32 or int64). An array whose values are all equal is a constant in the
code instead. ``weight_bytes`` sums exactly those arrays: what ``lbcnn info`` reports
as flashed and ``tests/test_lowbit_deploy.py`` reads back from the compiled object.

The NumPy runner is an implementation of the pipeline of ``models.lowbit_int`` of its
own (shifted-slice convs in int64, a reshape max pool, int64 dense sums).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..binary.quantizers import integer_weight_map
from ..errors import ConfigError
from .bits import lane_words, pack_lanes, pack_signed, packed_nbytes
from .registry import register_compiler, register_runner

MAP_MAX = 32767


@dataclass
class LowBitPlan:
    arch: dict
    input_shape: tuple[int, int, int]
    conv: list[dict]
    head_in: dict
    dense: list[dict]
    logit_scale: float
    classes: np.ndarray
    bounds: dict = field(default_factory=dict)
    family = "lowbit"
    act_dtype = "int32"

    @property
    def n_features(self) -> int:
        from ..models.lowbit import features_per_path
        return self.arch["channels"] * features_per_path(self.arch)

    @property
    def n_classes(self) -> int:
        return int(len(self.dense[-1]["bias"]))

    def weight_bytes(self) -> dict:
        """Bytes of the C's weight arrays, by part (``c_arrays``)."""
        parts = {"conv": 0, "conv_consts": 0, "head_in": 0, "dense": 0, "dense_consts": 0}
        for name, (ctype, values) in c_arrays(self).items():
            nbytes = np.dtype(_NP[ctype]).itemsize * int(np.asarray(values).size)
            part = ("conv" if name.endswith("_K") else "conv_consts") if name.startswith("CONV") \
                else "head_in" if name.startswith("HEADIN") \
                else "dense" if name.endswith("_W") else "dense_consts"
            parts[part] += nbytes
        parts["total"] = sum(parts.values())
        return parts

    def describe(self) -> dict:
        return {"family": "lowbit", "input": {"shape": list(self.input_shape), "dtype": "uint8"},
                "resize": self.arch["size"], "arch": self.arch, "features": self.n_features,
                "classes": self.n_classes, "logit_scale": self.logit_scale,
                "bounds": self.bounds, "weight_bytes": self.weight_bytes()}


_NP = {"uint8_t": np.uint8, "int8_t": np.int8, "int16_t": np.int16, "int32_t": np.int32,
       "int64_t": np.int64, "uint32_t": np.uint32}


def _levels(w: np.ndarray, mode: str) -> np.ndarray:
    a, b = integer_weight_map(mode)
    return (np.asarray(w, np.int64) - b) // a


def _const_or_array(name: str, values, ctype: str, out: dict) -> None:
    v = np.asarray(values).ravel()
    if v.size and not (v == v[0]).all():
        out[name] = (ctype, v)


def c_arrays(plan: LowBitPlan) -> dict[str, tuple[str, np.ndarray]]:
    """{C name: (C type, values)} of every weight array the generated C holds, in order."""
    a, out = plan.arch, {}
    for layer, c in enumerate(plan.conv):
        bits = a["conv_bits"][layer]
        lv = _levels(c["w"], a["conv_modes"][layer])
        out[f"CONV{layer}_K"] = (("uint8_t", pack_signed(lv, bits)) if bits < 8
                                 else ("int8_t", lv.astype(np.int8).ravel()))
        _const_or_array(f"CONV{layer}_SH", c["shift"], "uint8_t", out)
        _const_or_array(f"CONV{layer}_B", c["bias"], "int16_t", out)
    _const_or_array("HEADIN_M", plan.head_in["mult"], "int16_t", out)
    _const_or_array("HEADIN_SH", plan.head_in["shift"], "uint8_t", out)
    n = len(plan.dense)
    for i, d in enumerate(plan.dense):
        bits = a["head_bits"][i]
        lv = _levels(d["w"], a["head_mode"])
        out[f"DENSE{i}_W"] = (("uint32_t", pack_lanes(lv, bits)) if bits < 8
                              else ("int8_t", lv.astype(np.int8).ravel()))
        _const_or_array(f"DENSE{i}_M", d["mult"], "int16_t", out)
        _const_or_array(f"DENSE{i}_SH", d["shift"], "uint8_t", out)
        if i < n - 1:
            btype = "int16_t"
        else:
            btype = "int32_t" if np.abs(d["bias"]).max(initial=0) < 2**31 - 1 else "int64_t"
        _const_or_array(f"DENSE{i}_B", d["bias"], btype, out)
    return out


def dense_weight_bytes(count: int, bits: int) -> int:
    """Bytes of a dense layer's C weights (lane groups below 8 bits)."""
    return 4 * lane_words(count, bits) if bits < 8 else int(count)


def conv_weight_bytes(count: int, bits: int) -> int:
    return packed_nbytes(count, bits) if bits < 8 else int(count)


def compile_lowbit(model) -> LowBitPlan:
    """A fitted ``LowBitCNN`` (its ``frozen_`` integers) -> :class:`LowBitPlan`."""
    fz = getattr(model, "frozen_", None)
    if fz is None:
        raise ConfigError("the lowbit model is not fitted (no frozen integers)")
    a = fz["arch"]
    dims = [len(d["bias"]) for d in fz["dense"]]
    qmax = (1 << a["act_bits"]) - 1
    bounds = {"conv_acc": [int(np.abs(c["w"]).sum((1, 2, 3)).max()) * (255 if i == 0 else MAP_MAX)
                           for i, c in enumerate(fz["conv"])],
              "dense_acc": [int(d["w"].shape[1] * qmax * max(int(np.abs(d["w"]).max()),
                                                            (1 << a["head_bits"][i]) - 1))
                            for i, d in enumerate(fz["dense"])]}
    if max(bounds["conv_acc"] + bounds["dense_acc"]) >= 2**31 - (1 << 29):
        raise ConfigError("an integer sum of this model could overflow int32")
    classes = np.arange(dims[-1])
    return LowBitPlan(dict(a), tuple(int(v) for v in fz["input_shape"]), fz["conv"],
                      fz["head_in"], fz["dense"], float(fz["logit_scale"]), classes, bounds)


# -- NumPy execution -------------------------------------------------------------------------
def _rshift(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.int64)
    return (x + ((np.int64(1) << e) >> 1)) >> e


def _conv_valid(src: np.ndarray, w: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """acc[n, m] = sum over the path's planes and taps of w[m, c, dy, dx] * src[n, plane, ..]
    with ``planes[m, c]`` the source plane of path m's input c."""
    n, _, h, wd = src.shape
    m, cin = w.shape[:2]
    out = np.zeros((n, m, h - 2, wd - 2), np.int64)
    for c in range(cin):
        s = src[:, planes[:, c]]
        for dy in range(3):
            for dx in range(3):
                out += w[None, :, c, dy, dx, None, None] * s[:, :, dy:dy + h - 2, dx:dx + wd - 2]
    return out


def run_lowbit_ops(plan: LowBitPlan, x: np.ndarray) -> np.ndarray:
    """uint8 NHWC images -> (n, features) int64 head input."""
    from ..data.resize import resize_images

    a = plan.arch
    m, cin = a["channels"], plan.input_shape[2]
    A = resize_images(np.asarray(x, np.uint8), a["size"]).astype(np.int64).transpose(0, 3, 1, 2)
    layer = 0
    for op in a["path"]:
        if op == "p":
            n, ch, h, w = A.shape
            o = h // 2
            A = A[:, :, :2 * o, :2 * o].reshape(n, ch, o, 2, o, 2).max((3, 5))
            continue
        c = plan.conv[layer]
        if layer == 0 and a["first"] == "full":
            planes = np.tile(np.arange(cin), (m, 1))
        elif layer == 0:
            planes = (np.arange(m) // (m // cin))[:, None]
        else:
            planes = np.arange(m)[:, None]
        acc = _conv_valid(A, np.asarray(c["w"], np.int64), planes)
        A = np.clip(_rshift(acc, c["shift"][None, :, None, None]) + c["bias"][None, :, None, None],
                    0, MAP_MAX)
        layer += 1
    f = A.reshape(len(A), m, -1)
    q = _rshift(f * plan.head_in["mult"][None, :, None], plan.head_in["shift"][None, :, None])
    return np.clip(q, 0, (1 << a["act_bits"]) - 1).reshape(len(A), -1)


def lowbit_scores(plan: LowBitPlan, feats: np.ndarray) -> np.ndarray:
    q = np.asarray(feats, np.int64)
    qmax = (1 << plan.arch["act_bits"]) - 1
    for i, d in enumerate(plan.dense):
        acc = q @ np.asarray(d["w"], np.int64).T
        v = _rshift(acc * d["mult"][None, :], d["shift"][None, :]) + d["bias"][None, :]
        q = v if i == len(plan.dense) - 1 else np.clip(v, 0, qmax)
    return q


def _is_lowbit(model) -> bool:
    from ..models import is_lowbit
    return is_lowbit(model)


register_compiler("lowbit", _is_lowbit, lambda model, head=None, bits=8: compile_lowbit(model))
register_runner("lowbit", run_lowbit_ops, lowbit_scores)

__all__ = ["LowBitPlan", "c_arrays", "compile_lowbit", "conv_weight_bytes", "dense_weight_bytes",
           "lowbit_scores", "run_lowbit_ops"]
