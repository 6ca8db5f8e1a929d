"""``lbcnn optimize`` on synthetic 16x16 images: Pareto ranking, the search loop,
kill -9 + resume, Ray equality and the one-line errors."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lbcnn.train.optimize.pareto import (crowding_distance, nondominated_ranks, pareto_front,
                                   pareto_order, promote)


def _synthetic(n=600, classes=10, size=16, seed=0):
    """Class templates plus noise: learnable, but not trivially."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (classes, size, size))
    y = np.arange(n) % classes
    x = 0.55 * templates[y] + rng.normal(0, 60, (n, size, size)) + 50
    return np.clip(x, 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    x, y = _synthetic(900)
    path = tmp_path_factory.mktemp("data") / "synth.npz"
    np.savez(path, x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:])
    return f"npz:{path}"


SMALL = ["--train-size", "500", "--rungs", "100,200", "--layers", "1,2", "--nf1", "2,4,8",
         "--nf2", "1,2", "--nl", "1", "--bits", "float32,8,4", "--C-range", "1e-3,1e-1"]


def _space():
    from lbcnn.train.optimize import SearchSpace
    return SearchSpace(layers=(1, 2), multipliers=((2, 4, 8), (1, 2), (1,)), nl=(1,),
                       C=(1e-3, 1e-1), bits=(32, 8, 4))


def cli(*args):
    from lbcnn.cli import main
    return main(list(args))


# -- Pareto ranking against brute force -------------------------------------------
def _brute_front(p, maximize):
    s = np.where(maximize, 1.0, -1.0) * np.asarray(p, float)
    return sorted(i for i in range(len(s))
                  if not any(np.all(s[j] >= s[i]) and np.any(s[j] > s[i]) for j in range(len(s))))


@pytest.mark.parametrize("seed", range(8))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    m = 2 + seed % 2
    p = rng.integers(0, 6, (40, m)).astype(float)  # small integers: many ties and duplicates
    maximize = [True] + [False] * (m - 1)
    assert pareto_front(p, maximize).tolist() == _brute_front(p, maximize)
    ranks = nondominated_ranks(p, maximize)
    rest = np.flatnonzero(ranks > 0)
    assert pareto_front(p[rest], maximize).tolist() == \
        [i for i, r in enumerate(ranks[rest]) if r == 1]
    order = pareto_order(p, maximize)
    assert sorted(order.tolist()) == list(range(len(p)))
    assert np.all(np.diff(ranks[order]) >= 0)  # rank first
    keep = promote(p, maximize, 1 / 3)
    assert len(keep) == 14 and keep.tolist() == order[:14].tolist()


def test_promote_ranks_a_bracket_against_earlier_results():
    mx = [True, False]
    bracket = np.array([[0.40, 6.0], [0.97, 300.0], [0.95, 100.0]])
    assert sorted(promote(bracket, mx, 2 / 3).tolist()) == [0, 1]  # alone: the two ends
    earlier = np.array([[0.90, 5.0], [0.99, 250.0]])  # dominate members 0 and 1
    assert promote(bracket, mx, 1 / 3, earlier).tolist() == [2]
    assert promote(bracket, mx, 1.0, earlier).tolist()[0] == 2


def test_crowding_prefers_the_spread():
    p = np.array([[0.9, 10], [0.91, 11], [0.95, 50], [0.99, 100]])
    d = crowding_distance(p, [True, False])
    assert np.isinf(d[0]) and np.isinf(d[3]) and d[2] > d[1]


# -- the search ---------------------------------------------------------------------
def test_optimize_api_front_kbits_and_test_once(npz, tmp_path, monkeypatch):
    from lbcnn.models.lbcnn import LBCNN
    from lbcnn.train.optimize import optimize

    calls = []
    orig = LBCNN.score
    monkeypatch.setattr(LBCNN, "score", lambda self, x, y: calls.append(len(y)) or orig(self, x, y))
    res = optimize(npz, train_size=500, rungs=(100, 200), space=_space(), max_configs=9,
                   out=tmp_path / "run", seed=1, max_kbits=60)
    s = res.summary
    assert s["trials"] == 9 and s["completed"] == 1 and s["pruned"] == 8
    assert [r["configs"] for r in s["rungs_detail"]] == [9, 3, 1]
    assert [r["pruned"] for r in s["rungs_detail"]] == [6, 2, 0]
    assert [r["n_train"] for r in s["rungs_detail"]] == [100, 200, 450]
    assert len(res.front) == 1 and calls == [300]  # the test set, once per front member
    m = res.front[0]
    assert 0 < m["val_accuracy"] <= 1 and 0 < m["test_accuracy"] <= 1 and m["train_size"] == 500
    for f in ("front.csv", "front.json", "front.png", "trials.csv", "summary.json", "study.db"):
        assert (tmp_path / "run" / f).exists(), f
    rows = (tmp_path / "run" / "trials.csv").read_text().splitlines()
    assert len(rows) >= 10  # header + every trial, pruned ones included
    assert all(r["kbits"] <= 60 for r in res.trials if r["state"] in ("COMPLETE", "PRUNED"))
    for r in res.trials:  # refused ones were never fitted, and carry an Optuna constraint
        if r["state"] == "INFEASIBLE":
            assert r["kbits"] is None and r["top_rung"] is None and "kbits >" in r["infeasible"]
    assert s["infeasible"] == sum(r["state"] == "INFEASIBLE" for r in res.trials)


