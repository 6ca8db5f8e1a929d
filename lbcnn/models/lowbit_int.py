"""The lowbit family's integer model: freezing a fake-quantized ``LowBitNet`` into integers,
and running those integers in torch (what the estimator predicts with).

The pipeline, per image (``docs/lowbit.md``; the NumPy engine and the C do the same):

1. resize the uint8 image to ``size`` x ``size`` (``data.resize``, exact integers);
2. per path ``m`` and conv layer: ``acc = sum W * A`` over the 3x3 window (int32; ``A``
   the image's pixels, or the path's int16 map), then
   ``A' = clamp(rshift(acc, sh[m]) + B[m], 0, 32767)``: batch norm folded into the integer
   bias ``B`` and the per-channel shift ``sh``, ReLU and int16 saturation in one clamp;
   ``p`` ops take the 2x2 max (floor size);
3. head input: ``q = clamp(rshift(A * M[m], E[m]), 0, 2^act_bits - 1)``, a fixed-point
   multiplier per path onto the learned activation step;
4. each hidden layer: ``acc = sum q W`` (int32), ``q' = clamp(rshift(acc * M, E) + B, 0,
   2^act_bits - 1)`` (the product in int64); the output layer:
   ``logit = rshift(acc * M, E) + B`` (int64), one unit worth ``logit_scale``.

``rshift(x, e) = (x + (2^e >> 1)) >> e``: round half up, an arithmetic shift. Integer
weights are ``W = a * i + b`` of the level index ``i`` (``quantizers.integer_weight_map``:
odd integers for the zero-free grid); a channel whose batch-norm scale is negative has
its weights negated, so every folded scale is positive.

Freezing chooses each conv channel's shift on calibration images (training images only):
the smallest ``sh >= 0`` that keeps ``|acc + bias|`` of those images within 2^14 after the
shift (a factor-2 margin below the int16 clamp). Everything else follows from the
trained parameters.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..binary.quantizers import integer_weight_map
from ..errors import ConfigError, DataError

MAP_MAX = 32767            # int16 maps: ReLU and saturation in one clamp
CALIBRATION_TARGET = 1 << 14
INT32_MAX = (1 << 31) - 1
HEAD_IN_MAX_SHIFT = 30     # f * M + 2^(E-1) stays in int32 (f, |M| <= 32767)
DENSE_MAX_SHIFT = 47       # acc * M in int64


def fixed_point(ratio, bits: int = 16, max_shift: int = 47) -> tuple[np.ndarray, np.ndarray]:
    """``(m, e)`` integers with ``m / 2^e`` ~ ``ratio``, ``|m| < 2^(bits-1)``, ``0 <= e <=
    max_shift``: the most mantissa bits that fit. A ratio too small for ``max_shift`` is 0
    (``m = 0``); one too large keeps ``e = 0`` and the largest mantissa (it saturates)."""
    r = np.asarray(ratio, dtype=np.float64)
    top = (1 << (bits - 1)) - 1
    a = np.abs(r)
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(top / np.where(a > 0, a, 1.0))).astype(np.int64)
    e = np.where(a > 0, e, 0)
    m = np.rint(r * np.exp2(np.clip(e, 0, max_shift))).astype(np.int64)
    m = np.where(e < 0, np.sign(r).astype(np.int64) * np.minimum(np.rint(a), top), m)
    m = np.clip(m, -top, top)
    zero = e > max_shift
    m = np.where(zero, 0, m)
    e = np.where(zero | (e < 0), 0, e)
    return m.astype(np.int64), e.astype(np.int64)


def exact_conv(A: torch.Tensor, W: torch.Tensor, groups: int) -> torch.Tensor:
    """``conv2d`` of integer maps and integer weights, exactly, as int64: in float32 when no
    partial sum can reach 2^24 (every one is then an exactly representable integer), else
    in float64 (below 2^53)."""
    bound = float(W.abs().sum((1, 2, 3)).max()) * float(A.abs().max()) if A.numel() else 0.0
    dtype = torch.float32 if bound < 2**24 else torch.float64
    return F.conv2d(A.to(dtype), W.to(dtype), groups=groups).long()


def _round_shift(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(x + (2^e >> 1)) >> e on int64 tensors, e >= 0 (broadcast)."""
    half = torch.bitwise_right_shift(torch.ones_like(e) << e, 1)
    return torch.bitwise_right_shift(x + half, e)


