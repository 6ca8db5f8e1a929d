"""n-bit head weight scale: largest weight (absmax), weight-MSE clipping and
output (logit-error) clipping, per tensor and per class.

For a few LB-CNN bodies, fit the ELM head on the fit part of a 10,000-image
budget (seed-0 split: MNIST 9,000 fit + 1,000 validation; GTSRB 8,230 + 1,770
in whole tracks), quantize it every way, and score each head on the validation
images and on 5,000 *other* training images (outside the budget; never the
test set). Prints JSON.

    python benchmarks/head_clipping.py [--dataset mnist|gtsrb] [--kernel-seed 7]
"""
import argparse
import json
import time

import numpy as np

from lbcnn.data import load_dataset
from lbcnn.heads.elm import RidgeAccumulator, one_vs_rest_targets
from lbcnn.heads.quantize import dequantize, quantize_head, sample_rows
from lbcnn.models.lbcnn import LBCNNBody
from lbcnn.preprocess import rgb_to_y

BODIES = {"mnist": [((80, 1, 2), 3e-4), ((20, 4, 2), 3e-4), ((40, 1), 5e-4)],
          "gtsrb": [((10,), 3e-2), ((30,), 1e-2)]}  # GTSRB on the Y channel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="mnist", choices=sorted(BODIES))
    ap.add_argument("--kernel-seed", type=int, default=7)
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    images = rgb_to_y if args.dataset == "gtsrb" else (lambda x: x)
    tr, va = ds.split(10000, 0.1, 0)
    rest = np.setdiff1d(np.arange(len(ds.y_train)), np.concatenate([tr, va]))
    other = np.random.default_rng(123).choice(rest, 5000, replace=False)
    rows = []
    k = ds.n_classes
    for filters, C in BODIES[args.dataset]:
        t0 = time.perf_counter()
        x_fit = images(ds.x_train[tr])
        body = LBCNNBody.random(x_fit.shape[1:], filters, 1, args.kernel_seed, ds.input_scale)
        h = body.transform(x_fit)
        acc = RidgeAccumulator(h.shape[1], k, C)
        acc.update(h, one_vs_rest_targets(ds.y_train[tr], k))
        w = acc.solve()
        mu = h.mean(0, dtype=np.float64)
        pick = sample_rows(len(h))
        sample = (h[pick] - mu).astype(np.float32)
        hv, ho = body.transform(images(ds.x_train[va])), body.transform(images(ds.x_train[other]))

        def score(W, b):
            return (round(100 * float(((hv @ W + b).argmax(1) == ds.y_train[va]).mean()), 2),
                    round(100 * float(((ho @ W + b).argmax(1) == ds.y_train[other]).mean()), 2))

        row = {"filters": list(filters), "features": int(h.shape[1]), "C": C,
               "float": score(w, np.zeros(k, np.float32))}
        for bits in (3, 4, 5, 6, 8):
            for clip in ("absmax", "mse", "output"):
                for per_class in (False, True):
                    W, b = dequantize(*quantize_head(w, np.zeros(k, np.float32), bits, per_class,
                                                     feature_mean=mu, clip=clip,
                                                     feature_sample=sample))
                    row[f"int{bits}_{clip}{'_per_class' if per_class else ''}"] = score(W, b)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
    print(json.dumps({"dataset": args.dataset, "budget": 10000, "fit": int(len(tr)), "val": int(len(va)),
                      "other_train_images": 5000, "kernel_seed": args.kernel_seed,
                      "score": "[validation %, other-training-images %]", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
