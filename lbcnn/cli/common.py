"""Argument helpers shared by every subcommand."""
from __future__ import annotations

import argparse


def ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_data_args(p, required: bool = True):
    p.add_argument("--dataset", required=required,
                   help="mnist, fashion_mnist, gtsrb, olivetti, cifar10, npz:PATH or folder:PATH")
    p.add_argument("--data-path", help="explicit file or folder for a named dataset "
                   "(otherwise LBCNN_DATA, the cache, then a download)")
    p.add_argument("--split", default="default", choices=["default", "paper"],
                   help="for sources without a test set: 'paper' is Olivetti's 250/150 split")
