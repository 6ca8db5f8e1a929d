"""Training checkpoints: one ``checkpoint.pt`` per run folder, written atomically after
every epoch, read back with ``torch.load(weights_only=True)`` (tensors, numbers, strings
and containers only), and the check that a resumed run has the same settings."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..outputs import atomic_write_with

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(obj, path: Path) -> None:
    atomic_write_with(path, lambda fh: torch.save(obj, fh))


# what a checkpoint's run config means by a key it lacks (written before the key existed)
CONFIG_DEFAULTS = {"precision": "fp32", "shift": 0.0, "rotate": 0.0, "zoom": 0.0, "flip": False,
                   "erase": 0.0, "lr_schedule": "exp", "warmup": None, "float_twin": False,
                   "distill": False, "teacher_epochs": None, "distill_weight": None,
                   "temperature": None, "teacher_fingerprint": None}
# keys a checkpoint written before they existed cannot be checked against
UNKNOWN_WHEN_ABSENT = ("data_fingerprint",)
_KEY_TEXT = {"data_fingerprint": "the data (every image and label, as loaded)"}

CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "torch_rng", "history",
                   "best_val_accuracy", "best_epoch", "best_model")


def load_checkpoint(path) -> dict:
    """A training checkpoint, or one line saying why it cannot be used.

    ``weights_only=True`` never runs pickled code; its own refusal message
    suggests ``weights_only=False``, which must not reach a user.
    """
    import pickle

    from ..io.sniff import require_regular_file
    from ..metadata import validate_checkpoint

    path = Path(path)
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        raise DataError(f"checkpoint {path} is missing or empty; start again without --resume")
    require_regular_file(path, "checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(f"checkpoint {path} holds Python objects other than tensors and plain "
                        f"values; lbcnn refuses to load it") from None
    except Exception as exc:  # noqa: BLE001  a damaged file breaks torch's unpickler anywhere
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"checkpoint {path} is corrupt or truncated ({first[:120]})") from None
    if not isinstance(ckpt, dict):
        raise DataError(f"checkpoint {path} is not an lbcnn training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise DataError(f"checkpoint {path} lacks {', '.join(missing)}; it is not an lbcnn "
                        f"training checkpoint or it is damaged")
    return validate_checkpoint(ckpt, f"checkpoint {path}")


def check_resume_config(saved: dict, config: dict, ckpt_path, exact: bool = False,
                        defaults: dict | None = None) -> None:
    """Refuse to resume when a setting differs (all of ``config``'s keys; with ``exact``,
    also keys only the checkpoint has). Checkpoints written before bf16, augmentation and
    the recipe options lack those keys: ``defaults`` (a CBCNN run's ``CONFIG_DEFAULTS``
    unless given) says what they meant."""
    config = {k: v for k, v in config.items() if k in saved or k not in UNKNOWN_WHEN_ABSENT}
    saved = {**(CONFIG_DEFAULTS if defaults is None else defaults), **saved}
    diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
    if exact and not diff and saved != config:
        diff = {k: (v, None) for k, v in saved.items() if k not in config}
    if diff:
        changed = "; ".join(f"{_KEY_TEXT.get(k, k)}: run {a!r}, now {b!r}"
                            for k, (a, b) in diff.items())
        why = (" (the data changed since the run started: resuming would train epochs on two "
               "datasets; start a new run)" if "data_fingerprint" in diff else "")
        raise ConfigError(f"cannot resume {ckpt_path}: these settings differ from the run's: "
                          f"{changed}{why}")


def cpu_state(sd: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in sd.items()}
