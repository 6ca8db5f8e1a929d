"""One validator for model files: nothing a file says is trusted until checked.

Every loader (native ``.npz``, ``.h5`` import, transfer backbones) goes
through ``validate_model``: the config's types and ranges, the members each
family needs with their dtypes and shapes against the config, and finite
weights. A failure is a ``DataError`` that names the member.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import DataError

MAX_SIDE = 4096  # pixels per image side; larger is a damaged config, not an image
MAX_PIXELS = 1 << 24  # H * W * C of one model input (a 4096 x 4096 gray image)
MAX_LAYERS = 3
MAX_NL = 8
MAX_CLASSES = 100_000
MAX_NAME = 1024  # characters of one class name (a folder name is at most 255 bytes)
MAX_SEED = 2**32 - 1  # numpy and torch take 32-bit seeds


def _fail(where: str, message: str):
    raise DataError(f"{where}: {message}")


def _int(config: dict, key: str, where: str, lo: int, hi: int) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"config {key!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        _fail(where, f"config {key!r} = {value} is outside {lo}..{hi}")
    return value


def _float(config: dict, key: str, where: str, positive: bool = True) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(where, f"config {key!r} must be a finite number, got {value!r}")
    if positive and value <= 0:
        _fail(where, f"config {key!r} must be positive, got {value}")
    return float(value)


def _int_list(config: dict, key: str, where: str, lo: int, hi: int, min_len=1,
              max_len=64) -> list[int]:
    value = config.get(key)
    if not isinstance(value, list) or not min_len <= len(value) <= max_len or any(
            isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi for v in value):
        _fail(where, f"config {key!r} must be a list of {min_len}..{max_len} integers in "
                     f"{lo}..{hi}, got {value!r}")
    return value


def _input_shape(config: dict, where: str, key: str = "input_shape") -> tuple[int, int, int]:
    shape = _int_list(config, key, where, 1, MAX_SIDE, 3, 3)
    if shape[2] not in (1, 3):
        _fail(where, f"config {key!r} must have 1 or 3 channels, got {shape[2]}")
    check_input_shape(shape, where)
    return tuple(shape)


def check_input_shape(shape, where: str) -> tuple[int, int, int]:
    """An input shape any artefact declares (native config, ONNX graph, C header): whole
    numbers, at most ``MAX_SIDE`` a side and ``MAX_PIXELS`` in all, 1 or 3 channels, so
    that ``predict`` never resizes a photo to a declared 60000 x 60000."""
    if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              for v in shape):
        _fail(where, f"input shape {tuple(shape)} is not (H, W, C) whole numbers")
    h, w, c = (int(v) for v in shape)
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or c not in (1, 3) \
            or h * w * c > MAX_PIXELS:
        _fail(where, f"input shape {(h, w, c)} is outside what lbcnn runs (sides 1..{MAX_SIDE}, "
                     f"1 or 3 channels, at most {MAX_PIXELS:,} values)")
    return h, w, c


def _array(arrays: dict, name: str, where: str, shape=None, kinds="fiub") -> np.ndarray:
    if name not in arrays:
        _fail(where, f"array {name!r} is missing")
    a = arrays[name]
    if a.dtype.kind not in kinds:
        _fail(where, f"array {name!r} has dtype {a.dtype}, expected a numeric array")
    if shape is not None and tuple(a.shape) != tuple(shape):
        _fail(where, f"array {name!r} has shape {tuple(a.shape)}, the config implies {tuple(shape)}")
    return a


def check_finite_arrays(arrays: dict, where: str) -> None:
    for name, a in arrays.items():
        if a.dtype.kind == "O":
            _fail(where, f"array {name!r} holds Python objects")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            _fail(where, f"array {name!r} holds NaN or infinite values")


def _pooled(n: int) -> int:
    return (n + 1) // 2  # 4x4/2 'same' max pool


def _check_provenance(config: dict, where: str) -> None:
    """What the data path records: read back by commands that reuse the dataset."""
    dataset = config.get("dataset")
    if dataset is not None and not isinstance(dataset, str):
        _fail(where, f"config 'dataset' must be a string, got {dataset!r}")
    prep = config.get("preprocessing")
    if prep is not None:
        if not isinstance(prep, dict):
            _fail(where, f"config 'preprocessing' must be a JSON object, got {prep!r}")
        resize = prep.get("resize")
        if resize is not None and (not isinstance(resize, list) or len(resize) != 2 or any(
                isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SIDE
                for v in resize)):
            _fail(where, f"config 'preprocessing.resize' must be [H, W], got {resize!r}")
        for flag in ("grayscale", "rgb"):
            if not isinstance(prep.get(flag, False), bool):
                _fail(where, f"config 'preprocessing.{flag}' must be true or false")
        frac = prep.get("test_fraction")
        if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float))
                                 or not 0 < frac < 1):
            _fail(where, f"config 'preprocessing.test_fraction' must lie in (0, 1), got {frac!r}")
        if prep.get("test_folder") is not None and not isinstance(prep["test_folder"], str):
            _fail(where, "config 'preprocessing.test_folder' must be a path string")
        seed = prep.get("split_seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            _fail(where, f"config 'preprocessing.split_seed' must be an integer, got {seed!r}")
    for key in ("dataset_path", "data_path"):
        if config.get(key) is not None and not isinstance(config[key], str):
            _fail(where, f"config {key!r} must be a path string, got {config[key]!r}")
    split = config.get("split")
    if split is not None:
        if not isinstance(split, dict) or split.get("kind") not in ("official", "fraction",
                                                                     "folder", "paper"):
            _fail(where, f"config 'split' must be an object with a kind (official, fraction, "
                         f"folder or paper), got {str(split)[:60]}")
        frac, seed = split.get("test_fraction"), split.get("seed")
        if split["kind"] == "fraction" and (isinstance(frac, bool) or not isinstance(
                frac, (int, float)) or not 0 < frac < 1):
            _fail(where, f"config 'split.test_fraction' must lie in (0, 1), got {frac!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                                 or not 0 <= seed < 2**32):
            _fail(where, f"config 'split.seed' must be an integer from 0 to 2**32 - 1, got {seed!r}")
        for key in ("test_folder", "test_folder_path", "fingerprint"):
            if split.get(key) is not None and not isinstance(split[key], str):
                _fail(where, f"config 'split.{key}' must be a string")
        n = split.get("n_test")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            _fail(where, f"config 'split.n_test' must be a count, got {n!r}")
    values = config.get("label_values")
    if values is not None and (not isinstance(values, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in values)):
        _fail(where, f"config 'label_values' must be a list of integers, got {str(values)[:60]}")
    for key in ("val_accuracy", "test_accuracy"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 <= value <= 1):
            _fail(where, f"config {key!r} must be a fraction in [0, 1], got {value!r}")
    for key in ("seed", "train_size", "test_size"):
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            _fail(where, f"config {key!r} must be an integer, got {value!r}")
    seed = config.get("seed")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        _fail(where, f"config 'seed' = {seed} is outside 0..{MAX_SEED}")
    train_size = config.get("train_size")
    if train_size is not None and train_size < 1:
        _fail(where, f"config 'train_size' must be positive, got {train_size}")
    frac = config.get("val_fraction")
    if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float))
                             or not 0 < frac < 1):
        _fail(where, f"config 'val_fraction' must lie in (0, 1), got {frac!r}")


def check_provenance(record: dict, where: str) -> None:
    """A data record an export carries (``lbcnn_provenance``): a model config's rules."""
    _check_provenance(record, where)


