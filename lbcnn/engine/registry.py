"""Which family compiles a model and runs a plan: each family registers itself.

``compile_plan`` and the NumPy engine look families up here instead of
importing every family's module, so no plan module imports another
(``plan`` is LB-CNN's; ``cbcnn_plan`` and ``hybrid_plan`` register the same way).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class _Compiler:
    family: str
    accepts: Callable[[object], bool]
    compile: Callable


@dataclass(frozen=True)
class _Runner:
    run_ops: Callable
    scores: Callable
    features: Callable | None  # packed head input -> integer features, where packed


_COMPILERS: list[_Compiler] = []
_RUNNERS: dict[str, _Runner] = {}


def register_compiler(family: str, accepts: Callable[[object], bool], compile: Callable) -> None:
    """``compile(model, head=None, bits=8)`` for models where ``accepts(model)``."""
    _COMPILERS[:] = [c for c in _COMPILERS if c.family != family]
    _COMPILERS.append(_Compiler(family, accepts, compile))


def register_runner(family: str, run_ops: Callable, scores: Callable,
                    features: Callable | None = None) -> None:
    _RUNNERS[family] = _Runner(run_ops, scores, features)


def compiler_for(model) -> Callable:
    for c in _COMPILERS:
        if c.accepts(model):
            return c.compile
    supported = ", ".join(c.family for c in _COMPILERS)
    raise ConfigError(f"the integer engine cannot compile a {type(model).__name__}: "
                      f"unsupported model or layer type (supported: {supported})")


def runner_for(plan) -> _Runner:
    family = getattr(plan, "family", "lbcnn")
    if family not in _RUNNERS:
        raise ConfigError(f"the NumPy engine has no runner for {family!r} plans")
    return _RUNNERS[family]
