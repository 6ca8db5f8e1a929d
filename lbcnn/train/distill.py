"""Knowledge distillation: the loss, the float twin (teacher) and its file (CBCNN here;
the lowbit family's twin is its own network run in float, ``train.qat``).

The teacher is the *float twin* of a CBCNN: the same layers (3x3 convs, 2x2
max-pools, batch norms, dense layers, final BN) with real-valued weights and
ReLU where the CBCNN binarizes. It is trained by ``train_cbcnn(float_twin=True)``
with cross-entropy on the student's own training split, chosen on the
student's own validation split, and never sees the test set. Its file records
a fingerprint of that split; a student refuses a teacher trained on another
split, since the teacher's training images could then include the student's
validation images and bias the epoch choice.

Teacher files are ``.npz`` (JSON config + float32 arrays, no pickle) in their
own format (``lbcnn-teacher``): they are training aids, not deployable models,
so ``lbcnn evaluate`` / ``export`` do not read them.
"""
from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..binary.quantizers import identity
from ..errors import ConfigError, DataError

TEACHER_FORMAT = "lbcnn-teacher"
TEACHER_VERSION = 1
TEACHER_FILE = "teacher.npz"


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): ``T^2 * KL(softmax(t / T) || softmax(s / T))``, mean over samples.

    The T^2 factor keeps the soft term's gradient scale independent of T.
    """
    T = float(temperature)
    log_p_s = F.log_softmax(student.float() / T, dim=1)
    log_p_t = F.log_softmax(teacher.float() / T, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    return kl.mean() * (T * T)


def check_distill_settings(weight: float, temperature: float) -> None:
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise ConfigError(f"distill weight must be in [0, 1], got {weight}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")


def make_float_twin(net):
    """Turn a freshly built ``CBCNNNet`` into its float twin, in place, and return it:
    weights and inputs pass unquantized, every ``BinaryActivation`` becomes ReLU."""
    from ..binary.layers import BinaryActivation, BinaryConv2d, BinaryLinear

    for m in net.modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            m.input_quantizer_name = m.kernel_quantizer_name = "identity"
            m.input_quantizer = m.kernel_quantizer = identity
            m.scale = False
        elif isinstance(m, BinaryActivation):
            m.quantizer_name = "relu"
            m.quantizer = torch.relu
    net.float_twin = True
    return net


def is_float_twin(net) -> bool:
    return bool(getattr(net, "float_twin", False))


def split_fingerprint(dataset_name: str, tr_idx, val_idx) -> str:
    """sha256 over the dataset name and the training / validation indices."""
    h = hashlib.sha256(str(dataset_name).encode())
    for idx in (tr_idx, val_idx):
        a = np.ascontiguousarray(np.asarray(idx, dtype=np.int64))
        h.update(len(a).to_bytes(8, "little"))
        h.update(a.tobytes())
    return h.hexdigest()


def teacher_fingerprint(net) -> str:
    """sha256 over a teacher's tensors (names, shapes, bytes): what a resumed student
    compares, since a file's bytes also hold zip timestamps."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        a = np.ascontiguousarray(v.detach().cpu().numpy())
        h.update(k.encode())
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_teacher(net, path, *, preprocess: dict, dataset: str, split: str,
                 family: str = "cbcnn_float_twin", **meta) -> Path:
    from ..outputs import atomic_write_with, strict_json

    path = Path(path)
    arrays = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
    for name, value in arrays.items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ConfigError(f"refusing to save {path}: teacher array {name!r} holds NaN or inf")
    config = {"format": TEACHER_FORMAT, "version": TEACHER_VERSION, "family": family,
              "net": net.config(), "activation": "relu", "preprocess": preprocess,
              "dataset": dataset, "split": split, **meta}
    arrays["__config__"] = np.frombuffer(strict_json(config).encode(), dtype=np.uint8)
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))
    return path


