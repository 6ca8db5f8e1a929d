"""Issue 5: integer engine (generated C, checked against NumPy on a slice) vs float test accuracy.

    LBCNN_DATA=../shared/data python benchmarks/accuracy_engine.py
MNIST: runs/mnist404/model.npz; GTSRB: runs/gtsrb202/model.npz (20,2); Olivetti: a
search on the paper split, filters 5,4, 3 trials, seed 0 (trained here).
"""
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from lbcnn.data import load_dataset
from lbcnn.deploy.c_common import CFLAGS, find_cc
from lbcnn.deploy.c_export import export_c
from lbcnn.engine import NumpyEngine, compile_plan, dequantized_model
from lbcnn.models import load_model
from lbcnn.train.search import search


def run(name, ds, model, source):
    plan = compile_plan(source)
    ref = dequantized_model(model, plan)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        export_c(plan, tmp, measure=False)
        subprocess.run([find_cc(), *CFLAGS, str(tmp / "model.c"), str(tmp / "main.c"), "-o",
                        str(tmp / "m")], check=True)
        pc = np.array([int(v) for v in subprocess.run(
            [str(tmp / "m")], input=np.ascontiguousarray(ds.x_test).tobytes(),
            capture_output=True, check=True).stdout.split()])
    pf = model.predict(ds.x_test)
    pd = ref.predict(ds.x_test)
    k = min(500, len(ds.x_test))
    pn = NumpyEngine(plan).predict(ds.x_test[:k])
    return {"dataset": name, "model": str(source if isinstance(source, str) else "in-memory"),
            "filters": list(model.body_.filters), "n_test": int(len(ds.y_test)),
            "float32_head_acc": float((pf == ds.y_test).mean()),
            "dequantized_8bit_float_acc": float((pd == ds.y_test).mean()),
            "integer_c_acc": float((pc == ds.y_test).mean()),
            "integer_vs_dequantized_float_agreement": float((pc == pd).mean()),
            f"numpy_engine_vs_c_first_{k}": float((pn == pc[:k]).mean())}


res = []
ds = load_dataset("mnist")
res.append(run("mnist", ds, load_model("runs/mnist404/model.npz"), "runs/mnist404/model.npz"))
ds = load_dataset("gtsrb")
res.append(run("gtsrb", ds, load_model("runs/gtsrb202/model.npz"), "runs/gtsrb202/model.npz"))
ds = load_dataset("olivetti", split="paper")
m = search(ds, filters=(5, 4), trials=3, seed=0, device="cpu", progress=False).model
res.append(run("olivetti", ds, m, m))
print(json.dumps(res, indent=1))
