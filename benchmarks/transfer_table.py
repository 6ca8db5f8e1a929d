"""Issue 6 transfer table: one (target, per-class budget) cell per call.

For each head (float, binary): ``lbcnn.train.transfer.transfer`` with
``compare_scratch=True`` (scratch = same architecture, same labelled images and
train/validation split, the transfer run's wall-clock as its time budget, at
least one epoch). Once per cell it also trains a longer scratch reference
(``--ref-epochs`` epochs, no time cap) on the same images. Appends JSON lines
to ``--out``.

    OMP_NUM_THREADS=1 python benchmarks/transfer_table.py --backbone runs/cbcnn-fashion/model.npz \
        --target mnist --per-class 10 --out benchmarks/transfer_issue6.jsonl
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lbcnn.data import load_dataset
from lbcnn.models import load_model
from lbcnn.train.transfer import (_budget_split, backbone_input, per_class_indices, plan_conversion,
                            scratch, summary, transfer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--per-class", type=int, required=True)
    ap.add_argument("--heads", default="float,binary")
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ref-epochs", type=int, default=0, help="0: skip the longer scratch reference")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset(a.target, seed=a.seed)
    # warm-up (imports, allocator, Pillow) so the first timed run is not charged for it
    from lbcnn.data import Dataset
    wds = Dataset(ds.name, ds.x_train, ds.y_train, ds.x_test[:10], ds.y_test[:10], ds.n_classes)
    warm = transfer(a.backbone, wds, head="float", per_class=1, epochs=1, seed=a.seed)["model"]
    del warm
    rows = []
    for head in [h for h in a.heads.split(",") if h and h != "none"]:
        r = transfer(a.backbone, ds, head=head, per_class=a.per_class, epochs=a.epochs,
                     seed=a.seed, compare_scratch=True, verbose=True)
        s = summary(r)
        s.pop("history")
        s["kind"] = "transfer"
        rows.append(s)
        sc = s["scratch"]
        print(f"{a.target} {a.per_class}/class {head}: transfer {100 * s['test_accuracy']:.2f} % "
              f"({s['wall_seconds']:.2f} s, best epoch {s['best_epoch']}); scratch same wall-clock "
              f"{100 * sc['test_accuracy']:.2f} % ({sc['epochs_run']} epochs, {sc['wall_seconds']:.2f} s)",
              flush=True)
    if a.ref_epochs:
        model = load_model(a.backbone)
        shape, acc = backbone_input(model)
        plan = plan_conversion(ds.input_shape, shape, acc, what=ds.name)
        budget = per_class_indices(ds.y_train, a.per_class, a.seed)
        xb, yb = ds.x_train[budget], ds.y_train[budget]
        tr, va = _budget_split(yb, a.per_class, 0.2, a.seed)
        t0 = time.perf_counter()
        ref = scratch(model, ds, plan, xb, yb, tr, va, budget_seconds=float("inf"),
                      seed=a.seed, max_epochs=a.ref_epochs)
        ref.update(kind="scratch_reference", dataset=ds.name, per_class=a.per_class, seed=a.seed,
                   test_split=ds.test_split, test_size=len(ds.x_test), total_seconds=time.perf_counter() - t0)
        rows.append(ref)
        print(f"{a.target} {a.per_class}/class scratch reference ({a.ref_epochs} epochs, no time cap): "
              f"{100 * ref['test_accuracy']:.2f} % ({ref['wall_seconds']:.1f} s)", flush=True)
    with open(a.out, "a") as fh:
        for row in rows:
            row["machine"] = platform.processor() or platform.machine()
            row["threads"] = torch.get_num_threads()
            fh.write(json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    main()
