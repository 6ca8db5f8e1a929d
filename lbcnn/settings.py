"""Process-wide settings read from the environment, in one place."""
from __future__ import annotations

import os
from pathlib import Path

import torch


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


def default_device() -> torch.device:
    if os.environ.get("LBCNN_DEVICE"):
        return torch.device(os.environ["LBCNN_DEVICE"])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device=None) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; a device this machine lacks is a one-line error."""
    from .errors import ConfigError

    if device is None or device == "":
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} is not supported; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but this machine has no CUDA device")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
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
    if os.environ.get("LBCNN_MEMORY_GB"):
        return int(float(os.environ["LBCNN_MEMORY_GB"]) * (1 << 30))
    return int(available_memory_bytes() * 0.8)
