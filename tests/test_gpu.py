"""Issue 33: device-speed features, the C sweep, optimize's budget, devices and parallel runs.

The batched torch feature path runs on the CPU here against the C kernel and a loop
oracle; on a CUDA machine the same checks run on the GPU (skipped without CUDA).
The C sweep is checked against a float64 solve per C; optimize's --minutes against
the wall clock of a whole command.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lbcnn.binary import native
from lbcnn.heads.elm import DualSystem, RidgeAccumulator, one_vs_rest_targets
from lbcnn.heads.ridge_path import RidgePath, c_grid, sweep, validation_score
from lbcnn.models.lbcnn import LBCNNBody

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
ROOT = Path(__file__).resolve().parents[1]

# bodies: 1-3 layers, multipliers 1-12, nl 1-2, one and three channels, odd sizes
BODIES = [((9, 9, 1), (3,), 1), ((8, 7, 3), (2, 2), 1), ((11, 10, 1), (2, 1, 2), 2),
          ((28, 28, 1), (12, 2), 1), ((13, 16, 3), (4,), 2)]


def _images(shape, n=23, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# -- features -------------------------------------------------------------------------
@pytest.mark.parametrize("shape,filters,nl", BODIES)
def test_batched_torch_features_equal_the_c_kernel_bit_for_bit(shape, filters, nl):
    """The CUDA path's code, run on the CPU: uint8 in, scaled by 1/255 at the end, chunked."""
    body = LBCNNBody.random(shape, filters, nl, seed=5)
    x = _images(shape)
    if native.load() is None:
        pytest.skip("no C compiler: the native kernel is unavailable")
    want = body.transform(x)  # the C kernel
    got = body.features_device(x, "cpu").numpy()
    assert got.dtype == np.float32 and np.array_equal(got, want)
    chunked = np.concatenate([f.numpy() for _, _, f in body.iter_device(x, "cpu", rows=4)])
    assert np.array_equal(chunked, want)
    # float images (already scaled) take the same path without the final scale
    xf = x.astype(np.float32) / 255.0
    assert np.array_equal(body.features_device(xf, "cpu").numpy(), body.transform(xf))


def test_batched_torch_features_equal_a_loop_oracle():
    from test_body import body_oracle

    body = LBCNNBody.random((10, 9, 2), (3, 2), nl=2, seed=1, input_scale=1.0)
    x = _images((10, 9, 2), n=3)
    want = np.stack([body_oracle(body, im) for im in x]).astype(np.float32)
    assert np.array_equal(body.features_device(x, "cpu").numpy(), want)


def test_chunks_follow_the_memory_plan(monkeypatch):
    from lbcnn.binary.torch_kernel import bytes_per_image, chunk_rows

    per = bytes_per_image((28, 28, 1), (40, 4), 1)
    assert per >= 4 * 28 * 28 * 40  # at least the widest conv output, float32
    monkeypatch.setenv("LBCNN_MEMORY_GB", str(4 * 50 * per / 2**30))
    assert chunk_rows((28, 28, 1), (40, 4), 1, torch.device("cpu"), 10_000) == 50
    assert chunk_rows((28, 28, 1), (40, 4), 1, torch.device("cpu"), 7) == 7


@CUDA
@pytest.mark.parametrize("shape,filters,nl", BODIES)
def test_cuda_features_equal_cpu_features_bit_for_bit(shape, filters, nl):
    body = LBCNNBody.random(shape, filters, nl, seed=5)
    x = _images(shape, n=300)
    want = body.transform(x)  # C kernel, or the torch path on the CPU without a compiler
    assert np.array_equal(body.features_device(x, "cuda").cpu().numpy(), want)
    resident = torch.from_numpy(x).cuda()
    assert np.array_equal(body.features_device(resident, "cuda").cpu().numpy(), want)
    assert np.array_equal(body.transform(x, device="cuda"), want)


@CUDA
def test_cuda_elm_head_predicts_as_the_cpu_head(mnist):
    from lbcnn.models.lbcnn import fit_elm

    body = LBCNNBody.random(mnist.input_shape, (10,), 1, seed=3, input_scale=mnist.input_scale)
    x, y = mnist.x_train[:3000], mnist.y_train[:3000]
    w_cpu, _ = fit_elm(body, x, y, 10, 1e-3, device="cpu")
    w_gpu, solver = fit_elm(body, x, y, 10, 1e-3, device="cuda")
    h = body.transform(mnist.x_test[:2000])
    agree = ((h @ w_cpu).argmax(1) == (h @ w_gpu).argmax(1)).mean()
    assert solver.startswith("primal") and agree >= 0.999
    np.testing.assert_allclose(w_gpu, w_cpu, rtol=1e-3, atol=1e-4)


