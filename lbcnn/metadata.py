"""Validators for what the other formats record, in the spirit of ``validate.py`` (which
checks native model files): a ``.h5`` file's ``lbcnn_*`` attributes, an ``.onnx`` file's
metadata, an exported C folder's ``model.json`` and a training checkpoint.

Nothing a file says is used before it is checked here; a failure is one ``DataError``
naming the file and the field. JSON is parsed by ``load_json``, bounded in size and
nesting depth before the parser sees it (a config nested 10,000 levels deep would
otherwise end in a ``RecursionError``), and the JSON records are described by JSON
schemas checked with the ``jsonschema`` package.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np

from .errors import DataError
from .validate import MAX_CLASSES, MAX_NAME, MAX_SEED, check_class_names

MAX_JSON_BYTES = 16 << 20   # a model config with 100,000 class names is ~3 MB
MAX_JSON_DEPTH = 32         # lbcnn writes at most 4 levels
C_FORMAT = "lbcnn-c"
C_SOURCES_COMPILED = ("model.h", "model.c", "main.c")   # what evaluate/predict compile

_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def load_json(data, where: str, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH):
    """Parse JSON from bytes or text: UTF-8, at most ``max_bytes``, nested at most
    ``max_depth`` levels, no NaN or infinity. Anything else is one ``DataError``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_bytes:
            raise DataError(f"{where}: {len(data):,} bytes of JSON, more than the "
                            f"{max_bytes:,} lbcnn reads")
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    elif len(data) > max_bytes:
        raise DataError(f"{where}: {len(data):,} characters of JSON, more than the "
                        f"{max_bytes:,} lbcnn reads")
    depth = 0
    for token in _TOKENS.finditer(data):
        ch = token.group()
        if ch in "[{":
            depth += 1
            if depth > max_depth:
                raise DataError(f"{where}: JSON nested deeper than {max_depth} levels")
        elif ch in "]}":
            depth -= 1

    def refuse(token):
        raise ValueError(f"{token} is not a JSON number")
    try:
        return json.loads(data, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise DataError(f"{where}: not valid JSON ({str(exc).splitlines()[0][:80]})") from None


def json_kind(value) -> str:
    """What a parsed JSON value is, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def check_schema(value, schema: dict, where: str) -> None:
    """``value`` against a JSON schema; the most relevant error, as one line."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        field = ".".join(str(p) for p in error.absolute_path) or "the record"
        message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
        raise DataError(f"{where}: {field}: {message}")


# -- shared pieces -------------------------------------------------------------------------

_CLASSES = {"type": "array", "items": {"type": "integer"}, "minItems": 1,
            "maxItems": MAX_CLASSES, "uniqueItems": True}
_NAMES = {"type": "array", "items": {"type": "string", "maxLength": MAX_NAME},
          "minItems": 1, "maxItems": MAX_CLASSES, "uniqueItems": True}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3,
          "maxItems": 3}
_PROVENANCE = {
    "dataset": {"type": ["string", "null"], "maxLength": 4096},
    "class_names": _NAMES,
    "classes": _CLASSES,
    "label_values": {"type": ["array", "null"], "items": {"type": "integer"},
                     "maxItems": MAX_CLASSES, "uniqueItems": True},
    "preprocessing": {"type": ["object", "null"]},
    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
    "train_size": {"type": "integer", "minimum": 1},
    "val_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    "input_color": {"enum": ["y", "rgb"]},
}

