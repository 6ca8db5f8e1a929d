"""Binary primitives shared by every model family (imported on first use: ``pooled_size``
serves the CLI's parser without torch)."""
import importlib

_LAZY = {"random_sign_kernels": ".kernels", "sign_kernels_to_torch": ".kernels",
         "maxpool_same": ".pooling", "pooled_size": ".pooling"}
__all__ = ["random_sign_kernels", "sign_kernels_to_torch", "maxpool_same", "pooled_size"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
