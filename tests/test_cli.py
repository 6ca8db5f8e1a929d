"""The CLI end to end on small real subsets, and its one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest


def run_cli(*args, env=None):
    import os
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "lbcnn", *args], capture_output=True, text=True,
                          env=e, timeout=600)


def test_search_end_to_end_on_real_subset(data_dir, tmp_path):
    out = tmp_path / "run"
    r = run_cli("search", "--dataset", "mnist", "--filters", "8,2", "--train-size", "2000",
                "--trials", "3", "--seed", "0", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    for key in ("val_accuracy", "test_accuracy", "kbits_conv", "kbits_head", "seconds_per_trial",
                "trials", "train_size", "features"):
        assert key in summary
    assert summary["trials"] == 3 and summary["train_size"] == 2000
    assert summary["features"] == 7 * 7 * 16
    assert summary["test_accuracy"] > 0.85  # far above 10 % chance
    assert summary["kbits_conv"] == pytest.approx((9 * 8 + 9 * 16) / 1000)
    for f in ("config.json", "history.json", "history.csv", "model.npz", "trials.png",
              "summary.json"):
        assert (out / f).exists(), f
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3 and max(h["val_accuracy"] for h in history) == summary["val_accuracy"]
    r = run_cli("evaluate", str(out / "model.npz"), "--dataset", "mnist", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["n"] == 10000 and ev["accuracy"] == pytest.approx(summary["test_accuracy"])


def test_python_api_estimator(mnist):
    from lbcnn import LBCNN
    x, y = mnist.x_train[:1500], mnist.y_train[:1500]
    model = LBCNN(filters=(6, 2), random_state=0).fit(x, y)
    assert model is not None and model.coef_.shape == (7 * 7 * 12, 10)
    assert model.score(mnist.x_test[:1000], mnist.y_test[:1000]) > 0.8
    again = LBCNN(filters=(6, 2), random_state=0).fit(x, y)
    np.testing.assert_array_equal(again.coef_, model.coef_)


def test_model_file_round_trip(mnist, tmp_path):
    from lbcnn import LBCNN, load_model
    from lbcnn.models.lbcnn import save_lbcnn
    model = LBCNN(filters=(4,), random_state=1).fit(mnist.x_train[:800], mnist.y_train[:800])
    save_lbcnn(model, tmp_path / "m.npz")
    back = load_model(tmp_path / "m.npz")
    np.testing.assert_array_equal(back.predict(mnist.x_test[:300]), model.predict(mnist.x_test[:300]))
    # the file is plain npz: readable without pickle
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert "__config__" in z.files


@pytest.mark.parametrize("args,env,message", [
    (["search", "--dataset", "imagenet"], {}, "unknown dataset"),
    (["search", "--dataset", "mnist", "--trials", "0"], {}, "--trials: expected a whole number >= 1"),
    (["search", "--dataset", "mnist", "--trials", "-3"], {}, "--trials: expected a whole number >= 1"),
    (["search", "--dataset", "mnist", "--filters", "4,0"], {}, "depth multiplier"),
    (["search", "--dataset", "mnist", "--filters", "2,2,2,2"], {}, "1 to 3 conv layers"),
    (["search", "--dataset", "mnist"], {"LBCNN_DATA": "/nonexistent/dir"}, "not a folder"),
    (["search", "--dataset", "mnist", "--filters", "400,40"], {"LBCNN_MEMORY_GB": "2"}, "needs"),
    (["evaluate", "/nonexistent/model.npz", "--dataset", "mnist"], {}, "not found"),
])
def test_bad_input_gives_one_line_error(data_dir, args, env, message):
    r = run_cli(*args, env=env)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert message in lines[0] and "Traceback" not in r.stderr


def test_corrupt_npz_and_empty_class_folder_errors(tmp_path, data_dir):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    r = run_cli("search", "--dataset", f"npz:{bad}")
    assert r.returncode == 2 and "corrupt" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    r = run_cli("search", "--dataset", f"folder:{tmp_path / 'imgs'}")
    assert r.returncode == 2 and "empty" in r.stderr


def test_search_cross_validation_scores_every_training_image(mnist):
    from lbcnn.data import Dataset
    from lbcnn.errors import ConfigError
    from lbcnn.train.search import search

    ds = Dataset("mnist", mnist.x_train[:600], mnist.y_train[:600], mnist.x_test[:300],
                 mnist.y_test[:300], 10)
    r = search(ds, filters=(4,), trials=2, train_size=400, cv=4, seed=0, progress=False)
    assert r.summary["selection"] == "4-fold cross-validation"
    # pooled over 4 folds of the 400-image budget: a multiple of 1/400, not of 1/40
    for h in r.history:
        assert h["val_accuracy"] * 400 == pytest.approx(round(h["val_accuracy"] * 400), abs=1e-9)
        assert 0.5 < h["val_accuracy"] < 1.0
    assert r.summary["refit_on_train_plus_val"] and r.model.coef_.shape == (14 * 14 * 4, 10)
    with pytest.raises(ConfigError, match="cv must be"):
        search(ds, filters=(4,), trials=1, cv=1, progress=False)