C_RECORD_SCHEMA = {
    "type": "object",
    "properties": {
        "format": {"const": C_FORMAT},
        "version": {"type": "integer", "minimum": 1, "maximum": 1},
        "sources": {"type": "object", "maxProperties": 64,
                    "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        "input_shape": _SHAPE,
        "n_classes": {"type": "integer", "minimum": 1, "maximum": MAX_CLASSES},
        "returns": {"enum": ["label", "index"]},
        **_PROVENANCE,
    },
}


def _classes_and_names(record: dict, k: int | None, where: str):
    classes = record.get("classes")
    if classes is not None and k is not None and len(classes) != k:
        raise DataError(f"{where}: classes lists {len(classes)} labels for {k} outputs")
    names = record.get("class_names")
    if names is not None:
        n = k if k is not None else (len(classes) if classes is not None else None)
        check_class_names(names, where, n)
    return classes, names


def validate_c_record(raw: bytes, where: str) -> dict:
    """An exported C folder's ``model.json`` (bytes as read): what the export recorded."""
    record = load_json(raw, where, max_bytes=MAX_JSON_BYTES)
    if not isinstance(record, dict):
        raise DataError(f"{where}: must be a JSON object, got {json_kind(record)}")
    check_schema(record, C_RECORD_SCHEMA, where)
    from .validate import check_provenance
    check_provenance(record, where)
    _classes_and_names(record, record.get("n_classes"), where)
    return record


TFLITE_FORMAT = "lbcnn-tflite"
TFLITE_RECORD_SCHEMA = {
    "type": "object",
    "properties": {
        "format": {"const": TFLITE_FORMAT},
        "version": {"type": "integer", "minimum": 1, "maximum": 1},
        "family": {"enum": ["lbcnn", "cbcnn", "hybrid"]},
        "exactness": {"type": "string", "maxLength": 4096},
        **_PROVENANCE,
    },
}


def validate_tflite_metadata(raw: bytes | None, k: int, where: str) -> dict:
    """The ``lbcnn`` metadata entry of a ``.tflite`` with ``k`` outputs (bytes as stored;
    None or empty: nothing recorded): what the export recorded, checked like a C folder's
    ``model.json``. Other fields pass through unchecked by type but bounded in size."""
    if not raw:
        return {}
    record = load_json(raw, where)
    if not isinstance(record, dict):
        raise DataError(f"{where}: must be a JSON object, got {json_kind(record)}")
    check_schema(record, TFLITE_RECORD_SCHEMA, where)
    from .validate import check_provenance
    check_provenance(record, where)
    _classes_and_names(record, k, where)
    return record


def validate_provenance(raw, where: str) -> dict:
    """The data record (``lbcnn_provenance``) an ONNX or .h5 export carries: a JSON object
    whose known fields follow a model config's rules; other fields are dropped."""
    from .deploy.onnx_common import PROVENANCE_KEYS
    from .validate import check_provenance
    record = load_json(raw, where)
    if not isinstance(record, dict):
        raise DataError(f"{where}: must be a JSON object, got {json_kind(record)}")
    record = {k: v for k, v in record.items() if k in PROVENANCE_KEYS}
    check_provenance(record, where)
    return record


# -- .h5 attributes ------------------------------------------------------------------------

def _scalar_number(value, where: str, what: str) -> float:
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise DataError(f"{where}: attribute {what} must be one number, got {str(value)[:60]}")
    number = float(array.reshape(-1)[0])
    if not math.isfinite(number) or number <= 0:
        raise DataError(f"{where}: attribute {what} must be a finite positive number, "
                        f"got {number}")
    return number


def _text(value, where: str, what: str) -> str:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: attribute {what} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise DataError(f"{where}: attribute {what} must be JSON text, got "
                        f"{type(value).__name__}")
    return value


def validate_h5_attrs(attrs, where: str) -> dict:
    """The ``lbcnn_*`` attributes of a Keras ``.h5`` file (``lbcnn export --format h5``):
    ``input_scale`` (finite, positive), ``classes`` (1-D distinct integers),
    ``class_names`` (JSON list of distinct strings, one per class) and ``dataset``
    (JSON string or null). Returns the ones present, checked."""
    out = {}
    if "lbcnn_input_scale" in attrs:
        out["input_scale"] = _scalar_number(attrs["lbcnn_input_scale"], where,
                                            "lbcnn_input_scale")
    if "lbcnn_classes" in attrs:
        classes = np.asarray(attrs["lbcnn_classes"])
        if classes.ndim != 1 or classes.dtype.kind not in "iu" or not 1 <= len(classes) \
                <= MAX_CLASSES:
            raise DataError(f"{where}: attribute lbcnn_classes must be a 1-D list of integer "
                            f"labels, got {classes.dtype} {classes.shape}")
        if len(np.unique(classes)) != len(classes):
            raise DataError(f"{where}: attribute lbcnn_classes repeats a label")
        out["classes"] = classes.astype(np.int64)
    if "lbcnn_class_names" in attrs:
        names = load_json(_text(attrs["lbcnn_class_names"], where, "lbcnn_class_names"),
                          f"{where}: attribute lbcnn_class_names")
        k = len(out["classes"]) if "classes" in out else None
        out["class_names"] = check_class_names(names, f"{where}: attribute lbcnn_class_names",
                                               k)
    if "lbcnn_dataset" in attrs:
        dataset = load_json(_text(attrs["lbcnn_dataset"], where, "lbcnn_dataset"),
                            f"{where}: attribute lbcnn_dataset")
        if dataset is not None and (not isinstance(dataset, str) or len(dataset) > 4096):
            raise DataError(f"{where}: attribute lbcnn_dataset must be a JSON string, got "
                            f"{str(dataset)[:60]}")
        out["dataset"] = dataset
    return out


# -- ONNX metadata -------------------------------------------------------------------------

def validate_onnx_metadata(meta: dict, k: int, where: str) -> dict:
    """An lbcnn ONNX file's metadata for a graph with ``k`` outputs: ``lbcnn_classes``
    (k distinct comma-separated integers), ``lbcnn_class_names`` (a JSON list of k
    distinct strings), ``lbcnn_dataset`` (a JSON string or null), ``lbcnn_input_scale``
    (finite, positive) and ``lbcnn_preprocess`` (a JSON object). Returns them, checked;
    other ``lbcnn_*`` keys pass through as text."""
    out = {}
    if meta.get("lbcnn_classes"):
        parts = meta["lbcnn_classes"].split(",")
        if not all(re.fullmatch(r"\s*-?\d{1,18}\s*", p) for p in parts):
            raise DataError(f"{where}: metadata lbcnn_classes must be comma-separated "
                            f"integers, got {meta['lbcnn_classes'][:60]!r}")
        classes = [int(p) for p in parts]
        if len(classes) != k:
            raise DataError(f"{where}: metadata lbcnn_classes lists {len(classes)} labels for "
                            f"the graph's {k} outputs")
        if len(set(classes)) != k:
            raise DataError(f"{where}: metadata lbcnn_classes repeats a label")
        out["classes"] = classes
    if meta.get("lbcnn_class_names"):
        names = load_json(meta["lbcnn_class_names"], f"{where}: metadata lbcnn_class_names")
        out["class_names"] = check_class_names(names, f"{where}: metadata lbcnn_class_names", k)
    if meta.get("lbcnn_dataset"):
        dataset = load_json(meta["lbcnn_dataset"], f"{where}: metadata lbcnn_dataset")
        if dataset is not None and (not isinstance(dataset, str) or len(dataset) > 4096):
            raise DataError(f"{where}: metadata lbcnn_dataset must be a JSON string, got "
                            f"{str(dataset)[:60]}")
        out["dataset"] = dataset
    if "lbcnn_input_scale" in meta:
        try:
            scale = float(meta["lbcnn_input_scale"])
        except ValueError:
            scale = float("nan")
        if not math.isfinite(scale) or scale <= 0:
            raise DataError(f"{where}: metadata lbcnn_input_scale must be a finite positive "
                            f"number, got {meta['lbcnn_input_scale'][:40]!r}")
        out["input_scale"] = scale
    if meta.get("lbcnn_provenance"):  # the model file's data record, as its config holds it
        out.update(validate_provenance(meta["lbcnn_provenance"],
                                       f"{where}: metadata lbcnn_provenance"))
    if "lbcnn_preprocess" in meta:
        pre = load_json(meta["lbcnn_preprocess"], f"{where}: metadata lbcnn_preprocess")
        if not isinstance(pre, dict):
            raise DataError(f"{where}: metadata lbcnn_preprocess must be a JSON object")
        out["preprocess"] = pre
    known = {"lbcnn_classes", "lbcnn_class_names", "lbcnn_dataset", "lbcnn_input_scale",
             "lbcnn_preprocess", "lbcnn_provenance"}  # read above; empty counts as absent
    for key, value in meta.items():
        if key.startswith("lbcnn_") and key not in known:
            if len(value) > 4096:
                raise DataError(f"{where}: metadata {key} is {len(value):,} characters long")
            out[key[6:]] = value
    return out


# -- training checkpoints ------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _state_dict(value) -> bool:
    import torch
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in value.items())


