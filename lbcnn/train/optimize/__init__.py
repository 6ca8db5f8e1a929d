"""``lbcnn optimize``: multi-objective, multi-fidelity search over LB-CNN architectures.

- ``space``: the choices (layers, depth multipliers, nl, C, head bits, colour);
- ``trial``: the objective, a pure function of (config, kernel seed, data, rung);
- ``pareto``: Pareto rank + crowding distance, which ranks each rung;
- ``study``: the Optuna study (SQLite in the run folder, or a shared database);
- ``runner``: trials in-process or as Ray tasks;
- ``core``: the successive-halving loop, the final refit and the one test read;
- ``report``: trials.csv, front.csv/json, front.png, the terminal table.
"""
from .core import OBJECTIVES, OptimizeResult, optimize, parse_objectives
from .space import Config, SearchSpace

__all__ = ["optimize", "OptimizeResult", "SearchSpace", "Config", "OBJECTIVES",
           "parse_objectives"]