def _check_classes(config: dict, where: str) -> int:
    classes = config.get("classes")
    if classes is None:
        return -1
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES or any(
            isinstance(c, bool) or not isinstance(c, int) for c in classes):
        _fail(where, f"config 'classes' must be a list of integers, got {str(classes)[:60]}")
    if len(set(classes)) != len(classes):
        _fail(where, f"config 'classes' repeats label {_first_repeat(classes)!r}")
    names = config.get("class_names")
    if names is not None and (not isinstance(names, list) or len(names) != len(classes)
                              or not all(isinstance(n, str) for n in names)):
        _fail(where, f"config 'class_names' must be {len(classes)} strings, one per class")
    if names is not None:
        check_class_names(names, where)
    values = config.get("label_values")
    if values is not None:
        if len(set(values)) != len(values):
            _fail(where, f"config 'label_values' repeats label {_first_repeat(values)!r}")
        if min(classes) < 0 or max(classes) >= len(values):
            _fail(where, f"config 'label_values' has {len(values)} entries but the classes run "
                         f"{min(classes)}..{max(classes)}; each class needs its label")
    return len(classes)


def _first_repeat(values):
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def check_class_names(names, where: str, k: int | None = None) -> list[str]:
    """Class names any format records: ``k`` distinct strings (when ``k`` is given) of at
    most ``MAX_NAME`` characters, so outputs can be told apart by name."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        _fail(where, f"class names must be a list of strings, got {str(names)[:60]}")
    if k is not None and len(names) != k:
        _fail(where, f"{len(names)} class names for {k} classes")
    long = [n for n in names if len(n) > MAX_NAME]
    if long:
        _fail(where, f"class name {long[0][:40]!r}... is longer than {MAX_NAME} characters")
    if len(set(names)) != len(names):
        _fail(where, f"class name {_first_repeat(names)!r} appears twice; names must tell the "
                     f"classes apart")
    return names


def _validate_lbcnn(config: dict, arrays: dict, where: str) -> None:
    h, w, c = _input_shape(config, where)
    filters = _int_list(config, "filters", where, 1, 4096, 1, MAX_LAYERS)
    nl = _int(config, "nl", where, 1, MAX_NL)
    _float(config, "input_scale", where)
    if "C" in config:
        _float(config, "C", where)
    k = _check_classes(config, where)
    if k < 1:
        _fail(where, "config 'classes' is missing")
    channels = c
    for i, m in enumerate(filters):
        _array(arrays, f"body/{i}/conv", where, (3, 3, channels, m), "iuf")
        channels *= m
        for j in range(nl - 1):
            _array(arrays, f"body/{i}/extra/{j}", where, (3, 3, channels, 1), "iuf")
        h, w = _pooled(h), _pooled(w)
    d = h * w * channels
    head = config.get("head", {"kind": "float32"})
    if not isinstance(head, dict) or head.get("kind") not in ("float32", "fixed"):
        _fail(where, f"config 'head' must be a dict with kind float32 or fixed, got {head!r}")
    if head["kind"] == "float32":
        _array(arrays, "head/weight", where, (d, k), "f")
        _array(arrays, "head/bias", where, (k,), "f")
    else:
        _int(head, "bits", where + " head", 2, 16)
        if "bias_bits" in head:
            _int(head, "bias_bits", where + " head", 2, 16)
        per_class = head.get("scale") == "per_class"
        _array(arrays, "head/weight_q", where, (d, k), "iu")
        _array(arrays, "head/bias_q", where, (k,), "iu")
        scale = _array(arrays, "head/scale", where, (k if per_class else 1,), "f")
        bias_scale = _array(arrays, "head/bias_scale", where, None, "f")
        if bias_scale.ndim != 1 or bias_scale.shape[0] not in (1, k):
            _fail(where, f"array 'head/bias_scale' has shape {bias_scale.shape}, expected (1,) "
                         f"or ({k},)")
        for name, values in (("head/scale", scale), ("head/bias_scale", bias_scale)):
            if not (values > 0).all():  # a zero scale silences the head: every image one class
                _fail(where, f"array {name!r} must hold positive scales, got "
                             f"{float(values.min()):g}")


def _validate_cbcnn(config: dict, arrays: dict, where: str) -> None:
    net = config.get("net")
    if not isinstance(net, dict):
        _fail(where, "config 'net' (the CBCNN layout) is missing or not a dict")
    shape = _input_shape(net, where + " net")
    blocks = _int_list(net, "blocks", where + " net", 1, 65536, 1, 16)
    dense = _int_list(net, "dense", where + " net", 1, 65536, 0, 16)
    n_classes = _int(net, "n_classes", where + " net", 2, MAX_CLASSES)
    if "scale" in net and not isinstance(net["scale"], bool):
        _fail(where, f"config 'net.scale' must be true or false, got {net['scale']!r}")
    pre = config.get("preprocess")
    if pre is not None and not isinstance(pre, (dict, str)):
        _fail(where, f"config 'preprocess' must be a dict, got {type(pre).__name__}")
    from .errors import LbcnnError
    from .preprocess import Preprocess
    try:
        scale = Preprocess.from_dict(pre).input_scale
    except LbcnnError as exc:
        _fail(where, f"config 'preprocess': {exc}")
    if not scale > 0:
        _fail(where, f"config 'preprocess' input_scale must be positive, got {scale}")
    k = _check_classes(config, where)
    if k not in (-1, n_classes):
        _fail(where, f"config 'classes' lists {k} labels for the network's {n_classes} outputs")
    _check_cbcnn_arrays(shape, blocks, dense, n_classes, bool(net.get("scale", False)), arrays,
                        where)


def _check_cbcnn_arrays(shape, blocks, dense, n_classes, scale, arrays, where) -> None:
    """The file's arrays against the network the config describes, built on torch's meta
    device (shapes only, no memory), so a config declaring 65536-wide layers is refused
    before anything that large is allocated."""
    import torch

    from .errors import ConfigError
    from .models.cbcnn import CBCNNNet
    try:
        with torch.device("meta"):
            net = CBCNNNet(shape, blocks, dense, n_classes, scale)
    except ConfigError as exc:
        _fail(where, str(exc))
    for name, tensor in net.state_dict().items():
        _array(arrays, name, where, tuple(tensor.shape), "fiub")


def _validate_hybrid(config: dict, arrays: dict, where: str) -> None:
    _input_shape(config, where)
    n = _int(config, "n_kernels", where, 1, 64)
    _int(config, "hidden", where, 1, 1 << 20)
    th = config.get("threshold")
    if not (th == "otsu" or (isinstance(th, (int, float)) and not isinstance(th, bool)
                             and math.isfinite(th) and 0 <= th <= 1)):
        _fail(where, f"config 'threshold' must be 'otsu' or a number in [0, 1], got {th!r}")
    if _check_classes(config, where) < 2:
        _fail(where, "config 'classes' must list at least 2 classes")
    for i in range(n):
        _array(arrays, f"body/kernel/{i}", where, (3, 3), "iuf")
    h, w, _ = _input_shape(config, where)
    hidden, k = config["hidden"], len(config["classes"])
    d = (h - 2 * n) * (w - 2 * n)
    if h - 2 * n < 1 or w - 2 * n < 1:
        _fail(where, f"input {h}x{w} is too small for {n} valid 3x3 convs")
    for name, shape in (("mlp/hidden.weight", (hidden, d)), ("mlp/hidden.bias", (hidden,)),
                        ("mlp/out.weight", (k, hidden)), ("mlp/out.bias", (k,))):
        _array(arrays, name, where, shape, "f")


def _validate_lowbit(config: dict, arrays: dict, where: str) -> None:
    from .errors import ConfigError
    from .models.lowbit import architecture, conv_inputs, dense_dims

    net = config.get("net")
    if not isinstance(net, dict):
        _fail(where, "config 'net' (the lowbit architecture) is missing or not a dict")
    _input_shape(config, where)
    try:
        arch = architecture(net.get("input_channels"), net.get("size"), net.get("channels"),
                            net.get("first"), net.get("path"), net.get("conv_bits"), "auto",
                            net.get("conv_scale"), net.get("conv_norm"), net.get("hidden"),
                            net.get("head_bits"), net.get("head_mode"), net.get("act_bits"),
                            net.get("n_classes"), net.get("dense_norm"))
    except (ConfigError, TypeError, ValueError) as exc:
        _fail(where, f"damaged lowbit architecture ({str(exc).splitlines()[0][:120]})")
    modes = net.get("conv_modes")
    if not isinstance(modes, list) or len(modes) != len(arch["conv_bits"]) or any(
            m not in ("symnz", "int") or (m == "int" and b < 2)
            for m, b in zip(modes, arch["conv_bits"])):
        _fail(where, f"config 'net.conv_modes' must give symnz or int per conv, got {modes!r}")
    if config["input_shape"][2] != arch["input_channels"]:
        _fail(where, "config 'input_shape' and 'net.input_channels' disagree")
    _float(config, "logit_scale", where)
    if _check_classes(config, where) != arch["n_classes"]:
        _fail(where, f"config 'classes' must list net.n_classes = {arch['n_classes']} classes")
    m = arch["channels"]
    for layer in range(len(arch["conv_bits"])):
        _array(arrays, f"conv/{layer}/levels", where, (m, conv_inputs(arch, layer), 3, 3), "iu")
        shift = _array(arrays, f"conv/{layer}/shift", where, (m,), "iu")
        if shift.size and (shift.min() < 0 or shift.max() > 30):
            _fail(where, f"array 'conv/{layer}/shift' must hold shifts in 0..30")
        _array(arrays, f"conv/{layer}/bias", where, (m,), "iu")
    _array(arrays, "head_in/mult", where, (m,), "iu")
    shift = _array(arrays, "head_in/shift", where, (m,), "iu")
    if shift.size and (shift.min() < 0 or shift.max() > 30):
        _fail(where, "array 'head_in/shift' must hold shifts in 0..30")
    dims = dense_dims(arch)
    for i in range(len(dims) - 1):
        _array(arrays, f"dense/{i}/levels", where, (dims[i + 1], dims[i]), "iu")
        for name in ("mult", "shift", "bias"):
            _array(arrays, f"dense/{i}/{name}", where, (dims[i + 1],), "iu")
        shift = arrays[f"dense/{i}/shift"]
        if shift.size and (shift.min() < 0 or shift.max() > 47):
            _fail(where, f"array 'dense/{i}/shift' must hold shifts in 0..47")


def validate_packed(spec, arrays: dict, where: str) -> dict:
    """The config's ``packed`` map (array name -> bits 1..7, shape), checked against the
    stored bytes: uint8, exactly ceil(count * bits / 8) of them, the spare bits after the
    last value zero. Returns ``{name: (bits, shape, count)}``; anything else is a DataError."""
    from .engine.bits import FILE_PACKED_BITS, packed_nbytes

    if not isinstance(spec, dict):
        _fail(where, "config 'packed' must be a JSON object")
    out = {}
    for name, entry in spec.items():
        bits = entry.get("bits") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if isinstance(bits, bool) or bits not in FILE_PACKED_BITS:
            _fail(where, f"packed array {name!r} must give bits in 1..7, got {bits!r}")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 4 or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
            _fail(where, f"packed array {name!r} has a bad shape {shape!r}")
        a = arrays.get(name)
        count = math.prod(shape)
        need = packed_nbytes(count, bits)
        if a is None or a.dtype != np.uint8 or a.ndim != 1 or a.size != need:
            got = "missing" if a is None else f"{a.dtype} {tuple(a.shape)}"
            _fail(where, f"packed array {name!r} must be {need} uint8 bytes for {shape} at "
                         f"{bits} bits, got {got}")
        spare = a.size * 8 - count * bits
        if spare and int(a[-1]) >> (8 - spare):
            _fail(where, f"packed array {name!r} has stray bits after its last value (corrupt)")
        out[name] = (bits, shape, count)
    return out


VALIDATORS = {"lbcnn": _validate_lbcnn, "cbcnn": _validate_cbcnn, "hybrid": _validate_hybrid,
              "lowbit": _validate_lowbit}


def validate_model(config, arrays: dict, where: str) -> None:
    """Raise ``DataError`` naming the first thing wrong with a model file."""
    if not isinstance(config, dict):
        _fail(where, f"the model config must be a JSON object, got {type(config).__name__}")
    version = config.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        _fail(where, f"config 'version' must be an integer, got {version!r}")
    family = config.get("family")
    if not isinstance(family, str) or family not in VALIDATORS:
        _fail(where, f"unknown model family {family!r}; expected one of {', '.join(VALIDATORS)}")
    check_finite_arrays(arrays, where)
    _check_provenance(config, where)
    VALIDATORS[family](config, arrays, where)
