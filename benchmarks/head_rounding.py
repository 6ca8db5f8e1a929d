"""n-bit head rounding: nearest against GPTQ, with the same per-class output-clipped scales.

For a few LB-CNN bodies, fit the ELM head on the fit part of a 10,000-image budget
(seed-0 split, as ``lbcnn optimize`` makes it: MNIST 9,000 fit + 1,000 validation;
GTSRB 8,230 + 1,770 in whole tracks, Y channel), quantize it with per-class scales
clipped for the least logit error and bias correction, rounded to nearest or by GPTQ
through the centred training features' Gram, and score float, nearest and GPTQ heads
on the validation images (never the test set). BLAS runs on one thread, as in an
optimizer trial. Prints JSON.

    python benchmarks/head_rounding.py [--dataset gtsrb|mnist] [--kernel-seed 1]
"""
import argparse
import json
import platform
import time

import numpy as np
from threadpoolctl import threadpool_limits

from lbcnn.data import load_dataset
from lbcnn.heads.elm import RidgeAccumulator, one_vs_rest_targets
from lbcnn.heads.quantize import centred_gram, dequantize, quantize_head, sample_rows
from lbcnn.models.lbcnn import LBCNNBody
from lbcnn.preprocess import rgb_to_y

# (filters, head bits, C values)
CASES = {"gtsrb": [((30,), 4, (0.005, 0.01, 0.02)), ((30,), 3, (0.005, 0.01)),
                   ((20,), 5, (0.01, 0.02)), ((10,), 4, (0.02,))],
         "mnist": [((80, 1, 2), 3, (3e-4,)), ((40, 4, 1), 3, (1e-3,)), ((60, 4, 1), 4, (1e-3,))]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="gtsrb", choices=sorted(CASES))
    ap.add_argument("--kernel-seed", type=int, default=1)
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    images = rgb_to_y if args.dataset == "gtsrb" else (lambda x: x)
    tr, va = ds.split(10000, 0.1, 0)
    k = ds.n_classes
    x_fit, x_val = images(ds.x_train[tr]), images(ds.x_train[va])
    y_fit, y_val = ds.y_train[tr], ds.y_train[va]
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for filters, bits, Cs in CASES[args.dataset]:
            body = LBCNNBody.random(x_fit.shape[1:], filters, 1, args.kernel_seed, ds.input_scale)
            h, hv = body.transform(x_fit), body.transform(x_val)
            mu = h.mean(0, dtype=np.float64)
            sample = (h[sample_rows(len(h))] - mu).astype(np.float32)
            t0 = time.perf_counter()
            gram = centred_gram(h, mu)
            t_gram = time.perf_counter() - t0
            for C in Cs:
                acc = RidgeAccumulator(h.shape[1], k, C)
                acc.update(h, one_vs_rest_targets(y_fit, k))
                w = acc.solve()
                acc.release()

                def score(W, b):
                    return round(100 * float(((hv @ W + b).argmax(1) == y_val).mean()), 2)

                row = {"filters": list(filters), "features": int(h.shape[1]), "bits": bits,
                       "C": C, "float": score(w, np.zeros(k, np.float32))}
                for rounding in ("nearest", "gptq"):
                    t0 = time.perf_counter()
                    meta, arrays = quantize_head(w, np.zeros(k, np.float32), bits, per_class=True,
                                                 feature_mean=mu, feature_sample=sample,
                                                 feature_gram=gram if rounding == "gptq" else None,
                                                 rounding=rounding)
                    row[rounding] = score(*dequantize(meta, arrays))
                    row[f"{rounding}_seconds"] = round(time.perf_counter() - t0, 2)
                row["gram_seconds"] = round(t_gram, 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(json.dumps({"dataset": args.dataset, "fit_images": int(len(tr)),
                      "val_images": int(len(va)), "kernel_seed": args.kernel_seed,
                      "color": "y" if args.dataset == "gtsrb" else "gray",
                      "machine": f"{platform.machine()}, 1 BLAS thread", "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