def test_normalized_margin_and_cv_tie_break():
    from lbcnn.train.optimize.trial import normalized_margins, rank_accuracy

    z = np.array([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    y = np.array([0, 0])
    want = np.array([(2 - 1) / z[0].std(), (0 - 3) / z[1].std()])
    np.testing.assert_allclose(normalized_margins(z, y), want)
    # C shrinks or shifts every logit of a row alike: the margin does not move
    np.testing.assert_allclose(normalized_margins(0.1 * z + 5, y), want)
    n = 250
    assert rank_accuracy({"val_accuracy": 0.9, "n_val": n}) == 0.9  # no CV: accuracy itself
    hi = {"val_accuracy": 247 / n, "n_val": n, "val_margin": 9.0}
    lo = {"val_accuracy": 247 / n, "n_val": n, "val_margin": 0.5}
    more = {"val_accuracy": 248 / n, "n_val": n, "val_margin": -9.0}
    assert rank_accuracy(lo) < rank_accuracy(hi) < rank_accuracy(more)


def test_cv_front_reports_plain_accuracy_and_ranks_ties_by_margin(npz, tmp_path):
    from lbcnn.train.optimize import optimize
    from lbcnn.train.optimize.trial import rank_accuracy

    res = optimize(npz, train_size=200, cv=4, space=_space(), max_configs=6,
                   out=tmp_path / "cv", seed=2)
    done = [r for r in res.trials if r["state"] == "COMPLETE"]
    assert len(done) == 6 and res.front
    for m in res.front:  # whole images out of 200: no tie-break term in what is reported
        assert round(m["val_accuracy"] * 200, 9) == round(m["val_accuracy"] * 200)
    import optuna
    study = optuna.load_study(study_name=res.summary["study_name"],
                              storage=f"sqlite:///{tmp_path / 'cv' / 'study.db'}")
    for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        r0 = t.user_attrs["rung0"]
        assert "val_margin" in r0 and t.values[0] == pytest.approx(rank_accuracy(r0), abs=0)
        assert 0 < t.values[0] - r0["val_accuracy"] < 1 / 400


def test_front_is_pareto_and_kbits_equal_lbcnn_info(npz, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli("optimize", "--dataset", npz, *SMALL, "--max-configs", "18", "--bracket", "9",
             "--eta", "2", "--out", str(out), "--json")
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("trials", "pruned", "seconds", "front"):
        assert key in summary
    front = summary["front"]
    assert front
    for m in front:
        for key in ("val_accuracy", "test_accuracy", "kbits", "macs", "params", "model"):
            assert key in m
        assert cli("info", m["model"], "--no-sizes", "--json") == 0
        info = json.loads(capsys.readouterr().out)
        assert info["total_kbits"] == pytest.approx(m["kbits"], abs=1e-9)
        assert info["macs"] == m["macs"]
        if m["config"]["bits"] == 32:  # a float head counts 32 bits per weight
            assert info["head_bits"] == 32 * (info["features"] + 1) * info["classes"]
    # no completed trial dominates a front member (validation accuracy, kbits)
    import optuna
    study = optuna.load_study(study_name=_study_name(out),
                              storage=f"sqlite:///{out / 'study.db'}")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    for m in front:
        for t in done:
            acc, kb = t.values
            assert not (acc >= m["val_accuracy"] and kb <= m["kbits"] and
                        (acc > m["val_accuracy"] or kb < m["kbits"]))
    assert {m["trial"] for m in front} <= {t.number + 1 for t in done}  # numbered from 1


def _study_name(out):
    return json.loads((out / "run.json").read_text())["study_name"]


def test_sigkill_then_resume_loses_no_completed_trial(npz, tmp_path):
    import optuna

    out = tmp_path / "run"
    args = [sys.executable, "-m", "lbcnn", "optimize", "--dataset", npz, *SMALL, "--bracket", "4",
            "--eta", "2", "--out", str(out), "--minutes", "10", "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    storage = f"sqlite:///{out / 'study.db'}"
    finished = []
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            time.sleep(0.5)
            if not (out / "run.json").exists():
                continue
            # Freeze the run while reading the study, so that the state seen is the state the
            # kill lands on: a trial seen running cannot finish between the look and the kill.
            proc.send_signal(signal.SIGSTOP)
            kill_now = False
            try:
                st = optuna.load_study(study_name=_study_name(out), storage=storage)
                finished = [t for t in st.trials if t.state.is_finished()]
                # a trial being fitted (not one still being drawn)
                running = [t for t in st.trials
                           if t.state.name == "RUNNING" and "config" in t.user_attrs]
                kill_now = len(finished) >= 3 and bool(running)
            except Exception:  # frozen inside a write: look again later
                pass
            if kill_now:
                break
            proc.send_signal(signal.SIGCONT)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(finished) >= 3, proc.stderr.read().decode()[-2000:]
    before = {t.number: (t.state.name, t.values, t.user_attrs.get("kernel_seed"))
              for t in optuna.load_study(study_name=_study_name(out), storage=storage).trials}
    stale = {n for n, v in before.items() if v[0] == "RUNNING"}
    assert stale
    r = subprocess.run([*args[:-5], "--out", str(out), "--max-configs", "4", "--resume",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    after = {t.number: t for t in optuna.load_study(study_name=_study_name(out),
                                                      storage=storage).trials}
    for n, (state, values, seed) in before.items():
        if state in ("COMPLETE", "PRUNED", "FAIL"):
            assert after[n].state.name == state and after[n].values == values
    assert all(after[n].state.name == "FAIL" for n in stale)
    redone = {t.user_attrs.get("requeued_from"): t for t in after.values()
              if t.user_attrs.get("requeued_from") is not None}
    # a trial killed before its kernel seed was stamped never computed anything
    assert set(redone) == {n for n in stale if before[n][2] is not None}
    assert redone
    for n in redone:  # the same parameters and kernel seed, run to an end
        assert redone[n].params == after[n].params
        assert redone[n].user_attrs["kernel_seed"] == before[n][2]
        assert redone[n].state.name in ("COMPLETE", "PRUNED")
    assert not [t for t in after.values() if t.state.name == "RUNNING"]
    summary = json.loads(r.stdout)
    assert summary["front"]


# -- a shared PostgreSQL study -----------------------------------------------------------
@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on a Unix socket (skipped without the server binaries
    or psycopg, SQLAlchemy's default PostgreSQL driver). As root the server runs as
    ``nobody``: PostgreSQL refuses to run as root."""
    import shutil
    import tempfile

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not on PATH")
    as_user = []
    root = tempfile.mkdtemp(prefix="lbcnn-pg-", dir="/tmp")  # short: socket paths are limited
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if not runuser:
            pytest.skip("running as root without runuser to start PostgreSQL as another user")
        import pwd
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = [runuser, "-u", "nobody", "--"]
    data = os.path.join(root, "data")
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "lbcnn"], check=True,
                   capture_output=True, timeout=120)
    opts = f"-k {root} -p 54329 -c listen_addresses=''"
    subprocess.run([*as_user, pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(root, "log"),
                    "-w", "start"], check=True, capture_output=True, timeout=120)
    try:
        import psycopg
        with psycopg.connect(dbname="postgres", user="lbcnn", host=root, port=54329,
                             autocommit=True) as con:
            con.execute("CREATE DATABASE study")
        yield f"postgresql://lbcnn@/study?host={root}&port=54329"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_processes_share_one_postgresql_study(npz, tmp_path, postgres_url):
    """Two optimize processes (as on two machines) join one study through --storage: every
    trial lands once in the shared database, each process sees the other's results, and a
    third process resumes the study from the database alone."""
    import optuna

    def run(name, *extra):
        return subprocess.Popen(
            [sys.executable, "-m", "lbcnn", "optimize", "--dataset", npz, *SMALL,
             "--bracket", "3", "--storage", postgres_url, "--study-name", "shared",
             "--out", str(tmp_path / name), "--json", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [run("a", "--max-configs", "6"), run("b", "--max-configs", "6")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    fitted = [t for t in study.trials if "config" in t.user_attrs and t.state.is_finished()]
    assert len(fitted) == 12 and len({t.number for t in fitted}) == 12
    assert len({t.user_attrs["owner"] for t in fitted}) == 2
    completed = {t.number + 1 for t in fitted if t.state.name == "COMPLETE"}  # from 1
    for out, _ in outs:
        summary = json.loads(out)
        assert summary["evaluated_this_run"] == 6
        assert {m["trial"] for m in summary["front"]} <= completed
    # a third process joins later: it sees all 12 results, and its front is the whole study's
    r = subprocess.run([sys.executable, "-m", "lbcnn", "optimize", "--dataset", npz, *SMALL,
                        "--bracket", "3", "--storage", postgres_url, "--study-name", "shared",
                        "--out", str(tmp_path / "c"), "--max-configs", "3", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["trials"] == 15 and summary["evaluated_this_run"] == 3
    again = optuna.load_study(study_name="shared", storage=postgres_url)
    done = [t for t in again.trials if t.state.name == "COMPLETE"]
    best = max(t.values[0] for t in done)
    assert max(m["val_accuracy"] for m in summary["front"]) == pytest.approx(best)


# -- Ray ------------------------------------------------------------------------------
def test_ray_workers_give_in_process_metrics(npz, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    from lbcnn.data import load_dataset
    from lbcnn.train.optimize import Config, optimize
    from lbcnn.train.optimize.runner import LocalRunner, RayRunner
    from lbcnn.train.optimize.trial import evaluate, prepare

    ds = load_dataset(npz)
    data = prepare(ds, 500, 0.1, 0, (100, 200))
    tasks = [(Config((4, 2), 1, 1e-2, 8), 11, 0), (Config((8,), 1, 1e-3, 4), 12, 1),
             (Config((2, 2), 1, 3e-2, 32), 13, 2), (Config((4,), 1, 1e-2, 8), 14, 2)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = RayRunner(data, workers=2).map(tasks)
        res = optimize(ds, train_size=500, rungs=(100, 200), space=_space(), max_configs=3,
                       bracket=3, eta=3, workers=2, out=tmp_path / "ray", seed=3)
    finally:
        ray.shutdown()
    local = LocalRunner(data).map(tasks)
    for a, b in zip(local, remote):
        assert (a["val_accuracy"], a["n_train"], a["solver"]) == \
            (b["val_accuracy"], b["n_train"], b["solver"])
    assert res.summary["runner"] == "ray"
    # every rung result the Ray workers stored is what this process computes
    data3 = prepare(ds, 500, 0.1, 3, (100, 200))
    data3.c_grid = _space().c_grid()
    for row in res.trials:
        if row["state"] not in ("COMPLETE", "PRUNED"):
            continue
        cfg = Config(tuple(int(f) for f in row["filters"].split(",")), row["nl"], None,
                     row["bits"])
        for r in range(row["top_rung"] + 1):  # C: the whole grid at rung 0, then a walk
            got = evaluate(cfg, row["kernel_seed"], data3, r, row.get(f"rung{r - 1}_C"))
            assert (got["val_accuracy"], got["C"]) == (row[f"rung{r}_val_accuracy"],
                                                        row[f"rung{r}_C"])


# -- one-line errors --------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--objectives", "accuracy,latency"], "unknown objective 'latency'"),
    (["--max-features", "5"], "search space allows no model"),
    (["--max-kbits", "0.01"], "below the smallest model"),
    (["--ray", "127.0.0.1:1"], "cannot reach the Ray cluster"),
    (["--storage", "redis://localhost:6379"], "--storage must be a database URL"),
    (["--resume"], "no optimize study to resume"),
    (["--layers", "1", "--nf1", "0"], "argument --nf1: expected comma-separated depth"),
    (["--flip"], "--flip refused for npz:"),
])
def test_bad_input_is_one_line(npz, tmp_path, capsys, extra, message):
    if extra == ["--resume"]:
        (tmp_path / "run").mkdir()  # a folder, but no study in it
    try:
        rc = cli("optimize", "--dataset", npz, *SMALL, "--max-configs", "1",
                 "--out", str(tmp_path / "run"), *extra)
    except SystemExit as exc:  # refused by the parser
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(("lbcnn: error:", "lbcnn optimize: error:")), err
    assert "\n" not in err, err
    assert message in err, err


def test_flip_mirrors_fit_images_only(data_dir):
    """With --flip a trial fits on its rung's images plus their mirrors and validates on
    the unmirrored validation images: the same numbers as a plain trial whose fit set
    holds the mirrors explicitly. The refit sees the whole budget mirrored too."""
    from lbcnn.data import load_dataset
    from lbcnn.train.optimize import Config
    from lbcnn.train.optimize.trial import TrialData, evaluate, prepare, refit

    ds = load_dataset("olivetti", split="paper", seed=0)
    flip = prepare(ds, None, 0.2, 0, (100,), flip=True)
    n = len(flip.y_fit)
    explicit = TrialData(np.concatenate([flip.x_fit, flip.x_fit[:, :, ::-1]]),
                         np.concatenate([flip.y_fit, flip.y_fit]), flip.x_val, flip.y_val,
                         flip.n_classes, flip.input_scale,
                         [np.concatenate([r, r + n]) for r in flip.rungs])
    cfg = Config((2,), 1, 1e-2, 4)
    for rung in (0, 1):
        a, b = evaluate(cfg, 5, flip, rung), evaluate(cfg, 5, explicit, rung)
        assert a["val_accuracy"] == b["val_accuracy"] and a["n_val"] == len(flip.y_val) == 50
    model, _ = refit(Config((2,), 1, 1e-2, 32), 5, flip)
    x, y = flip.budget()
    mirrored = model.body_.transform(x[:, :, ::-1]).astype(np.float64)
    # the ridge head's normal equations hold over budget + mirrors, not over the budget alone
    both = np.concatenate([model.body_.transform(x).astype(np.float64), mirrored])
    w = model.coef_.astype(np.float64)

    def normal_residual(h, labels):
        t = np.where(labels[:, None] == np.arange(40), 1.0, -1.0)
        return np.abs(h.T @ (h @ w - t) + w / 1e-2).max() / np.abs(h.T @ t).max()
    fitted = normal_residual(both, np.concatenate([y, y]))
    assert fitted < 1e-3 and normal_residual(both[:len(y)], y) > 5 * fitted
    with pytest.raises(Exception, match="--flip refused for mnist"):
        prepare(load_dataset("mnist"), 500, 0.1, 0, (100,), flip=True)


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory):
    x, y = _synthetic(700)
    rng = np.random.default_rng(1)
    tint = rng.uniform(0.6, 1.0, (10, 3))  # per-class colour cast, so RGB differs from luma
    x = np.clip(x[..., None] * tint[y][:, None, None, :], 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("rgb") / "rgb.npz"
    np.savez(path, x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    return f"npz:{path}"


def test_luma_front_member_takes_rgb_in_evaluate_predict_and_c(rgb_npz, tmp_path, capsys):
    """A Y-channel front member is fitted on luma; every consumer converts RGB the same way."""
    from PIL import Image

    from lbcnn.data import load_dataset
    from lbcnn.io.artefacts import open_predictor
    from lbcnn.models import load_model
    from lbcnn.preprocess import rgb_to_y

    out = tmp_path / "run"
    assert cli("optimize", "--dataset", rgb_npz, "--train-size", "400", "--rungs", "200",
               "--layers", "1", "--nf1", "4", "--nl", "1", "--bits", "8", "--C-range", "1e-2,1e-2",
               "--color", "y", "--max-configs", "2", "--bracket", "2", "--out", str(out),
               "--json") == 0
    member = json.loads(capsys.readouterr().out)["front"][0]
    assert member["config"]["color"] == "y"
    model = load_model(member["model"])
    assert model.meta_["input_color"] == "y" and model.body_.input_shape[-1] == 1
    ds = load_dataset(rgb_npz)
    want = model.predict(rgb_to_y(ds.x_test))
    assert (want == ds.y_test).mean() == pytest.approx(member["test_accuracy"])
    pred = open_predictor(member["model"])
    assert pred.input_shape == (16, 16, 3)
    np.testing.assert_array_equal(pred.predict(ds.x_test), want)
    assert cli("evaluate", member["model"], "--json") == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(member["test_accuracy"])
    c_dir = tmp_path / "c"
    assert cli("export", member["model"], "--format", "c", "--out", str(c_dir)) == 0
    capsys.readouterr()
    c_pred = open_predictor(c_dir)
    assert c_pred.input_shape == (16, 16, 3)
    np.testing.assert_array_equal(c_pred.predict(ds.x_test[:40]), want[:40])
    onnx_path = tmp_path / "m.onnx"
    assert cli("export", member["model"], "--format", "onnx", "--out", str(onnx_path)) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(open_predictor(onnx_path).predict(ds.x_test[:40]), want[:40])
    img = tmp_path / "one.png"
    Image.fromarray(ds.x_test[0]).save(img)
    assert cli("predict", member["model"], str(img), "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    assert str(int(want[0])) in json.dumps(printed)
