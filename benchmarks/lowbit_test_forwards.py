"""Issue 30: a finished lowbit run's test accuracy through every forward, on the whole test set.

    LBCNN_DATA=DATA python benchmarks/lowbit_test_forwards.py runs/RUN [--dataset mnist]

Reads the test set once, for a run chosen on validation (train it with --no-test). Prints
one JSON object: the accuracy of the estimator's integer forward (torch, what `lbcnn
evaluate` reports), of the NumPy integer engine (`lbcnn.engine`, what the C computes), and
of the fake-quantized float forward of the chosen epoch (the network training validated,
rebuilt from the run's checkpoint), whether the two integer forwards give identical logits
on every image, and on how many images the fake-quantized class differs from the integer one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lbcnn.data import load_dataset
from lbcnn.data.resize import resize_images
from lbcnn.engine import NumpyEngine, compile_plan
from lbcnn.models import load_model
from lbcnn.models.lowbit import LowBitNet
from lbcnn.train.checkpoint import CHECKPOINT, load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a lowbit run folder (model.npz and checkpoint.pt)")
    ap.add_argument("--dataset", default=None, help="default: the one recorded in the model")
    args = ap.parse_args()
    run = Path(args.run)
    model = load_model(run / "model.npz")
    ck = load_checkpoint(run / CHECKPOINT)
    ds = load_dataset(args.dataset or ck["config"]["dataset"])
    x, y = ds.x_test, np.asarray(ds.y_test)

    est_logits = model.decision_function(x)
    eng_logits = NumpyEngine(compile_plan(model)).scores(x)

    net = LowBitNet(ck["config"]["arch"], ck["config"]["dropout"])
    net.load_state_dict(ck["best_model"])
    net.eval()
    xt = torch.from_numpy(resize_images(x, net.arch["size"])).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        fq = torch.cat([net(xt[i:i + 1000]) for i in range(0, len(xt), 1000)]).numpy()

    acc = lambda logits: float((logits.argmax(1) == y).mean())  # noqa: E731
    print(json.dumps({
        "run": str(run), "dataset": ds.name, "n_test": int(len(y)),
        "best_epoch": int(ck["best_epoch"]), "val_accuracy": float(ck["best_val_accuracy"]),
        "integer_estimator_test_accuracy": acc(est_logits),
        "numpy_engine_test_accuracy": acc(eng_logits),
        "fake_quant_test_accuracy": acc(fq),
        "integer_logits_identical": bool(np.array_equal(est_logits, eng_logits)),
        "fake_quant_class_differs_on": int((fq.argmax(1) != eng_logits.argmax(1)).sum())}))


if __name__ == "__main__":
    main()
