"""train_cbcnn(ema=D) / lbcnn train --ema: an exponential moving average of the latent
weights and BN statistics, validated, chosen and deployed in place of the trained network."""
import numpy as np
import pytest
import torch

from bars import bars_dataset
from lbcnn.errors import ConfigError

torch.set_num_threads(1)

TINY = dict(blocks=(4,), dense=())
KW = dict(**TINY, epochs=3, batch_size=40, seed=3, lr_start=3e-3, erase=0.25,
          lr_schedule="onecycle", lr_end=1e-5)


@pytest.fixture(scope="module")
def tiny():
    return bars_dataset()


def test_average_step_against_hand_computation():
    from lbcnn.train.cbcnn import update_weight_average
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    net[1].running_mean.fill_(2.0)
    net[1].num_batches_tracked.fill_(7)
    a_w, n_w = avg[0].weight.detach().clone(), net[0].weight.detach().clone()
    a_m = avg[1].running_mean.clone()
    update_weight_average(avg, net, 0.9)
    assert torch.allclose(avg[0].weight, 0.9 * a_w + 0.1 * n_w, atol=1e-6)
    assert torch.allclose(avg[1].running_mean, 0.9 * a_m + 0.1 * 2.0, atol=1e-6)
    assert int(avg[1].num_batches_tracked) == 7  # counters are copied, not averaged
    # n steps towards fixed weights: the start's share is decay^n, whatever n is
    for decay in (0.99, 0.999):
        start = avg[0].weight.detach().clone()
        for _ in range(50):
            update_weight_average(avg, net, decay)
        assert torch.allclose(avg[0].weight, decay ** 50 * start + (1 - decay ** 50) * n_w,
                              atol=1e-5)


def test_training_is_unchanged_and_the_average_is_what_gets_chosen(tiny, tmp_path):
    from lbcnn.models import load_model
    from lbcnn.train.cbcnn import train_cbcnn
    plain = train_cbcnn(tiny, out_dir=tmp_path / "plain", progress=False, **KW)
    avg = train_cbcnn(tiny, out_dir=tmp_path / "ema", progress=False, ema=0.9, **KW)
    for k, v in plain["final_state"].items():  # the average only watches training
        assert torch.equal(v, avg["final_state"][k]), k
    assert ([h["val_accuracy"] for h in plain["history"]]
            == [h["raw_val_accuracy"] for h in avg["history"]])
    vals = [h["val_accuracy"] for h in avg["history"]]
    assert avg["best_val_accuracy"] == max(vals) and avg["best_epoch"] == vals.index(max(vals)) + 1
    # the saved model is the average at the chosen epoch, not the trained network
    ck = torch.load(tmp_path / "ema" / "checkpoint.pt", weights_only=False)
    assert ck["config"]["ema"] == 0.9 and "ema_model" in ck
    model = load_model(tmp_path / "ema" / "model.npz")
    _, val_idx = tiny.split(None, 0.1, 3)
    acc = float((model.predict(tiny.x_train[val_idx]) == tiny.y_train[val_idx]).mean())
    assert acc == pytest.approx(avg["best_val_accuracy"])
    # the decay sets the average (no warm-up ramp overriding it)
    train_cbcnn(tiny, out_dir=tmp_path / "ema5", progress=False, ema=0.5, **KW)
    ck5 = torch.load(tmp_path / "ema5" / "checkpoint.pt", weights_only=False)
    assert not torch.equal(ck5["ema_model"]["features.0.weight"], ck["ema_model"]["features.0.weight"])
    if avg["best_epoch"] == len(avg["history"]):
        w_avg = ck["ema_model"]["features.0.weight"]
        assert not torch.equal(w_avg, ck["model"]["features.0.weight"])


def test_resume_after_interruption_gives_the_same_average(tiny, tmp_path):
    from lbcnn.train.cbcnn import train_cbcnn
    full = train_cbcnn(tiny, out_dir=tmp_path / "full", progress=False, ema=0.95, **KW)

    class Interrupt(Exception):
        pass

    def stop(epoch, info):
        if epoch == 1:
            raise Interrupt
    with pytest.raises(Interrupt):
        train_cbcnn(tiny, out_dir=tmp_path / "cut", progress=False, ema=0.95,
                    on_epoch_end=stop, **KW)
    resumed = train_cbcnn(tiny, out_dir=tmp_path / "cut", progress=False, ema=0.95,
                          resume=True, **KW)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(full["history"]) == strip(resumed["history"])
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k, v in a["ema_model"].items():
        assert torch.equal(v, b["ema_model"][k]), k
    with pytest.raises(ConfigError, match="settings differ"):
        train_cbcnn(tiny, out_dir=tmp_path / "cut", progress=False, ema=0.9, resume=True, **KW)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, float("nan")])
def test_library_refuses_bad_decays(tiny, bad):
    from lbcnn.train.cbcnn import train_cbcnn
    with pytest.raises(ConfigError, match="ema decay"):
        train_cbcnn(tiny, progress=False, ema=bad, **KW)


@pytest.mark.parametrize("extra, message", [
    (["--ema", "1"], "between 0 and 1"),
    (["--ema", "x"], "--ema"),
    (["--ema", "0.99", "--float-twin", "--out", "OUT"], "--ema is for the binary network"),
])
def test_cli_refuses_bad_ema_options_in_one_line(tmp_path, capsys, extra, message):
    from lbcnn.cli import main
    np.savez(tmp_path / "ds.npz", x=np.zeros((60, 8, 8), np.uint8), y=np.arange(60) % 3)
    extra = [str(tmp_path / "out") if a == "OUT" else a for a in extra]
    try:
        rc = main(["train", "--model", "cbcnn", "--dataset", f"npz:{tmp_path / 'ds.npz'}",
                   "--blocks", "4", "--dense", "", "--epochs", "2", *extra])
    except SystemExit as exc:
        rc = exc.code
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and err and message in err[-1] and "Traceback" not in "".join(err), err
