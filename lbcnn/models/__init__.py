"""Model families, in a small timm-style registry, and the trainer each family's
estimator calls in ``fit``.

Trainers live in ``lbcnn.train``, which sits after the models on the data's path:
it registers each family's trainer here (``register_trainer``), and ``trainer_for``
imports ``lbcnn.train`` by name on the first lookup, so no model module imports a
trainer and ``CBCNN().fit(X, y)`` still trains.
"""
from __future__ import annotations

from ..errors import ConfigError
from ..registry import Registry

_REGISTRY: dict[str, type] = {}

# family -> trainer(dataset, *, model, **settings) -> result dict with "history"
TRAINERS = Registry("trainer", providers=("lbcnn.train.cbcnn",))


def register_model(name: str, cls: type) -> type:
    _REGISTRY[name] = cls
    return cls


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs):
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


def register_trainer(family: str, trainer) -> None:
    TRAINERS.register(family, trainer)


def trainer_for(family: str):
    trainer = TRAINERS.get(family)
    if trainer is None:
        raise ConfigError(f"no trainer registered for the {family} family")
    return trainer


from . import lbcnn as _lbcnn  # noqa: E402,F401  (registers the family)
from . import cbcnn as _cbcnn  # noqa: E402,F401  (registers the family)
from . import hybrid as _hybrid  # noqa: E402,F401  (registers the family)
from . import lowbit as _lowbit  # noqa: E402,F401  (registers the family)


def is_cbcnn(model) -> bool:
    return isinstance(model, _cbcnn.CBCNN)


def is_hybrid(model) -> bool:
    return isinstance(model, _hybrid.Hybrid)


def is_lowbit(model) -> bool:
    return isinstance(model, _lowbit.LowBitCNN)


def load_model(path):
    """Load any native model file, dispatching on its family."""
    from ..errors import DataError, LbcnnError
    from ..io.native import load_model_file

    config, arrays = load_model_file(path)
    loaders = {"lbcnn": _lbcnn.load_lbcnn, "cbcnn": _cbcnn.load_cbcnn,
               "hybrid": _hybrid.load_hybrid, "lowbit": _lowbit.load_lowbit}
    family = config.get("family")
    if family not in loaders:
        raise ConfigError(f"{path}: unknown model family {family!r}")
    try:
        return loaders[family](config, arrays)
    except LbcnnError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as exc:
        # the validator checks what it knows; anything it missed still gets one line
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise DataError(f"{path}: damaged {family} model file ({type(exc).__name__}"
                        f"{': ' + detail if detail else ''})") from None
