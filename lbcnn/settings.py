"""Process-wide settings read from the environment, in one place."""
from __future__ import annotations

import math
import os
from pathlib import Path


def data_dir() -> Path | None:
    """The offline data folder named by ``LBCNN_DATA``, or None when unset."""
    value = os.environ.get("LBCNN_DATA")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where downloads and compiled kernels are cached (``LBCNN_CACHE``)."""
    value = os.environ.get("LBCNN_CACHE")
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lbcnn"


def default_device() -> "torch.device":
    """``LBCNN_DEVICE``, checked like ``--device``; else CUDA when there is one."""
    import torch
    if os.environ.get("LBCNN_DEVICE"):
        return _checked_device(os.environ["LBCNN_DEVICE"], "LBCNN_DEVICE=")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None) -> "torch.device":
    """``cpu``, ``cuda`` or ``cuda:N``; a device this machine lacks is a one-line error."""
    if device is None or device == "":
        return default_device()
    return _checked_device(device, "device ")


def _checked_device(device, what: str) -> "torch.device":
    import torch

    from .errors import ConfigError

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown {what}{device!r}; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what}{device!r} is not supported; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}{device!r} asked for, but this machine has no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{what}{device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo; a conservative fallback elsewhere."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def memory_budget_bytes() -> int:
    """What one allocation plan may use: ``LBCNN_MEMORY_GB`` or 80% of free RAM."""
    text = os.environ.get("LBCNN_MEMORY_GB")
    if text:
        from .errors import ConfigError
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or not 0 < value <= 1 << 20:
            raise ConfigError(f"LBCNN_MEMORY_GB={text!r}: expected a number of gigabytes "
                              f"above 0 (e.g. 8 or 0.5)")
        return int(value * (1 << 30))
    return int(available_memory_bytes() * 0.8)


def native_enabled() -> bool:
    """``LBCNN_NATIVE``: 1 (default) builds and uses the C feature kernel, 0 the torch path."""
    text = os.environ.get("LBCNN_NATIVE", "1").strip()
    if text not in ("0", "1", ""):
        from .errors import ConfigError
        raise ConfigError(f"LBCNN_NATIVE={text!r}: expected 0 (torch path) or 1 (C kernel)")
    return text != "0"


def check_environment() -> None:
    """The ``LBCNN_*`` settings, checked like options before a command starts
    (``LBCNN_DEVICE`` when a command picks its default device: ``--device`` overrides it)."""
    memory_budget_bytes()
    native_enabled()