def _fold_norm(norm, bias, kind: str, n: int):
    """(gamma', beta') with norm(y) = gamma' * y + beta' per channel, float64."""
    if kind == "bn":
        inv = 1.0 / torch.sqrt(norm.running_var.double() + norm.eps)
        g = norm.weight.detach().double() * inv
        return g, norm.bias.detach().double() - norm.running_mean.double() * g
    if kind == "bias":
        return torch.ones(n, dtype=torch.float64), bias.detach().double()
    return torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)


def _integer_weights(quantizer, w: torch.Tensor):
    """(W int64, u float64 per output): the real weight is ``W * u``."""
    a, b = integer_weight_map(quantizer.mode)
    levels = quantizer.levels(w.detach())
    step = quantizer.effective_step().detach().double().reshape(-1)
    u = (step / a).expand(w.shape[0]) if step.numel() == 1 else step / a
    return a * levels + b, u.clone()


def _levels_of(W: np.ndarray, mode: str) -> np.ndarray:
    a, b = integer_weight_map(mode)
    return ((W - b) // a).astype(np.int8)


def _conv_groups(arch: dict, layer: int, in_planes: int) -> int:
    if layer == 0:
        return 1 if arch["first"] == "full" else in_planes
    return arch["channels"]


@torch.no_grad()
def freeze(net, calibration: torch.Tensor, input_shape) -> dict:
    """The integers of ``net`` (eval mode: batch norm's running statistics).

    ``calibration``: uint8-valued float NCHW images at the model's input size (training
    images), used only to choose the conv shifts."""
    net.eval()
    a = net.arch
    m_paths = a["channels"]
    if not net.quantized:
        raise ConfigError("only the quantized network freezes into integers (not a float twin)")
    x = calibration.cpu().long()
    if len(x) < 1:
        raise ConfigError("freezing needs at least one calibration image")
    scale = torch.full((m_paths,), 1.0 / 255.0, dtype=torch.float64)
    A = x.clone()
    convs, layer, bound = [], 0, 255
    stats = {"max_conv_acc": 0, "saturated_activations": 0}
    for op in a["path"]:
        if op == "p":
            A = F.max_pool2d(A.float(), 2).long()   # values <= 32767: exact
            continue
        W, u = _integer_weights(net.conv_q[layer], net.conv_w[layer])
        g, beta = _fold_norm(net.conv_norm[layer], net.conv_bias[layer], a["conv_norm"], m_paths)
        k = g * scale * u
        sign = torch.where(k < 0, -1, 1).long()
        W = W * sign.view(-1, 1, 1, 1)
        k = k.abs().clamp_min(1e-30)
        acc_l = exact_conv(A, W, _conv_groups(a, layer, A.shape[1]))
        pre = acc_l.double() + (beta / k).view(1, -1, 1, 1)
        top = pre.abs().amax((0, 2, 3)).clamp_min(1.0)
        if a["conv_norm"] == "none" and a["conv_scale"] == "tensor":
            top = top.max().expand(m_paths)   # one scale for the layer: one shift
        sh = torch.clamp(torch.ceil(torch.log2(top / CALIBRATION_TARGET)), 0, 30).long()
        B = torch.clamp(torch.round(beta / (k * torch.exp2(sh.double()))), -32768, 32767).long()
        stats["max_conv_acc"] = max(stats["max_conv_acc"], int(acc_l.abs().max()))
        A_l = _round_shift(acc_l, sh.view(1, -1, 1, 1)) + B.view(1, -1, 1, 1)
        stats["saturated_activations"] += int((A_l > MAP_MAX).sum())
        A = torch.clamp(A_l, 0, MAP_MAX)
        taps = int(W.abs().sum((1, 2, 3)).max())
        if taps * bound + (1 << 29) > INT32_MAX:
            raise ConfigError("a conv sum could overflow int32; use fewer kernel bits")
        bound = MAP_MAX
        convs.append({"w": W.numpy().astype(np.int64), "shift": sh.numpy(), "bias": B.numpy()})
        scale = k * torch.exp2(sh.double())
        layer += 1
    qmax = (1 << a["act_bits"]) - 1
    s_in = float(net.act_in.effective_step())
    mult, shift = fixed_point((scale / s_in).numpy(), 16, HEAD_IN_MAX_SHIFT)
    head_in = {"mult": mult, "shift": shift}
    dense, n_fc = [], len(net.fc_w)
    logit_scale = 1.0
    for i in range(n_fc):
        W, u = _integer_weights(net.fc_q[i], net.fc_w[i])
        if W.shape[1] * qmax * int(W.abs().max()) > INT32_MAX or \
                W.shape[1] * qmax * ((1 << a["head_bits"][i]) + 1) > INT32_MAX:
            raise ConfigError(f"dense layer {i} has too many inputs ({W.shape[1]}) for int32 sums")
        if i < n_fc - 1:
            g, beta = _fold_norm(net.fc_norm[i], net.fc_bias[i], a["dense_norm"], W.shape[0])
            k = g * u * s_in
            s_out = float(net.fc_act[i].effective_step())
            m_, e_ = fixed_point((k / s_out).numpy(), 16, DENSE_MAX_SHIFT)
            B = np.clip(np.rint((beta / s_out).numpy()), -32768, 32767).astype(np.int64)
            s_in = s_out
        else:
            k = u * s_in
            logit_scale = float(k.max()) / 256.0
            m_, e_ = fixed_point((k / logit_scale).numpy(), 16, DENSE_MAX_SHIFT)
            B = np.rint(net.out_bias.detach().double().numpy() / logit_scale).astype(np.int64)
            if np.abs(B).max(initial=0) > (1 << 40):
                raise ConfigError("the output bias is out of range of the logit scale")
        dense.append({"w": W.numpy().astype(np.int64), "mult": m_, "shift": e_, "bias": B})
    meta = {"calibration_images": int(len(x)), **stats}
    return {"arch": dict(a), "input_shape": [int(v) for v in input_shape], "conv": convs,
            "head_in": head_in, "dense": dense, "logit_scale": logit_scale, "meta": meta}


# -- running the integers in torch --------------------------------------------------------------
def _check_input(fz: dict, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        raise DataError(f"the integer model takes uint8 pixels, got {x.dtype}")
    if tuple(x.shape[1:]) != tuple(fz["input_shape"]):
        raise DataError(f"images have shape {tuple(x.shape[1:])} but the model expects "
                        f"{tuple(fz['input_shape'])} (H, W, C)")
    return x


def _features(fz: dict, x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> (n, D) int64 head input."""
    from ..data.resize import resize_images

    a = fz["arch"]
    A = torch.from_numpy(resize_images(x, a["size"]).astype(np.int64))
    A = A.permute(0, 3, 1, 2)
    layer = 0
    for op in a["path"]:
        if op == "p":
            A = F.max_pool2d(A.float(), 2).long()   # values <= 32767: exact
            continue
        c = fz["conv"][layer]
        acc = exact_conv(A, torch.from_numpy(c["w"]), _conv_groups(a, layer, A.shape[1]))
        A = _round_shift(acc, torch.from_numpy(c["shift"]).view(1, -1, 1, 1)) + \
            torch.from_numpy(c["bias"]).view(1, -1, 1, 1)
        A = torch.clamp(A, 0, MAP_MAX)
        layer += 1
    f = A.flatten(1)
    k = f.shape[1] // a["channels"]
    m = torch.from_numpy(fz["head_in"]["mult"]).repeat_interleave(k).view(1, -1)
    e = torch.from_numpy(fz["head_in"]["shift"]).repeat_interleave(k).view(1, -1)
    return torch.clamp(_round_shift(f * m, e), 0, (1 << a["act_bits"]) - 1)


def _logits(fz: dict, q: torch.Tensor) -> torch.Tensor:
    qmax = (1 << fz["arch"]["act_bits"]) - 1
    n = len(fz["dense"])
    for i, d in enumerate(fz["dense"]):
        # products < 2^16, sums < 2^31: float64 is exact
        acc = (q.double() @ torch.from_numpy(d["w"]).double().T).long()
        out = _round_shift(acc * torch.from_numpy(d["mult"]).view(1, -1),
                           torch.from_numpy(d["shift"]).view(1, -1)) + \
            torch.from_numpy(d["bias"]).view(1, -1)
        q = out if i == n - 1 else torch.clamp(out, 0, qmax)
    return q


@torch.no_grad()
def integer_features(fz: dict, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    x = _check_input(fz, x)
    parts = [_features(fz, x[s:s + batch_size]).numpy() for s in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.int64)


@torch.no_grad()
def integer_logits(fz: dict, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """(n, classes) int64 logits of the integer model on uint8 NHWC images."""
    x = _check_input(fz, x)
    k = len(fz["dense"][-1]["bias"])
    parts = [_logits(fz, _features(fz, x[s:s + batch_size])).numpy()
             for s in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, k), np.int64)


# -- model-file arrays ----------------------------------------------------------------------------
def frozen_arrays(fz: dict) -> tuple[dict, dict]:
    """(arrays, packed bit widths) of the model file: level indices, shifts, biases and
    multipliers; kernels and dense weights of 1..7 bits bit-packed."""
    a = fz["arch"]
    arrays, packed = {}, {}
    for layer, c in enumerate(fz["conv"]):
        arrays[f"conv/{layer}/levels"] = _levels_of(c["w"], a["conv_modes"][layer])
        if a["conv_bits"][layer] < 8:
            packed[f"conv/{layer}/levels"] = a["conv_bits"][layer]
        arrays[f"conv/{layer}/shift"] = c["shift"].astype(np.int8)
        arrays[f"conv/{layer}/bias"] = c["bias"].astype(np.int16)
    arrays["head_in/mult"] = fz["head_in"]["mult"].astype(np.int16)
    arrays["head_in/shift"] = fz["head_in"]["shift"].astype(np.int8)
    for i, d in enumerate(fz["dense"]):
        arrays[f"dense/{i}/levels"] = _levels_of(d["w"], a["head_mode"])
        if a["head_bits"][i] < 8:
            packed[f"dense/{i}/levels"] = a["head_bits"][i]
        arrays[f"dense/{i}/mult"] = d["mult"].astype(np.int16)
        arrays[f"dense/{i}/shift"] = d["shift"].astype(np.int8)
        last = i == len(fz["dense"]) - 1
        arrays[f"dense/{i}/bias"] = d["bias"].astype(np.int64 if last else np.int16)
    return arrays, packed


def frozen_from_arrays(arch: dict, config: dict, arrays: dict) -> dict:
    """The frozen integers of a model file (checked by ``validate``)."""
    from ..binary.quantizers import weight_levels

    convs = []
    for layer, mode in enumerate(arch["conv_modes"]):
        lv = arrays[f"conv/{layer}/levels"].astype(np.int64)
        lo, hi, _ = weight_levels(arch["conv_bits"][layer], mode)
        _check_levels(lv, lo, hi, f"conv/{layer}/levels")
        a_, b_ = integer_weight_map(mode)
        convs.append({"w": a_ * lv + b_, "shift": arrays[f"conv/{layer}/shift"].astype(np.int64),
                      "bias": arrays[f"conv/{layer}/bias"].astype(np.int64)})
    dense = []
    for i, bits in enumerate(arch["head_bits"]):
        lv = arrays[f"dense/{i}/levels"].astype(np.int64)
        lo, hi, _ = weight_levels(bits, arch["head_mode"])
        _check_levels(lv, lo, hi, f"dense/{i}/levels")
        a_, b_ = integer_weight_map(arch["head_mode"])
        dense.append({"w": a_ * lv + b_, "mult": arrays[f"dense/{i}/mult"].astype(np.int64),
                      "shift": arrays[f"dense/{i}/shift"].astype(np.int64),
                      "bias": arrays[f"dense/{i}/bias"].astype(np.int64)})
    return {"arch": dict(arch), "input_shape": [int(v) for v in config["input_shape"]],
            "conv": convs,
            "head_in": {"mult": arrays["head_in/mult"].astype(np.int64),
                        "shift": arrays["head_in/shift"].astype(np.int64)},
            "dense": dense, "logit_scale": float(config["logit_scale"]),
            "meta": dict(config.get("frozen") or {})}


def _check_levels(lv: np.ndarray, lo: int, hi: int, name: str) -> None:
    if lv.size and (lv.min() < lo or lv.max() > hi):
        raise DataError(f"array {name!r} holds levels outside {lo}..{hi}")


__all__ = ["fixed_point", "freeze", "frozen_arrays", "frozen_from_arrays", "integer_features", "integer_logits"]