def load_teacher(path, *, input_shape, n_classes: int, preprocess: dict, split: str,
                 device=None):
    """The float twin in ``path`` (eval mode, no gradients), checked against the student.

    Every failure is one ``ConfigError`` / ``DataError`` line.
    """
    from ..models.cbcnn import CBCNNNet

    path = Path(path)
    config, arrays = read_teacher_file(path, "cbcnn_float_twin")
    cfg = config.get("net")
    if not isinstance(cfg, dict):
        raise DataError(f"--teacher {path}: damaged network config")
    widths = cfg.get("blocks"), cfg.get("dense")
    if not all(
            isinstance(w, list) and len(w) <= 8 and all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in w)
            for w in widths):
        raise DataError(f"--teacher {path}: damaged network config (blocks / dense)")
    if cfg.get("input_shape") != list(input_shape) or cfg.get("n_classes") != int(n_classes):
        raise ConfigError(f"--teacher {path} takes {cfg.get('input_shape')} inputs and "
                          f"{cfg.get('n_classes')} classes; this run has {list(input_shape)} "
                          f"and {n_classes}")
    try:
        net = CBCNNNet(cfg["input_shape"], cfg["blocks"], cfg["dense"], cfg["n_classes"], False)
    except (TypeError, KeyError, ValueError, ConfigError) as exc:
        raise DataError(f"--teacher {path}: damaged network config ({exc})") from None
    if config.get("preprocess") != preprocess:
        raise ConfigError(f"--teacher {path} was trained with preprocessing "
                          f"{config.get('preprocess')}, this run uses {preprocess}")
    if config.get("split") != split:
        raise ConfigError(f"--teacher {path} was trained on another dataset, --train-size, "
                          f"--val-fraction or --seed: its training images may include this "
                          f"run's validation images; train the teacher with the same ones")
    make_float_twin(net)
    sd = net.state_dict()
    bad = sorted(set(sd) ^ set(arrays))
    if bad:
        raise DataError(f"--teacher {path}: arrays do not match its network ({bad[0]})")
    for k, v in sd.items():
        a = arrays[k]
        if tuple(a.shape) != tuple(v.shape) or (a.dtype.kind == "f" and not np.isfinite(a).all()):
            raise DataError(f"--teacher {path}: array {k!r} is damaged (shape or NaN/inf)")
    net.load_state_dict({k: torch.as_tensor(np.asarray(arrays[k])).to(sd[k].dtype) for k in sd})
    return frozen_teacher(net.to(device if device is not None else "cpu")), config


def read_teacher_file(path, family: str) -> tuple[dict, dict]:
    """(config, arrays) of a teacher file of ``family`` (``cbcnn_float_twin``,
    ``lowbit_float_twin``); every failure is one ConfigError / DataError line."""
    path = Path(path)
    model = "lowbit" if family.startswith("lowbit") else "cbcnn"
    if not path.is_file():
        raise ConfigError(f"--teacher: no such file {path} (train one with --float-twin, or "
                          f"use --distill)")
    not_teacher = (f"--teacher {path} is not an lbcnn teacher file (train one with "
                   f"lbcnn train --model {model} --float-twin)")
    from ..io.native import check_npz_members
    from ..metadata import load_json
    check_npz_members(path, "teacher file")  # declared sizes, before anything is allocated
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__
        raise DataError(f"--teacher {path} is not a readable teacher file ({first})") from None
    if not isinstance(arrays, dict) or "__config__" not in arrays:
        raise DataError(not_teacher)
    config = load_json(arrays.pop("__config__").tobytes(), f"--teacher {path}: config")
    if not isinstance(config, dict) or config.get("format") != TEACHER_FORMAT:
        raise DataError(not_teacher)
    version = config.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise DataError(f"--teacher {path}: config 'version' must be an integer")
    if version > TEACHER_VERSION:
        raise DataError(f"--teacher {path} was written by a newer lbcnn")
    if config.get("family", "cbcnn_float_twin") != family:
        raise ConfigError(f"--teacher {path} is a {config.get('family')} teacher; this run "
                          f"needs a {family} (lbcnn train --model {model} --float-twin)")
    return config, arrays


def frozen_teacher(net):
    """``net`` in eval mode, without gradients and channels-last, in place; returned.

    Channels-last because the student's training batches are: a teacher left in the
    default layout converts every batch and runs its forward pass 1.6-1.9x slower on a CPU
    (``benchmarks/bench_teacher_layout.py``).
    """
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(memory_format=torch.channels_last)
