"""Accuracy of a model file on a dataset's test split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import Dataset


def load_any(path):
    """A native model file, or a Keras .h5 in the LB-CNN layout."""
    path = Path(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        from .deploy.keras_import import import_keras_h5
        return import_keras_h5(path)
    from .models import load_model
    return load_model(path)


def evaluate_file(model_path, ds: Dataset) -> dict:
    model = load_any(model_path)
    # every family checks image shapes itself and raises a one-line DataError
    pred = model.predict(ds.x_test)
    acc = float(np.mean(pred == ds.y_test))
    return {"accuracy": acc, "n": int(len(ds.y_test)), "dataset": ds.name, "split": ds.test_split,
            "model": str(model_path)}
