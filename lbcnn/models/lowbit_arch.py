"""The lowbit family's architecture settings: checked and normalized (``architecture``,
what a model file's ``net`` records), the maps' geometry and the per-layer profile
(weights, bits, MACs). See ``models.lowbit`` for the network itself."""
from __future__ import annotations

import numpy as np

from ..binary.quantizers import WEIGHT_MODES
from ..errors import ConfigError

FIRST_MODES = ("full", "depthwise")
CONV_NORMS = ("bn", "bias", "none")
DENSE_NORMS = ("bn", "bias")
MAX_HIDDEN = 2
MAX_CHANNELS = 4096
MAX_WIDTH = 8192

# Which level grid a kernel of n bits uses with conv_mode="auto": +-1 for 1 bit, ternary
# for 2, the zero-free grid for 3 and 4 bits (no level is wasted on zero), the symmetric
# integers from 5 bits (the research runs' choice, kept as the default).
AUTO_CONV_MODE = {1: "symnz", 2: "int", 3: "symnz", 4: "symnz"}


def _int_list(values, what: str, lo: int, hi: int, allow_empty: bool = False) -> list[int]:
    if isinstance(values, (int, np.integer)):
        values = [values]
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be integers, got {values!r}") from None
    if not out and not allow_empty:
        raise ConfigError(f"{what} needs at least one value")
    bad = [v for v in out if not lo <= v <= hi]
    if bad:
        raise ConfigError(f"{what} must lie in {lo}..{hi}, got {bad[0]}")
    return out


def conv_modes(conv_bits, conv_mode: str) -> list[str]:
    """The level grid of each conv layer (``binary.quantizers.weight_levels``)."""
    if conv_mode == "auto":
        return [AUTO_CONV_MODE.get(b, "int") for b in conv_bits]
    if conv_mode not in WEIGHT_MODES:
        raise ConfigError(f"conv mode must be auto or one of {', '.join(WEIGHT_MODES)}, "
                          f"got {conv_mode!r}")
    if conv_mode == "int" and 1 in conv_bits:
        raise ConfigError("1-bit kernels are +-1 (symnz); int kernels need 2 bits or more")
    return [conv_mode] * len(conv_bits)


def architecture(input_channels: int, size: int, channels: int, first: str, path: str,
                 conv_bits, conv_mode: str, conv_scale: str, conv_norm: str, hidden,
                 head_bits, head_mode: str, act_bits: int, n_classes: int,
                 dense_norm: str = "bn") -> dict:
    """Checked, normalized architecture settings (what a model file's ``net`` records);
    every problem is one ConfigError line."""
    input_channels = int(input_channels)
    if input_channels not in (1, 3):
        raise ConfigError(f"images must have 1 or 3 channels, got {input_channels}")
    size = int(size)
    channels = int(channels)
    if not 1 <= channels <= MAX_CHANNELS:
        raise ConfigError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
    if first not in FIRST_MODES:
        raise ConfigError(f"first must be {' or '.join(FIRST_MODES)}, got {first!r}")
    if first == "depthwise" and channels % input_channels:
        raise ConfigError(f"a depthwise first conv gives each of the {input_channels} colour "
                          f"planes the same number of paths: channels must be a multiple of "
                          f"{input_channels}, got {channels}")
    path = str(path)
    if not path or set(path) - {"c", "p"} or path[0] != "c":
        raise ConfigError(f"path must be a string of c (3x3 conv) and p (2x2 max pool) "
                          f"starting with c, got {path!r}")
    side = size
    for op in path:
        side = side - 2 if op == "c" else side // 2
        if side < 1:
            raise ConfigError(f"input {size}x{size} is too small for path {path!r}: nothing "
                              f"is left after its ops; use a larger --size or fewer ops")
    n_conv = path.count("c")
    conv_bits = _int_list(conv_bits, "conv bits", 1, 8)
    if len(conv_bits) == 1:
        conv_bits *= n_conv
    if len(conv_bits) != n_conv:
        raise ConfigError(f"path {path!r} has {n_conv} convs but {len(conv_bits)} conv bit "
                          f"widths were given")
    modes = conv_modes(conv_bits, conv_mode)
    if conv_scale not in ("channel", "tensor"):
        raise ConfigError(f"conv scale must be channel or tensor, got {conv_scale!r}")
    if conv_norm not in CONV_NORMS:
        raise ConfigError(f"conv norm must be one of {', '.join(CONV_NORMS)}, got {conv_norm!r}")
    hidden = _int_list(hidden, "hidden widths", 1, MAX_WIDTH, allow_empty=True)
    if len(hidden) > MAX_HIDDEN:
        raise ConfigError(f"the head takes 0 to {MAX_HIDDEN} hidden layers, got {len(hidden)}")
    head_bits = _int_list(head_bits, "head bits", 2, 8)
    if len(head_bits) == 1:
        head_bits *= len(hidden) + 1
    if len(head_bits) != len(hidden) + 1:
        raise ConfigError(f"{len(hidden)} hidden layers need {len(hidden) + 1} head bit widths "
                          f"(one per dense layer), got {len(head_bits)}")
    if head_mode not in WEIGHT_MODES:
        raise ConfigError(f"head mode must be one of {', '.join(WEIGHT_MODES)}, got {head_mode!r}")
    act_bits = int(act_bits)
    if not 2 <= act_bits <= 8:
        raise ConfigError(f"activation bits must be 2..8, got {act_bits}")
    if dense_norm not in DENSE_NORMS:
        raise ConfigError(f"dense norm must be one of {', '.join(DENSE_NORMS)}, got {dense_norm!r}")
    if int(n_classes) < 2:
        raise ConfigError(f"n_classes must be >= 2, got {n_classes}")
    return {"input_channels": input_channels, "size": size, "channels": channels,
            "first": first, "path": path, "conv_bits": conv_bits, "conv_modes": modes,
            "conv_scale": conv_scale, "conv_norm": conv_norm, "hidden": hidden,
            "head_bits": head_bits, "head_mode": head_mode, "act_bits": act_bits,
            "dense_norm": dense_norm, "n_classes": int(n_classes)}


