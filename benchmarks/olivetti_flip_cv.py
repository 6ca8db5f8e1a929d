"""Olivetti: does fitting on mirrored faces help? Repeated 5-fold CV of the paper split's
250 training images (never the 150 test images), for a few LB-CNN bodies, head bits and C,
with and without left-right mirrors of every fit fold (held-out folds are never mirrored).
Heads are quantized as the optimizer does (per-class, output-clipped, GPTQ-rounded, bias
corrected). Prints one JSON line per (body, bits, flip).

    python benchmarks/olivetti_flip_cv.py [--repeats 2] [--kernel-seed 7]
"""
import argparse
import json

import numpy as np
from threadpoolctl import threadpool_limits

from lbcnn.data import load_dataset
from lbcnn.data.splits import kfold_ids
from lbcnn.models.lbcnn import LBCNNBody
from lbcnn.train.optimize.trial import _correct, _fit_head, with_mirrors

CASES = [((5, 2, 1), 6), ((5, 2), 4), ((5, 4), 4), ((10, 1, 1), 6), ((5, 4, 1), 6)]
CS = (0.003, 0.03, 0.3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2, help="5-fold partitions (fold seeds 0..)")
    ap.add_argument("--kernel-seed", type=int, default=7)
    args = ap.parse_args()
    ds = load_dataset("olivetti", split="paper", seed=0)
    # the 250 training images only, in the order lbcnn optimize --cv pools them
    tr, va = ds.split(None, 0.1, 0)
    pool = np.concatenate([tr, va])
    x, y = ds.x_train[pool], ds.y_train[pool]
    for filters, bits in CASES:
        body = LBCNNBody.random(x.shape[1:], filters, 1, args.kernel_seed, ds.input_scale)
        for flip in (False, True):
            cv = []
            for C in CS:
                correct = 0
                for rep in range(args.repeats):
                    folds = kfold_ids(y, 5, rep)
                    for f in range(5):
                        fit, held = folds != f, folds == f
                        with threadpool_limits(limits=2, user_api="blas"):
                            w, b, _ = _fit_head(body, *with_mirrors(x[fit], y[fit], flip),
                                                ds.n_classes, C, bits)
                        correct += _correct(body, w, b, x[held], y[held])
                cv.append(round(100 * correct / (args.repeats * len(y)), 2))
            print(json.dumps({"filters": list(filters), "bits": bits, "flip": flip,
                              "features": int(body.n_features), "C": list(CS),
                              "cv_accuracy": cv, "repeats": args.repeats,
                              "kernel_seed": args.kernel_seed}), flush=True)


if __name__ == "__main__":
    main()