def _check_json_like(value, where: str, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise DataError(f"{where}: nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DataError(f"{where}: key {key!r} is not a string")
            _check_json_like(item, where, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json_like(item, where, depth + 1)
    elif value is not None and not isinstance(value, (str, bool, int, float)):
        raise DataError(f"{where}: holds a {type(value).__name__} where settings are expected")


def validate_checkpoint(ckpt: dict, where: str) -> dict:
    """A CBCNN training checkpoint's fields, after ``torch.load(weights_only=True)``:
    the settings a plain JSON-like dict, ``epoch`` a whole number >= 0, ``history`` one
    record per finished epoch, the best epoch's accuracy a fraction with its weights,
    ``wall_seconds`` a finite time."""
    import torch

    def bad(field: str, expected: str):
        raise DataError(f"{where}: {field} must be {expected}, got {repr(ckpt.get(field))[:60]}")

    if not isinstance(ckpt.get("config"), dict):
        bad("config", "the run's settings (a dict)")
    _check_json_like(ckpt["config"], f"{where}: config")
    epoch = ckpt.get("epoch")
    if not _is_int(epoch) or not 0 <= epoch < 1 << 31:
        bad("epoch", "a whole number >= 0")
    history = ckpt.get("history")
    if not isinstance(history, list) or len(history) != epoch + 1 or not all(
            isinstance(h, dict) for h in history):
        bad("history", f"a list of {epoch + 1} epoch records")
    _check_json_like(history, f"{where}: history")
    for i, record in enumerate(history):
        acc = record.get("val_accuracy")
        if not _is_number(acc) or not 0 <= acc <= 1:
            raise DataError(f"{where}: history[{i}].val_accuracy must be a fraction in [0, 1], "
                            f"got {str(acc)[:40]}")
    best = ckpt.get("best_val_accuracy")
    if not _is_number(best) or not 0 <= best <= 1:
        bad("best_val_accuracy", "a fraction in [0, 1]")
    best_epoch = ckpt.get("best_epoch")
    if not _is_int(best_epoch) or not 1 <= best_epoch <= epoch + 1:
        bad("best_epoch", f"an epoch in 1..{epoch + 1}")
    for field in ("model", "best_model"):
        if not _state_dict(ckpt.get(field)) or not ckpt[field]:
            bad(field, "a state dict of tensors")
    if "ema_model" in ckpt and not _state_dict(ckpt["ema_model"]):
        bad("ema_model", "a state dict of tensors")
    if not isinstance(ckpt.get("optimizer"), dict):
        bad("optimizer", "the optimizer's state (a dict)")
    rng = ckpt.get("torch_rng")
    if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.dim() != 1:
        bad("torch_rng", "torch's random state (a uint8 tensor)")
    if "wall_seconds" in ckpt:
        wall = ckpt["wall_seconds"]
        if not _is_number(wall) or wall < 0:
            bad("wall_seconds", "a finite number of seconds >= 0")
    return ckpt
