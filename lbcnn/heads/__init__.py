"""Output layers that sit on a fixed binary body."""
from .elm import RidgeAccumulator, solve_dual, one_vs_rest_targets

__all__ = ["RidgeAccumulator", "solve_dual", "one_vs_rest_targets"]