def path_geometry(arch: dict) -> list[dict]:
    """Per op of the path: type, input side, output side (square maps)."""
    side, out = arch["size"], []
    for op in arch["path"]:
        nxt = side - 2 if op == "c" else side // 2
        out.append({"op": op, "in": side, "out": nxt})
        side = nxt
    return out


def features_per_path(arch: dict) -> int:
    return path_geometry(arch)[-1]["out"] ** 2


def conv_inputs(arch: dict, layer: int) -> int:
    """Input planes one path's conv ``layer`` reads."""
    if layer == 0 and arch["first"] == "full":
        return arch["input_channels"]
    return 1


def dense_dims(arch: dict) -> list[int]:
    return [arch["channels"] * features_per_path(arch)] + list(arch["hidden"]) + \
        [arch["n_classes"]]


def profile(arch: dict) -> list[dict]:
    """Per-layer weights, bits per weight and MACs (the integer model; bits as stored in the
    model file's arrays, before the C's constants: ``lbcnn info`` adds those from the plan)."""
    a, rows, m = arch, [], arch["channels"]
    layer = 0
    for g in path_geometry(a):
        if g["op"] == "p":
            rows.append({"name": f"pool{len(rows)}", "kind": "max pool 2x2", "output": [
                g["out"], g["out"], m], "weights": 0, "bits_per_weight": 0, "macs": 0})
            continue
        cin = conv_inputs(a, layer)
        n = m * cin * 9
        rows.append({"name": f"conv{layer}", "kind": f"3x3 valid, {cin} plane(s) a path, "
                     f"{a['conv_modes'][layer]}", "output": [g["out"], g["out"], m],
                     "weights": n, "bits_per_weight": a["conv_bits"][layer],
                     "macs": m * cin * 9 * g["out"] ** 2})
        layer += 1
    dims = dense_dims(a)
    for i in range(len(dims) - 1):
        last = i == len(dims) - 2
        rows.append({"name": "out" if last else f"dense{i}",
                     "kind": f"dense, {a['head_mode']}", "output": [dims[i + 1]],
                     "weights": dims[i] * dims[i + 1], "bits_per_weight": a["head_bits"][i],
                     "macs": dims[i] * dims[i + 1]})
    for r in rows:
        r["bits"] = r["weights"] * r["bits_per_weight"]
    return rows
