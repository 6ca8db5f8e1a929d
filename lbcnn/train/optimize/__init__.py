"""``lbcnn optimize``: multi-objective, multi-fidelity search over LB-CNN architectures.

- ``space``: the choices (layers, depth multipliers, nl, C, head bits, colour);
- ``trial``: the objective, a pure function of (config, kernel seed, data, rung);
- ``pareto``: Pareto rank + crowding distance, which ranks each rung;
- ``study``: the Optuna study (SQLite in the run folder, or a shared database);
- ``runner``: trials in-process or as Ray tasks;
- ``core``: the successive-halving loop, the final refit and the one test read;
- ``report``: trials.csv, front.csv/json, front.png, the terminal table.
"""
import importlib

# imported on first use: the CLI reads ``space``'s defaults to build its parser without
# paying for torch and optuna (``lbcnn --version``)
_LAZY = {"OBJECTIVES": ".core", "OptimizeResult": ".core", "optimize": ".core",
         "parse_objectives": ".core", "Config": ".space", "SearchSpace": ".space"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["optimize", "OptimizeResult", "SearchSpace", "Config", "OBJECTIVES",
           "parse_objectives"]
