"""Memory planning: estimate before allocating, refuse with the size and the fix."""
from __future__ import annotations

from .errors import MemoryPlanError
from .settings import memory_budget_bytes


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"


def require(nbytes: int, what: str, fix: str) -> None:
    """Raise MemoryPlanError when ``nbytes`` exceeds the memory budget."""
    budget = memory_budget_bytes()
    if nbytes > budget:
        raise MemoryPlanError(
            f"{what} needs {human_bytes(nbytes)} but only {human_bytes(budget)} is available; {fix}"
        )
