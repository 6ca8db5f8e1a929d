"""Does re-estimating a trained CBCNN's batch-norm statistics on clean training images
change its validation accuracy?

A run trained with random erasing or shifts keeps BN running statistics of augmented
batches; each BN + sign folds into a fixed threshold per channel, so those statistics
set the deployed thresholds. This script rebuilds the run's own training/validation
split (same dataset, ``--train-size``, ``--val-fraction`` and ``--seed`` as the run),
re-estimates the statistics on the clean training images
(``lbcnn.train.cbcnn.recalibrate_batch_norm``) and prints validation accuracy before and
after as one JSON object. It never reads the test split. With ``--out`` it writes the
recalibrated model (a normal model file) for ``lbcnn evaluate`` / export.

    LBCNN_DATA=../shared/data python benchmarks/cbcnn_bn_recalibration.py \\
        runs/fm/model.npz --dataset fashion_mnist --seed 0 --out runs/fm/model-bn.npz
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lbcnn.data import load_dataset
from lbcnn.models import load_model
from lbcnn.models.cbcnn import save_cbcnn
from lbcnn.outputs import check_out_file
from lbcnn.train.cbcnn import recalibrate_batch_norm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=100,
                    help="recalibration batch size (the training batch size)")
    ap.add_argument("--out", default=None, help="write the recalibrated model here")
    args = ap.parse_args()
    if args.out:
        check_out_file(args.out)

    model = load_model(args.model)
    ds = load_dataset(args.dataset)
    tr_idx, val_idx = ds.split(args.train_size, args.val_fraction, args.seed)
    x_val, y_val = ds.x_train[val_idx], ds.y_train[val_idx]
    before = float(model.score(x_val, model.classes_[y_val]))
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        recalibrate_batch_norm(model.net, model.to_tensor(ds.x_train[tr_idx]).cpu(),
                               args.batch_size)
    seconds = time.perf_counter() - t0
    after = float(model.score(x_val, model.classes_[y_val]))
    if args.out:
        meta = {k: v for k, v in model.meta_.items()
                if k not in ("family", "preset", "net", "preprocess", "classes")}
        meta.update(val_accuracy=after, test_accuracy=None,
                    bn_recalibrated_on=f"{len(tr_idx)} clean training images")
        save_cbcnn(model, args.out, **meta)
    print(json.dumps({"model": args.model, "dataset": ds.name, "seed": args.seed,
                      "train_images": int(len(tr_idx)), "val_images": int(len(val_idx)),
                      "val_accuracy_before": before, "val_accuracy_after": after,
                      "recalibration_seconds": round(seconds, 2), "out": args.out,
                      "machine": platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