# -- the C sweep ------------------------------------------------------------------------
def _lbcnn_features(n, filters, seed=0):
    """Real LB-CNN features (positive, correlated) of class-template images."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, (5, 12, 12))
    y = np.arange(n) % 5
    x = np.clip(0.6 * templates[y] + rng.normal(0, 50, (n, 12, 12)), 0, 255).astype(np.uint8)
    body = LBCNNBody.random((12, 12, 1), filters, 1, seed=seed)
    return body.transform(x), y


SWEEP_RTOL = 1e-6  # eigen sweep against a float64 Cholesky solve of the same formed system
EXACT_RTOL = 1e-3  # either, against the solve from float64 features (the float32 Gram's share)


@pytest.mark.parametrize("n,filters", [(400, (3,)), (60, (4, 2))], ids=["primal", "dual"])
def test_eigen_sweep_equals_a_cholesky_solve_per_C(n, filters):
    from scipy.linalg import cho_factor, cho_solve

    h, y = _lbcnn_features(n, filters)
    t = one_vs_rest_targets(y, 5)
    d = h.shape[1]
    primal = d < n
    assert primal == (filters == (3,))
    if primal:
        system = RidgeAccumulator(d, 5)
        system.update(h, t)
        g = system.gram().astype(np.float64)  # the formed float32 Gram, both triangles
    else:
        system = DualSystem(h, t)
        g = np.triu(system.k) + np.triu(system.k, 1).T
        g = g.astype(np.float64)
    eig, chol = RidgePath(system, "eigen"), RidgePath(system, "cholesky")
    h64, t64 = h.astype(np.float64), t.astype(np.float64)
    for C in c_grid():
        a = g + np.eye(len(g)) / C
        if primal:
            ref = cho_solve(cho_factor(a), system.hty.astype(np.float64))
            exact = np.linalg.solve(h64.T @ h64 + np.eye(d) / C, h64.T @ t64)
        else:
            ref = h64.T @ cho_solve(cho_factor(a), t64)
            exact = h64.T @ np.linalg.solve(h64 @ h64.T + np.eye(n) / C, t64)
        w_eig, solver = eig.weights(C)
        assert solver == ("primal" if primal else "dual") + "-eigen-float64"
        assert np.linalg.norm(w_eig - ref) <= SWEEP_RTOL * np.linalg.norm(ref), C
        w_chol, _ = chol.weights(C)  # float32 Cholesky: the solver each trial used so far
        for w in (w_eig, w_chol):
            assert np.linalg.norm(w - exact) <= EXACT_RTOL * np.linalg.norm(exact), C
        assert np.array_equal((h @ w_eig).argmax(1), (h64 @ ref).argmax(1))
    if primal:
        system.release()


@pytest.mark.parametrize("n,filters", [(400, (3,)), (60, (4, 2))], ids=["primal", "dual"])
def test_torch_backend_of_the_ridge_systems_equals_numpy(n, filters):
    """The CUDA code of the ridge systems and the sweep, run on CPU tensors."""
    h, y = _lbcnn_features(n + 100, filters)
    h, y, hv, yv = h[:n], y[:n], h[n:], y[n:]
    t = one_vs_rest_targets(y, 5)
    ht, hvt = torch.from_numpy(h), torch.from_numpy(hv)
    if h.shape[1] < n:
        ref, tor = RidgeAccumulator(h.shape[1], 5), RidgeAccumulator(h.shape[1], 5,
                                                                      torch_backend=True)
        ref.update(h, t)
        tor.update(ht, t)
    else:
        ref, tor = DualSystem(h, t), DualSystem(ht, t)
    assert tor.on_device if isinstance(tor, DualSystem) else tor.torch
    for method in ("cholesky", "eigen"):
        for C in (1e-4, 1e-2, 1.0):
            w_ref, _ = RidgePath(ref, method).weights(C)
            w_tor, solver = RidgePath(tor, method).weights(C, host=False)
            assert isinstance(w_tor, torch.Tensor) and method in solver
            # two float32 Grams summed in different orders: float32 solve round-off apart
            w_tor = w_tor.numpy()
            assert np.linalg.norm(w_tor - w_ref) <= 5e-3 * np.linalg.norm(w_ref), (method, C)
            assert np.mean((hv @ w_tor).argmax(1) == (hv @ w_ref).argmax(1)) >= 0.99
        a = sweep(RidgePath(ref, method), c_grid(), lambda w: validation_score(hv @ w, yv))
        b = sweep(RidgePath(tor, method), c_grid(), lambda w: validation_score(hvt @ w, yv),
                  host=False)
        assert a.C == b.C and a.accuracy == b.accuracy


def test_sweep_picks_the_best_C_and_the_walk_finds_it_with_fewer_solves():
    h, y = _lbcnn_features(800, (3,), seed=2)
    h, y, hv, yv = h[:500], y[:500], h[500:], y[500:]
    system = RidgeAccumulator(h.shape[1], 5)
    system.update(h, one_vs_rest_targets(y, 5))
    grid = c_grid(1e-6, 10.0)
    solves = []

    class Counting(RidgePath):
        def weights(self, C, host=True):
            solves.append(C)
            return super().weights(C, host)

    full = sweep(Counting(system, "cholesky"), grid, lambda w: validation_score(hv @ w, yv))
    assert len(solves) == len(grid) and len(full.table) == len(grid)
    best = max(full.table, key=lambda r: (r["val_accuracy"], r["val_margin"], -r["C"]))
    assert full.C == best["C"] and full.accuracy == best["val_accuracy"]
    np.testing.assert_array_equal(full.weights, RidgePath(system, "cholesky").weights(full.C)[0])
    for start in (grid[0], grid[len(grid) // 2], grid[-1]):
        solves.clear()
        walk = sweep(Counting(system, "cholesky"), grid, lambda w: validation_score(hv @ w, yv),
                     start=start)
        tried = [r["C"] for r in walk.table]
        i = list(grid).index(walk.C)
        # the walk stops at a C whose neighbours it tried and found no better
        for j in (i - 1, i + 1):
            if 0 <= j < len(grid):
                assert grid[j] in tried
        assert walk.accuracy >= max(r["val_accuracy"] for r in walk.table)
        assert len(solves) == len(tried) <= len(grid)
    system.release()


def test_auto_method_and_grid():
    assert c_grid().tolist() == pytest.approx(np.geomspace(1e-5, 1, 11).tolist())
    assert c_grid(1e-3, 1e-3).tolist() == [1e-3]
    from lbcnn.heads.ridge_path import eigen_pays

    h, y = _lbcnn_features(50, (3,))
    system = DualSystem(h, one_vs_rest_targets(y, 5))  # a 50² system: small
    assert RidgePath(system, "auto", n_values=11).method == "eigen"
    assert RidgePath(system, "auto", n_values=3).method == "cholesky"
    assert eigen_pays(1000, 11) and not eigen_pays(7840, 11) and eigen_pays(7840, 30)


# -- search --C auto ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 255, (10, 16, 16))
    y = np.arange(900) % 10
    x = np.clip(0.55 * templates[y] + rng.normal(0, 60, (900, 16, 16)) + 50, 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "synth.npz"
    np.savez(path, x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:])
    return f"npz:{path}"


def test_search_C_auto_chooses_on_validation_and_records_it(synth, tmp_path, monkeypatch):
    from lbcnn.models.lbcnn import LBCNN
    from lbcnn.train.search import search

    reads = []
    orig = LBCNN.score
    monkeypatch.setattr(LBCNN, "score", lambda s, x, y: reads.append(len(y)) or orig(s, x, y))
    r = search(synth, filters=(4,), C="auto", trials=3, train_size=500, seed=1, progress=False,
               out=tmp_path / "run")
    grid = c_grid().tolist()
    assert reads == [300]  # the test set, once, after every choice
    first, later = r.history[0], r.history[1:]
    assert [c["C"] for c in first["C_sweep"]] == pytest.approx(grid)
    assert all(3 <= len(h["C_sweep"]) < len(grid) for h in later)  # walks, not whole grids
    for h in r.history:
        best = max(h["C_sweep"], key=lambda c: c["val_accuracy"])
        assert h["val_accuracy"] == best["val_accuracy"] and h["C"] in [c["C"] for c in h["C_sweep"]]
    assert r.summary["C"] == r.history[r.best_trial - 1]["C"] == r.model.C
    assert "validation sweep" in r.summary["C_selection"]
    from lbcnn.cli import main
    assert main(["search", "--resume", "--out", str(tmp_path / "run"), "--trials", "4",
                 "--json"]) == 2  # another trial count is another run: refused


# -- optimize ---------------------------------------------------------------------------
def test_cost_model_fits_overhead_rate_and_feature_rate():
    from lbcnn.train.optimize.budget import CostModel

    m = CostModel(prior=1e-9, margin=1.0)
    assert m.seconds((1e9, 0.0)) == pytest.approx(0.3 + 1.0)  # before any measurement
    rng = np.random.default_rng(0)
    for _ in range(30):
        w, macs = rng.uniform(1e8, 1e11), rng.uniform(1e6, 1e9)
        feat = 2e-9 * macs
        m.observe((w, macs), 0.2 + 5e-11 * w + feat, feat)
    a, b = m.coefficients()
    assert a == pytest.approx(0.2, rel=1e-6) and b == pytest.approx(5e-11, rel=1e-6)
    assert m.feature_rate() == pytest.approx(2e-9)
    assert m.seconds((1e10, 1e8)) == pytest.approx(0.2 + 0.5 + 0.2)


def test_nested_rungs_and_resident_features_change_no_result(synth):
    from lbcnn.data import load_dataset
    from lbcnn.train.optimize import Config
    from lbcnn.train.optimize.trial import FEATURES, evaluate, prepare

    ds = load_dataset(synth)
    data = prepare(ds, 500, 0.1, 0, (100, 200))
    assert [len(r) for r in data.rungs] == [100, 200, 450]
    for r in data.rungs:  # prefixes of one order, each close to class-stratified
        assert np.array_equal(r, np.arange(len(r)))
        counts = np.bincount(data.y_fit[r], minlength=10)
        assert counts.max() - counts.min() <= 1
    cfg = Config((4, 2), 1, None, 8)
    FEATURES.clear()
    warm = [evaluate(cfg, 7, data, 0)]
    for r in (1, 2):  # each rung's walk starts from the C the rung below chose
        warm.append(evaluate(cfg, 7, data, r, warm[-1]["C"]))
    assert FEATURES.hits > 0
    cold = []
    for r in range(3):
        FEATURES.clear()
        cold.append(evaluate(cfg, 7, data, r, cold[-1]["C"] if cold else None))
    for a, b in zip(warm, cold):
        assert {k: v for k, v in a.items() if "seconds" not in k} == \
            {k: v for k, v in b.items() if "seconds" not in k}
    FEATURES.clear()


def test_minutes_bound_the_whole_command(synth, tmp_path):
    """--minutes 0.5: the command, interpreter start, refits, test reads and outputs
    included, ends within 33 s (+10 %), and it used the time."""
    out = tmp_path / "run"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lbcnn", "optimize", "--dataset", synth,
                        "--train-size", "500", "--rungs", "100,200", "--minutes", "0.5",
                        "--out", str(out), "--json"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert wall <= 33.0, (wall, s["seconds"])
    assert s["seconds"] <= 33.0 and wall >= 15.0  # it did not stop early either
    assert s["evaluated_this_run"] >= 9 and s["completed"] >= 1 and s["front"]
    for m in s["front"]:  # every front member was refit and read the test set once
        assert m["test_accuracy"] is not None and Path(m["model"]).exists()
        assert np.isclose(c_grid(), m["config"]["C"], rtol=1e-12).any()


def test_a_bracket_with_no_member_in_time_does_not_end_the_search(synth, tmp_path, monkeypatch):
    """When every proposal of a bracket is predicted too late, the search asks again
    (a smaller configuration may fit) instead of ending, up to EMPTY_BRACKETS in a row."""
    from lbcnn.train.optimize import brackets, optimize

    real = brackets._ask_bracket
    asks = []

    def too_late_first(study, space, shape, k, size, infeasible, run_seed, owner, counters,
                       over_time=None, patience=3, late_brackets=2):
        asks.append(size)
        if len(asks) <= late_brackets:  # as if three proposals in a row were too big
            counters["skipped_deadline"] += 3
            return []
        return real(study, space, shape, k, size, infeasible, run_seed, owner, counters,
                    over_time, patience)

    monkeypatch.setattr(brackets, "_ask_bracket", too_late_first)
    res = optimize(synth, train_size=500, rungs=(100, 200), max_configs=3, bracket=3,
                   minutes=5, out=tmp_path / "run", seed=0, progress=False)
    assert res.summary["evaluated_this_run"] == 3 and len(asks) >= 3

    asks.clear()
    monkeypatch.setattr(brackets, "_ask_bracket",
                        lambda *a, **kw: too_late_first(*a, **kw, late_brackets=10**6))
    res = optimize(synth, train_size=500, rungs=(100, 200), max_configs=3, bracket=3,
                   minutes=5, out=tmp_path / "run2", seed=0, progress=False)
    assert res.summary["evaluated_this_run"] == 0 and len(asks) == brackets.EMPTY_BRACKETS


def test_progress_lines_when_output_is_not_a_terminal(synth, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lbcnn", "optimize", "--dataset", synth,
                        "--train-size", "500", "--rungs", "100,200", "--max-configs", "6",
                        "--bracket", "3", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("optimize ")]
    assert lines and all("configurations" in ln and "\x1b" not in ln for ln in lines)


# -- devices ----------------------------------------------------------------------------
def test_lbcnn_device_cpu_forces_the_cpu_where_cuda_exists(monkeypatch):
    from lbcnn.settings import default_device, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LBCNN_DEVICE", raising=False)
    assert default_device().type == "cuda"
    monkeypatch.setenv("LBCNN_DEVICE", "cpu")
    assert default_device().type == "cpu" and resolve_device(None).type == "cpu"
    from lbcnn.models.lbcnn import LBCNN
    assert LBCNN()._device().type == "cpu"

    # train_cbcnn settles its device through resolve_device: spy on it, stop before training
    import lbcnn.settings as settings
    from lbcnn.train.cbcnn import train_cbcnn
    from bars import bars_dataset
    seen = []

    class Resolved(Exception):
        pass

    def spy(device=None):
        seen.append(resolve_device(device))
        raise Resolved

    monkeypatch.setattr(settings, "resolve_device", spy)
    with pytest.raises(Resolved):
        train_cbcnn(bars_dataset(n=40), epochs=1)
    assert [d.type for d in seen] == ["cpu"]


def test_device_comparisons_are_exact_on_the_cpu_and_tolerant_only_on_cuda(monkeypatch):
    """tests/devices.py: the CUDA branch (run here by pretending) accepts float32 round-off
    and refuses a changed prediction; the CPU branch refuses any difference."""
    import devices

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 10)).astype(np.float32)
    nudged = logits + np.float32(2e-6)  # last-bit noise, same argmax
    swapped = logits.copy()
    top = swapped[0].argmax()
    swapped[0, top], swapped[0, (top + 1) % 10] = swapped[0, (top + 1) % 10], swapped[0, top]
    state = {"w": torch.from_numpy(logits)}
    monkeypatch.setattr(devices, "trains_on_cuda", lambda: False)
    devices.assert_same_logits(logits, logits.copy())
    with pytest.raises(AssertionError):
        devices.assert_same_logits(logits, nudged)
    with pytest.raises(AssertionError):
        devices.assert_same_state(state, {"w": torch.from_numpy(nudged)})
    monkeypatch.setattr(devices, "trains_on_cuda", lambda: True)
    devices.assert_same_logits(logits, nudged)
    devices.assert_same_state(state, {"w": torch.from_numpy(nudged)})
    for bad in (swapped, logits + np.float32(1e-2)):
        with pytest.raises(AssertionError):
            devices.assert_same_logits(logits, bad)
    with pytest.raises(AssertionError):
        devices.assert_same_state(state, {"w": torch.from_numpy(logits + np.float32(0.1))})


# -- parallel test runs (pytest -n) ------------------------------------------------------------
def test_two_processes_build_the_native_kernels_into_one_empty_cache(tmp_path):
    """pytest -n starts several workers on a cold cache at once: each must end with a
    loadable kernel (built to a temporary name, then renamed into place)."""
    import shutil

    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler")
    code = ("from lbcnn.binary import native; import sys; "
            "sys.exit(0 if native.load() is not None and native.load_gptq() is not None else 3)")
    env = {**os.environ, "LBCNN_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    built = sorted(p.name for p in (tmp_path / "cache" / "native").iterdir())
    libraries = [name for name in built if name.endswith(".so")]
    assert len(libraries) == 2  # the feature kernel and GPTQ's, each with its stamp
    assert sorted(libraries + [name + ".sha256" for name in libraries]) == built
