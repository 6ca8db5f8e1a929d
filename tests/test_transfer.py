"""Transfer from a frozen binary backbone (issue 6, part 2)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbcnn.data import Dataset
from lbcnn.errors import ConfigError
from lbcnn.train.transfer import (TransferModel, apply_conversion, backbone_state, per_class_indices,
                            plan_conversion, transfer)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def backbone(mnist, tmp_path_factory):
    """A tiny CBCNN trained for 1 epoch on 2000 MNIST images, saved as a model file."""
    from lbcnn.train.cbcnn import train_cbcnn
    ds = Dataset("mnist", mnist.x_train, mnist.y_train, mnist.x_test[:500], mnist.y_test[:500], 10)
    out = tmp_path_factory.mktemp("bb")
    r = train_cbcnn(ds, blocks=(16, 32, 32), dense=(64,), epochs=1, batch_size=32, lr_start=3e-3,
                    lr_end=3e-3, train_size=2000, seed=0, progress=False, out_dir=out)
    return out / "model.npz"


@pytest.fixture(scope="module")
def fashion_small(data_dir):
    from lbcnn.data import load_dataset
    f = load_dataset("fashion_mnist")
    return Dataset("fashion_mnist", f.x_train, f.y_train, f.x_test[:2000], f.y_test[:2000], 10)


@pytest.fixture(scope="module")
def float_run(backbone, fashion_small):
    return transfer(str(backbone), fashion_small, head="float", per_class=50, epochs=30, seed=0,
                    compare_scratch=True)


def test_float_transfer_beats_chance_and_body_is_frozen(float_run, backbone):
    from lbcnn.models import load_model
    r = float_run
    assert r["train_size"] == 500 and r["fit_size"] + r["val_size"] == 500 and r["val_size"] > 0
    assert r["test_accuracy"] > 0.5, r["test_accuracy"]          # chance is 0.10
    assert r["backbone_unchanged"] and r["notes"] == []
    # the backbone in memory is bitwise the file it came from (params and BN buffers)
    on_disk = backbone_state(load_model(backbone))
    now = backbone_state(r["model"].backbone)
    assert on_disk.keys() == now.keys() and any("running_mean" in k for k in now)
    for k in on_disk:
        assert np.array_equal(on_disk[k], now[k]), k
    assert all(not p.requires_grad for p in r["model"].backbone.net.parameters())
    s = r["scratch"]
    assert s["epochs_run"] >= 1 and s["time_budget_seconds"] == pytest.approx(r["wall_seconds"])
    assert 0.0 <= s["test_accuracy"] <= 1.0
    json.dumps({k: v for k, v in r.items() if k != "model"}, default=str)


def test_frozen_body_bitwise_unchanged_even_when_head_trains_in_train_mode(backbone, fashion_small):
    """Features computed while the backbone is (wrongly) in train mode would move BN stats;
    the transfer must put it in eval mode and never step it."""
    from lbcnn.models import load_model
    m = load_model(backbone)
    m.net.train()
    before = {k: v.clone() for k, v in m.net.state_dict().items()}
    r = transfer(m, fashion_small, head="binary", per_class=5, epochs=3, seed=1)
    after = m.net.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not m.net.training
    assert r["model"].backbone is m


def test_forward_features_and_reset_classifier(float_run, fashion_small):
    tm = float_run["model"]
    x = fashion_small.x_test[:7]
    f = tm.forward_features(x)
    assert f.shape == (7, tm.num_features) and set(np.unique(f)) <= {-1.0, 1.0}
    direct = tm.backbone.net.forward_features(tm.backbone.to_tensor(x)).numpy()
    assert np.array_equal(f, direct)
    assert tm.decision_function(x).shape == (7, 10)
    tm2 = TransferModel(tm.backbone, "float", 10)
    tm2.reset_classifier(4)
    assert tm2.n_classes == 4 and tm2.decision_function(x).shape == (7, 4)
    with pytest.raises(ConfigError):
        tm2.reset_classifier(1)


def test_binary_head_outputs_come_from_pm1_weights(backbone, fashion_small):
    r = transfer(str(backbone), fashion_small, head="binary", per_class=20, epochs=10, seed=0)
    tm = r["model"]
    w = tm.head_weights_pm1()
    assert set(np.unique(w)) <= {-1, 1}
    x = fashion_small.x_test[:50]
    f = torch.from_numpy(tm.forward_features(x))
    bn = tm.head.bn
    manual = F.batch_norm(F.linear(f, torch.from_numpy(w).float()), bn.running_mean,
                          bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    assert torch.allclose(manual, torch.from_numpy(tm.decision_function(x)), atol=1e-5)
    # the pre-BN sums are integers (XNOR-popcount-able): +-1 inputs times +-1 weights
    s = F.linear(f, torch.from_numpy(w).float())
    assert torch.equal(s, torch.round(s))
    assert r["test_accuracy"] > 0.3


def test_refused_conversion_is_a_clear_error(backbone, rng):
    rgb = Dataset("rgb64", rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8),
                  np.repeat(np.arange(4), 10), np.zeros((4, 64, 64, 3), np.uint8),
                  np.arange(4), 4)
    with pytest.raises(ConfigError, match="channel mismatch.*3 channel.*refused"):
        transfer(str(backbone), rgb, per_class=2, channels="none")
    with pytest.raises(ConfigError, match="size mismatch.*64x64.*28x28.*refused"):
        transfer(str(backbone), rgb, per_class=2, resize="none")
    # allowed: converted, and said so
    r = transfer(str(backbone), rgb, per_class=5, epochs=2)
    assert r["conversion"] == {"gray": True, "rgb": False, "resize": [28, 28]}
    assert any("grayscale" in n for n in r["notes"]) and any("64x64 to 28x28" in n for n in r["notes"])


def test_conversion_helpers():
    x = np.zeros((2, 64, 64, 3), np.uint8)
    x[..., 0] = 200
    plan = plan_conversion(x.shape[1:], (28, 28, 1), {1})
    y = apply_conversion(x, plan)
    assert y.shape == (2, 28, 28, 1) and int(y[0, 10, 10, 0]) == round(0.299 * 200)
    gray = np.full((1, 28, 28, 1), 7, np.uint8)
    p = plan_conversion(gray.shape[1:], (28, 28, 3), {3})
    assert p["rgb"] and apply_conversion(gray, p).shape == (1, 28, 28, 3)
    assert plan_conversion((28, 28, 3), (28, 28, 1), {1, 3})["notes"] == []


def test_per_class_budget():
    y = np.repeat(np.arange(3), [5, 6, 2])
    idx = per_class_indices(y, 2, seed=0)
    assert np.bincount(y[idx]).tolist() == [2, 2, 2]
    assert np.array_equal(idx, per_class_indices(y, 2, seed=0))
    with pytest.raises(ConfigError, match="class 2 has only 2"):
        per_class_indices(y, 3, seed=0)


def test_cli_transfer_json_and_error(backbone, capsys, data_dir):
    from lbcnn.cli import main
    rc = main(["transfer", "--backbone", str(backbone), "--dataset", "olivetti", "--head", "float",
               "--per-class", "1", "--epochs", "3", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["conversion"]["resize"] == [28, 28] and out["val_size"] == 0
    assert out["test_size"] == 200 and "scratch" not in out
    rc = main(["transfer", "--backbone", str(backbone), "--dataset", "olivetti", "--head", "float",
               "--no-convert"])
    err = capsys.readouterr().err
    assert rc == 2 and "size mismatch" in err and "Traceback" not in err


def test_lbcnn_backbone_transfer_and_scratch(mnist, fashion_small):
    from lbcnn.models.lbcnn import LBCNN
    lb = LBCNN(filters=(4,), C=1e-3, random_state=0, device="cpu").fit(mnist.x_train[:500],
                                                                      mnist.y_train[:500])
    before = backbone_state(lb)
    coef = lb.coef_.copy()
    r = transfer(lb, fashion_small, head="float", per_class=20, epochs=20, seed=0,
                 compare_scratch=True)
    after = backbone_state(lb)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert np.array_equal(lb.coef_, coef)          # the backbone's own head is untouched
    tm = r["model"]
    f = tm.forward_features(fashion_small.x_test[:5])
    assert f.shape == (5, lb.body_.n_features)
    assert r["test_accuracy"] > 0.4 and 0 <= r["scratch"]["test_accuracy"] <= 1
    rb = transfer(lb, fashion_small, head="binary", per_class=20, epochs=10, seed=0)
    assert set(np.unique(rb["model"].head_weights_pm1())) <= {-1, 1} and rb["test_accuracy"] > 0.2
