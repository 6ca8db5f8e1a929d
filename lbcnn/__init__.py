"""lbcnn: light binary CNNs for TinyML.

The data's path through the package (docs/ARCHITECTURE.md):
``data`` -> ``binary`` (shared +-1 primitives) -> ``models`` (one module per
family: the body) -> ``heads`` (ELM and friends) -> ``train`` (search,
optimize, training) -> ``engine`` -> ``deploy``; ``io`` opens every artefact.

The names below are imported on first use, so ``import lbcnn`` (and ``lbcnn --version``)
does not pay for torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {"Dataset": "lbcnn.data", "load_dataset": "lbcnn.data",
         "create_model": "lbcnn.models", "list_models": "lbcnn.models",
         "load_model": "lbcnn.models", "LBCNN": "lbcnn.models.lbcnn",
         "LBCNNBody": "lbcnn.models.lbcnn", "search": "lbcnn.train.search"}
__all__ = ["LBCNN", "LBCNNBody", "Dataset", "load_dataset", "search", "create_model",
           "list_models", "load_model", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lbcnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
