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


def cbcnn_training_bytes(input_shape, blocks, dense, n_classes: int, batch_size: int,
                         n_images: int, eval_batch: int = 512, copies: int = 1) -> dict:
    """Peak memory of ``train_cbcnn`` (an upper estimate), in parts.

    ``weights``: each value (latent float32) with its gradient, Adam's two moments, the
    best epoch's copy and the average (``--ema``), and the checkpoint being written (the
    state copied, serialized and copied once more), 14 float32 copies (``copies``
    networks: 2 with a teacher). ``batch``: per training image, every
    block's conv output (and its signed input) kept for the backward pass with the pool's
    indices, BN and sign outputs and their gradients, 24 bytes a value. ``images``: the
    fit and validation images as float32 tensors, built through a float64 preprocessing
    step (12 bytes a pixel). ``eval``: one validation batch's widest conv output and the
    layers after it, no gradients (10 bytes a value). A training step and a validation
    batch never overlap, so the total takes the larger of the two. Measured peaks were
    1.6x to 3.7x below it (benchmarks/notes/2026-12-04-hostile-input.md).
    """
    h, w, c = (int(v) for v in input_shape)
    params = 0
    conv_values = 0          # conv output values of one image, all blocks
    widest = 0
    cin = c
    for width in blocks:
        width = int(width)
        params += 9 * cin * width + 4 * width
        conv_values += width * h * w + cin * h * w   # the output and the signed input
        widest = max(widest, width * h * w)
        cin, h, w = width, h // 2, w // 2
    din = cin * h * w
    for width in list(dense) + [n_classes]:
        width = int(width)
        params += din * width + 4 * width
        conv_values += 2 * (din + width)
        din = width
    parts = {"weights": 56 * params * max(int(copies), 1),
             "batch": 24 * int(batch_size) * conv_values,
             "images": 12 * int(n_images) * int(input_shape[0]) * int(input_shape[1])
             * max(int(input_shape[2]), 1),
             "eval": 10 * int(eval_batch) * widest}
    parts["total"] = parts["weights"] + parts["images"] + max(parts["batch"], parts["eval"])
    return parts
