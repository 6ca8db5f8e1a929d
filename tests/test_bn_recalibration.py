"""recalibrate_batch_norm: BN running statistics re-estimated on given images."""
import numpy as np
import pytest
import torch

from bars import bars_dataset
from lbcnn.errors import ConfigError
from lbcnn.models.cbcnn import CBCNNNet, folded_forward
from lbcnn.train.cbcnn import recalibrate_batch_norm


def test_running_stats_are_the_average_of_the_batch_statistics():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    net = torch.nn.Sequential(bn)
    bn.running_mean.fill_(7.0)  # stale statistics from other data
    bn.running_var.fill_(9.0)
    x = torch.randn(12, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 3.0
    recalibrate_batch_norm(net, x, batch_size=4)
    # hand computation: per batch of 4, mean and unbiased variance over (N, H, W); then
    # the plain average over the 3 batches
    means, variances = [], []
    for b in range(3):
        v = x[4 * b:4 * b + 4].permute(1, 0, 2, 3).reshape(3, -1).double()
        means.append(v.mean(1))
        variances.append(v.var(1, unbiased=True))
    assert torch.allclose(bn.running_mean.double(), torch.stack(means).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var.double(), torch.stack(variances).mean(0), atol=1e-4)
    assert bn.momentum == 0.1 and not net.training


def test_weights_stay_the_old_statistics_go_and_the_fold_still_matches():
    torch.manual_seed(1)
    nets = []
    for offset in (2.0, -2.0):  # two different sets of stale statistics
        torch.manual_seed(1)
        net = CBCNNNet((8, 8, 1), blocks=(4, 4), dense=(8,), n_classes=3)
        net.train()
        for _ in range(3):
            net(torch.randn(16, 1, 8, 8) + offset)
        nets.append(net)
    weights = {k: v.clone() for k, v in nets[0].state_dict().items()
               if "running" not in k and "num_batches" not in k}
    x = torch.randn(40, 1, 8, 8)
    stale = nets[0].features[2].running_mean.clone()
    for net in nets:
        recalibrate_batch_norm(net, x, batch_size=10)
    for k, v in weights.items():
        assert torch.equal(nets[0].state_dict()[k], v), k
    assert not torch.allclose(nets[0].features[2].running_mean, stale)
    for k, v in nets[0].state_dict().items():  # nothing of the old statistics is left
        assert torch.allclose(v.float(), nets[1].state_dict()[k].float()), k
    with torch.no_grad():
        assert torch.equal(nets[0](x).argmax(1), folded_forward(nets[0], x).argmax(1))


def test_a_trailing_one_image_batch_is_skipped_and_too_few_images_refused():
    torch.manual_seed(2)
    bn = torch.nn.BatchNorm1d(2)
    x = torch.randn(5, 2)
    recalibrate_batch_norm(torch.nn.Sequential(bn), x, batch_size=4)
    assert torch.allclose(bn.running_mean, x[:4].mean(0), atol=1e-6)
    assert np.isfinite(bn.running_var.numpy()).all()
    with pytest.raises(ConfigError, match="at least 2 images"):
        recalibrate_batch_norm(torch.nn.Sequential(torch.nn.BatchNorm1d(2)), x[:1])


# -- train_cbcnn(recalibrate_bn=True) and lbcnn train --recalibrate-bn -----------------------
def _val_accuracy(model, ds, seed=0):
    _, val_idx = ds.split(None, 0.1, seed)
    return float((model.predict(ds.x_train[val_idx]) == ds.y_train[val_idx]).mean())


def test_training_keeps_recalibrated_statistics_only_when_validation_rises(tmp_path):
    from lbcnn.models import load_model
    from lbcnn.train.cbcnn import train_cbcnn
    torch.set_num_threads(1)
    ds = bars_dataset(n=200)
    kw = dict(blocks=(4,), dense=(), epochs=2, erase=0.5, seed=0, progress=False)
    plain = train_cbcnn(ds, **kw)
    r = train_cbcnn(ds, **kw, recalibrate_bn=True, out_dir=tmp_path / "run")
    info = r["bn_recalibration"]
    assert info["val_accuracy_before"] == plain["best_val_accuracy"]
    assert info["kept"] == (info["val_accuracy_after"] > info["val_accuracy_before"])
    assert r["val_accuracy"] == max(info["val_accuracy_after"], info["val_accuracy_before"])
    # what the run reports is what the saved model does on the validation split
    saved = load_model(tmp_path / "run" / "model.npz")
    assert _val_accuracy(saved, ds) == pytest.approx(r["val_accuracy"])
    assert saved.meta_["val_accuracy"] == r["val_accuracy"]
    assert saved.meta_["bn_recalibration"]["kept"] == info["kept"]
    # the weights are the chosen epoch's either way
    for k, v in plain["model"].net.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(r["model"].net.state_dict()[k], v), k


def test_statistics_that_lower_validation_are_not_kept(monkeypatch):
    import lbcnn.train.cbcnn as tc
    torch.set_num_threads(1)
    ds = bars_dataset(n=200)
    kw = dict(blocks=(4,), dense=(), epochs=2, seed=0, progress=False)
    plain = tc.train_cbcnn(ds, **kw)

    def ruin(net, x, batch_size=100, device=None):  # thresholds no image can pass
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.fill_(1e6)
        return net.eval()
    monkeypatch.setattr(tc, "recalibrate_batch_norm", ruin)
    r = tc.train_cbcnn(ds, **kw, recalibrate_bn=True)
    assert not r["bn_recalibration"]["kept"]
    assert r["val_accuracy"] == plain["best_val_accuracy"] == r["best_val_accuracy"]
    assert r["test_accuracy"] == plain["test_accuracy"]
    for k, v in plain["model"].net.state_dict().items():
        assert torch.equal(r["model"].net.state_dict()[k], v), k


def test_cli_reports_the_recalibration_and_refuses_it_for_the_float_twin(tmp_path, capsys):
    import json

    from lbcnn.cli import main
    ds = bars_dataset(n=160)
    np.savez(tmp_path / "ds.npz", x=ds.x_train, y=ds.y_train)
    argv = ["train", "--model", "cbcnn", "--dataset", f"npz:{tmp_path / 'ds.npz'}", "--blocks",
            "4", "--dense", "", "--epochs", "1", "--batch-size", "40", "--erase", "0.5", "--json"]
    assert main(argv + ["--recalibrate-bn"]) == 0
    out = json.loads(capsys.readouterr().out)
    info = out["bn_recalibration"]
    assert set(info) >= {"val_accuracy_before", "val_accuracy_after", "kept"}
    assert info["val_accuracy_before"] == out["best_val_accuracy"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["bn_recalibration"] is None
    try:
        rc = main(argv + ["--recalibrate-bn", "--float-twin", "--out", str(tmp_path / "t")])
    except SystemExit as exc:
        rc = exc.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1 and "--recalibrate-bn" in err[0], err
