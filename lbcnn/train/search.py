"""Random binary kernel search: many cheap ELM fits, keep the best on validation.

Each trial draws a kernel set from a seed derived from the run seed, solves
the ELM head in closed form on the training split and scores the validation
split. The test set is read once, for the final model, after every choice.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import Dataset, load_dataset
from ..errors import ConfigError, DataError, Interrupted
from ..metadata import load_json
from ..models.lbcnn import LBCNN, LBCNNBody, check_filters, fit_elm, save_lbcnn
from ..outputs import RunLock, prepare_run_dir, write_csv, write_json
from ..settings import resolve_device

HEAD_BITS_PAPER = 8


def trial_seed(seed: int, t: int) -> int:
    """Trial ``t``'s seed (0-based), drawn when the trial starts: the same number as
    ``SeedSequence(seed).spawn(trials)[t]``, without spawning every trial's sequence up
    front (``--trials 1000000000`` starts at once)."""
    child = np.random.SeedSequence(seed, spawn_key=(t,))
    return int(child.generate_state(1, dtype=np.uint32)[0])


def trial_seeds(seed: int, trials: int) -> list[int]:
    """Independent, reproducible per-trial seeds derived from the run seed."""
    return [trial_seed(seed, t) for t in range(trials)]


@dataclass
class SearchResult:
    model: LBCNN
    history: list[dict]
    best_trial: int
    summary: dict
    out_dir: Path | None = None
    timings: dict = field(default_factory=dict)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.description}"), TimeElapsedColumn(), transient=False)


CONFIG_KEYS = ("dataset", "filters", "nl", "C", "seed", "trials", "train_size", "val_fraction",
               "cv", "refit_on_train_plus_val", "data_path", "split", "test_fraction", "resize",
               "grayscale", "rgb", "test_folder", "data_fingerprint")
# what each key means to a person, for the --resume refusal
_KEY_TEXT = {"data_fingerprint": "the data (every image and label, as loaded)"}


def read_run_config(out) -> dict:
    """The settings of the search run in ``out``, for ``--resume``."""
    path = Path(out) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume: {out} holds no search run (no config.json)")
    try:
        config = load_json(path.read_bytes(), f"--resume: {path}")
    except OSError:
        raise DataError(f"--resume: {path} is corrupt") from None
    if not isinstance(config, dict) or config.get("kind", "search") != "search":
        raise ConfigError(f"--resume: {out} is not a search run")
    return config


def _read_history(out_dir: Path, seed: int, trials: int) -> list[dict]:
    path = out_dir / "history.json"
    if not path.exists():
        return []
    try:
        history = load_json(path.read_bytes(), f"--resume: {path}", max_bytes=1 << 34)
    except OSError:
        raise DataError(f"--resume: {path} is corrupt") from None
    if not isinstance(history, list) or len(history) > trials or any(
            not isinstance(h, dict) or h.get("trial") != i + 1
            or h.get("seed") != trial_seed(seed, i) for i, h in enumerate(history)):
        raise DataError(f"--resume: {path} does not belong to this run's trial seeds")
    return history


def parse_C(C):
    """A fixed C (a positive number), or a sweep: "auto" (the default grid,
    ``heads.ridge_path.c_grid()``) or a sequence of values. Returns (fixed C or None,
    grid or None)."""
    from ..heads.ridge_path import c_grid

    if isinstance(C, str):
        text = C.strip().lower()
        if text == "auto":
            return None, c_grid()
        try:
            C = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"C must be a positive number, a comma-separated list or auto, "
                              f"got {C!r}") from None
    if isinstance(C, (list, tuple, np.ndarray)):
        values = sorted(set(float(v) for v in C))
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise ConfigError(f"every C must be a positive finite number, got {list(C)}")
        if len(values) == 1:
            return values[0], None
        return None, np.array(values)
    try:
        C = float(C)
    except (TypeError, ValueError):
        raise ConfigError(f"C must be a positive finite number, got {C!r}") from None
    if not (math.isfinite(C) and C > 0):
        raise ConfigError(f"C must be a positive finite number, got {C}")
    return C, None


def search(dataset: str | Dataset = "mnist", filters=(40, 4), nl: int = 1, C=1e-3,
           trials: int = 20, train_size: int | None = None, val_fraction: float = 0.1,
           seed: int = 0, out: str | Path | None = None, data_path: str | None = None,
           split: str = "default", refit: bool = True, batch_size: int = 2048,
           device=None, progress: bool = True, cv: int = 0, resume: bool = False,
           force: bool = False, test_fraction: float | None = None, resize=None,
           grayscale: bool = False, test_folder: str | None = None, rgb: bool = False,
           log=None) -> SearchResult:
    """Search ``trials`` random kernel sets; return the best model and a summary.

    ``cv`` >= 2 scores each trial by stratified ``cv``-fold cross-validation
    over the whole ``train_size`` budget (GTSRB tracks kept whole) instead of
    one held-out split: ``cv`` ELM fits per trial, worth it when the training
    set is tiny (Olivetti's 250 images leave a 25-image validation split,
    too coarse to rank kernel sets).

    With ``out``, the folder is checked and locked before any compute and
    each finished trial is written at once, so a killed or interrupted
    search continues with ``resume=True`` and ends as the uninterrupted run
    would. Trials are numbered from 1.

    ``C``: a number fixes the ridge C; ``"auto"`` (or a list of values) picks it per
    trial on validation from one pass over the data (``heads.ridge_path.sweep``): the
    first trial tries the whole grid, each later one the best trial's C and its
    neighbours, walking on while an edge wins. Each trial records its C and every C
    it tried; the final model is refit with the best trial's C.
    """
    filters = check_filters(filters)
    if int(trials) < 1:
        raise ConfigError(f"trials must be a positive integer, got {trials}")
    parse_C(C)
    if int(nl) < 1 or int(nl) > 8:
        raise ConfigError(f"nl must be between 1 and 8, got {nl}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not (math.isfinite(val_fraction) and 0 < val_fraction < 1):
        raise ConfigError(f"validation fraction must lie strictly between 0 and 1, got {val_fraction}")
    if int(cv) == 1 or int(cv) < 0:
        raise ConfigError(f"cv must be 0 (one validation split) or >= 2 folds, got {cv}")
    trials, nl, cv, batch_size = int(trials), int(nl), int(cv), int(batch_size)
    device = resolve_device(device)
    out_dir = None
    lock = None
    if out is not None:
        out_dir = prepare_run_dir(out, force=force, resume=resume)
        lock = RunLock(out_dir).acquire()
    elif resume:
        raise ConfigError("--resume needs --out, the run folder to continue")
    try:
        return _search_locked(dataset, filters, nl, C, trials, train_size, val_fraction, seed,
                              out_dir, data_path, split, refit, batch_size, device, progress, cv,
                              resume, dict(test_fraction=test_fraction, resize=resize,
                                           grayscale=grayscale, test_folder=test_folder, rgb=rgb),
                              log)
    finally:
        if lock is not None:
            lock.release()


def _search_locked(dataset, filters, nl, C, trials, train_size, val_fraction, seed, out_dir,
                   data_path, split, refit, batch_size, device, progress, cv, resume,
                   folder_opts, log) -> SearchResult:
    if isinstance(dataset, Dataset):
        ds = dataset
    else:
        ds = load_dataset(dataset, data_path, split=split, seed=seed, **folder_opts)
    train_idx, val_idx = ds.split(train_size, val_fraction, seed)
    if set(train_idx.tolist()) & set(val_idx.tolist()):  # cheap guard; tests check it too
        raise RuntimeError("train and validation splits overlap")
    if len(val_idx) == 0 and not cv:
        raise ConfigError("the validation split is empty; raise --train-size or --val-fraction")
    x_tr, y_tr = ds.x_train[train_idx], ds.y_train[train_idx]
    x_va, y_va = ds.x_train[val_idx], ds.y_train[val_idx]
    n_classes = ds.n_classes
    if cv:
        from ..data.splits import kfold_ids
        pool = np.concatenate([train_idx, val_idx])
        groups = ds.groups_train[pool] if ds.groups_train is not None else None
        x_pool, y_pool = ds.x_train[pool], ds.y_train[pool]
        folds = kfold_ids(y_pool, cv, seed, groups)
    probe = LBCNNBody.random(ds.input_shape, filters, nl, 0, ds.input_scale)
    d = probe.n_features
    _plan_memory(d, len(y_pool) if cv else len(train_idx) + len(val_idx))
    if log is not None:
        log(f"{ds.name}: {len(train_idx):,} fit + {len(val_idx):,} validation images"
            f"{f' ({cv}-fold CV over both)' if cv else ''}, {len(ds.y_test):,} test images, "
            f"{n_classes} classes, {d:,} features")

    config = {"kind": "search", "dataset": ds.name, "filters": list(filters), "nl": nl,
              "C": C if isinstance(C, (int, float, str)) else [float(c) for c in C],
              "seed": seed, "trials": trials, "train_size": int(len(train_idx) + len(val_idx)),
              "requested_train_size": train_size, "val_fraction": val_fraction, "cv": cv,
              "refit_on_train_plus_val": bool(refit or cv),
              "fit_size": int(len(train_idx)), "val_size": int(len(val_idx)),
              "data_path": None if data_path is None else str(data_path), "split": split,
              **{k: (list(v) if isinstance(v, tuple) else v) for k, v in folder_opts.items()},
              "device": str(device), "data_fingerprint": ds.fingerprint(),
              "split_record": ds.split_record()}
    history: list[dict] = []
    if out_dir is not None:
        if resume and (out_dir / "config.json").exists():
            saved = read_run_config(out_dir)
            diff = {k: (saved.get(k), config[k]) for k in CONFIG_KEYS
                    if k in saved and saved.get(k) != config[k]}
            if diff:
                raise ConfigError(f"--resume: settings differ from the run in {out_dir}: "
                                  + ", ".join(f"{_KEY_TEXT.get(k, k)} {a!r} -> {b!r}"
                                              for k, (a, b) in diff.items())
                                  + ("; the data changed since the run started, so its trials "
                                     "would be ranked across two datasets: start a new run"
                                     if "data_fingerprint" in diff else ""))
            history = _read_history(out_dir, seed, trials)
        write_json(out_dir / "config.json", config)

    fixed_C, grid = parse_C(C)
    best = max(range(len(history)), key=lambda i: (history[i]["val_accuracy"], -i), default=None)
    best_w = None  # the trial head of a trial run in this process, for --no-refit
    on_gpu = device.type == "cuda"
    if on_gpu:  # the images live on the device for the whole search, as uint8
        import torch
        x_tr, x_va = torch.from_numpy(x_tr).to(device), torch.from_numpy(x_va).to(device)
    bar = _progress(trials, progress)
    task = bar.add_task("", total=trials, completed=len(history)) if bar else None
    if bar:
        bar.start()
    try:
        for t in range(len(history), trials):
            tseed = trial_seed(seed, t)
            timer: dict = {}
            start = time.perf_counter()
            body = LBCNNBody.random(ds.input_shape, filters, nl, tseed, ds.input_scale)
            extra = {}
            if cv:
                val_acc, w, solver, extra = _trial_cv(body, x_pool, y_pool, folds, n_classes,
                                                      fixed_C, grid, batch_size, device, timer)
            elif grid is None:
                w, solver = fit_elm(body, x_tr, y_tr, n_classes, fixed_C, batch_size, device, timer)
                val_acc = _score(body, w, x_va, y_va, batch_size, device, timer)
            else:
                start_C = None if best is None else history[best]["C"]
                val_acc, w, solver, extra = _trial_sweep(body, x_tr, y_tr, x_va, y_va, n_classes,
                                                         grid, start_C, batch_size, device, timer)
            if not np.all(np.isfinite(w)):
                raise ConfigError(f"trial {t + 1}: the ELM head is not finite; raise C's "
                                  f"regularization (smaller --C) or check the images")
            total = time.perf_counter() - start
            rec = {"trial": t + 1, "seed": tseed, "val_accuracy": val_acc, "solver": solver,
                   "C": extra.get("C", fixed_C),
                   "seconds": total, "seconds_features": timer["features"],
                   "seconds_solve": timer["solve"], "seconds_scoring": timer["scoring"]}
            if "C_sweep" in extra:
                rec["C_sweep"] = extra["C_sweep"]
            history.append(rec)
            if best is None or val_acc > history[best]["val_accuracy"]:
                best, best_w = t, w
            if out_dir is not None:
                write_json(out_dir / "history.json", history)
            if bar:
                c_note = f"  C {rec['C']:.2g}" if grid is not None else ""
                bar.update(task, advance=1, description=f"trial {t + 1}: {100 * val_acc:.2f}%{c_note}  "
                           f"best {100 * history[best]['val_accuracy']:.2f}% (trial {best + 1})  "
                           f"{total:.1f}s/trial")
    except KeyboardInterrupt:
        if out_dir is None:
            raise Interrupted(f"interrupted after {len(history)} of {trials} trials; nothing was "
                              f"saved (no --out)") from None
        raise Interrupted(f"interrupted after {len(history)} of {trials} trials, all saved in "
                          f"{out_dir}; continue with: lbcnn search --resume --out {out_dir}") from None
    finally:
        if bar:
            bar.stop()
    if on_gpu:
        x_tr, x_va = x_tr.cpu().numpy(), x_va.cpu().numpy()

    best_t = best
    val_acc = history[best_t]["val_accuracy"]
    chosen_C = history[best_t].get("C", fixed_C)
    # kernels are a pure function of the trial seed, so a resumed run rebuilds the same body
    body = LBCNNBody.random(ds.input_shape, filters, nl, history[best_t]["seed"], ds.input_scale)
    model = LBCNN(filters=filters, nl=nl, C=chosen_C, random_state=history[best_t]["seed"],
                  input_scale=ds.input_scale, batch_size=batch_size, device=device)
    t0 = time.perf_counter()
    model.body_, model.classes_ = body, np.arange(n_classes)
    model.intercept_ = np.zeros(n_classes, dtype=np.float32)
    if refit or cv:  # the head is closed-form, so refitting on train+val chooses nothing
        x_fit = np.concatenate([x_tr, x_va])
        y_fit = np.concatenate([y_tr, y_va])
        model.coef_, model.solver_ = fit_elm(body, x_fit, y_fit, n_classes, chosen_C, batch_size,
                                             device)
    elif best_w is not None:
        model.coef_, model.solver_ = best_w, history[best_t]["solver"]
    else:  # the best trial ran before a resume: re-solve its head, the same closed form
        model.coef_, model.solver_ = fit_elm(body, x_tr, y_tr, n_classes, chosen_C, batch_size,
                                             device)
    refit_seconds = time.perf_counter() - t0
    # The one and only look at the test set.
    test_acc = model.score(ds.x_test, ds.y_test)

    per_trial = [h["seconds"] for h in history]
    summary = {
        "dataset": ds.name, "filters": list(filters), "nl": nl, "C": chosen_C,
        "C_selection": "fixed" if grid is None else
        f"validation sweep over {len(grid)} values {grid[0]:.3g}..{grid[-1]:.3g}", "seed": seed,
        "trials": trials, "best_trial": best_t + 1, "best_trial_seed": history[best_t]["seed"],
        "train_size": config["train_size"], "fit_size": int(len(train_idx)),
        "val_size": int(len(val_idx)), "test_size": int(len(ds.y_test)),
        "test_split": ds.test_split, "split": ds.split_record(), "refit_on_train_plus_val": bool(refit or cv),
        "selection": f"{cv}-fold cross-validation" if cv else "held-out validation split",
        "features": d, "val_accuracy": val_acc, "test_accuracy": test_acc,
        "val_standard_error": _standard_error(val_acc, len(y_pool) if cv else len(y_va)),
        "kbits_conv": body.conv_bits / 1000.0,
        "kbits_head": d * n_classes * HEAD_BITS_PAPER / 1000.0,
        "seconds_per_trial": statistics.median(per_trial),
        "seconds_features_median": statistics.median(h["seconds_features"] for h in history),
        "seconds_solve_median": statistics.median(h["seconds_solve"] for h in history),
        "seconds_scoring_median": statistics.median(h["seconds_scoring"] for h in history),
        "seconds_search_total": sum(per_trial), "seconds_refit": refit_seconds,
        "device": str(device), "class_names": list(ds.class_names),
    }
    if out_dir is not None:
        write_run(out_dir, summary, history, model, ds, val_fraction)
    return SearchResult(model, history, best_t + 1, summary, out_dir)


def _plan_memory(d: int, n: int) -> None:
    """Refuse before the first trial what the ELM solve would refuse at the first fit."""
    from ..memory import require
    if d < n:  # the same primal/dual choice fit_elm makes
        require(2 * 4 * d * d, f"the {d:,}² Gram matrix", "use fewer filters or layers "
                "(fewer features), or the dual with a smaller --train-size")
    else:
        require(2 * 8 * n * n, f"the {n:,}² dual kernel matrix", "use a smaller --train-size")


def _standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else 0.0


def _score(body, w, x, y, batch_size, device, timer) -> float:
    correct = 0
    t0 = time.perf_counter()
    t_feat = t_score = 0.0
    if getattr(device, "type", "cpu") == "cuda":
        import torch
        w_dev = torch.as_tensor(w, device=device)
        y_dev = torch.as_tensor(y, device=device)
        batches = body.iter_device(x, device)
    else:
        batches = body.iter_transform(x, batch_size, device)
    for a, b, f in batches:
        t1 = time.perf_counter()
        if isinstance(f, np.ndarray):
            correct += int(((f @ w).argmax(1) == y[a:b]).sum())
        else:
            correct += int(((f @ w_dev).argmax(1) == y_dev[a:b]).sum().item())
        t2 = time.perf_counter()
        t_feat += t1 - t0
        t_score += t2 - t1
        t0 = t2
    timer["features"] = timer.get("features", 0.0) + t_feat
    timer["scoring"] = timer.get("scoring", 0.0) + t_score
    return correct / max(len(y), 1)


def _features(body, x, batch_size, device, timer):
    """All features of ``x``: a NumPy array, or a tensor on CUDA."""
    t0 = time.perf_counter()
    h = body.features_device(x, device) if device.type == "cuda" else \
        body.transform(x, batch_size, device)
    timer["features"] = timer.get("features", 0.0) + time.perf_counter() - t0
    return h


def _trial_sweep(body, x_tr, y_tr, x_va, y_va, n_classes, grid, start_C, batch_size, device,
                 timer):
    """One trial with C chosen on validation; (val accuracy, W, solver, extra)."""
    from ..heads.ridge_path import RidgePath, sweep, validation_score
    from ..models.lbcnn import elm_system

    system = elm_system(body, x_tr, y_tr, n_classes, batch_size, device, timer)
    h_val = _features(body, x_va, batch_size, device, timer)
    t0 = time.perf_counter()
    n_values = len(grid) if start_C is None else 3
    path = RidgePath(system, "auto", n_values)
    res = sweep(path, grid, lambda w: validation_score(h_val @ w, y_va), start=start_C,
                host=device.type != "cuda")
    if hasattr(system, "release"):
        system.release()
    w = res.weights.cpu().numpy() if not isinstance(res.weights, np.ndarray) else res.weights
    timer["solve"] = timer.get("solve", 0.0) + time.perf_counter() - t0
    timer.setdefault("scoring", 0.0)
    return res.accuracy, w, res.solver, {"C": res.C, "C_sweep": res.record()}


def _trial_cv(body, x_pool, y_pool, folds, n_classes, fixed_C, grid, batch_size, device, timer):
    """One trial scored by K-fold cross-validation; with a grid, C is the value with the
    most held-out images right over all folds (every grid value is solved in every fold).
    Returns (CV accuracy, the last fold's W, solver, extra)."""
    from ..heads.ridge_path import RidgePath, validation_score
    from ..models.lbcnn import elm_system, solve_system

    values = [fixed_C] if grid is None else [float(c) for c in grid]
    correct = np.zeros(len(values))
    margins = np.zeros(len(values))
    w = solver = None
    for f in range(int(folds.max()) + 1):
        fit, held = folds != f, folds == f
        system = elm_system(body, x_pool[fit], y_pool[fit], n_classes, batch_size, device, timer)
        h_held = _features(body, x_pool[held], batch_size, device, timer)
        t0 = time.perf_counter()
        path = RidgePath(system, "auto", len(values))
        for i, c in enumerate(values):
            w, solver = path.weights(c) if grid is not None else solve_system(system, c)
            acc, margin = validation_score(h_held @ _like(w, h_held), y_pool[held])
            correct[i] += acc * held.sum()
            margins[i] += margin * held.sum()
        if hasattr(system, "release"):
            system.release()
        timer["solve"] = timer.get("solve", 0.0) + time.perf_counter() - t0
    timer.setdefault("scoring", 0.0)
    i = max(range(len(values)), key=lambda j: (round(correct[j]), margins[j], -j))
    extra = {"C": values[i]}
    if grid is not None:
        extra["C_sweep"] = [{"C": c, "val_accuracy": float(correct[j] / len(y_pool))}
                            for j, c in enumerate(values)]
    return float(round(correct[i]) / len(y_pool)), w, solver, extra


def _like(w, h):
    """``w`` as the kind of array ``h`` is (a device tensor for CUDA features)."""
    if isinstance(h, np.ndarray):
        return w
    import torch
    return torch.as_tensor(w, device=h.device)


def write_run(out_dir: Path, summary: dict, history: list[dict], model: LBCNN, ds: Dataset,
              val_fraction: float) -> None:
    write_json(out_dir / "summary.json", summary)
    write_json(out_dir / "history.json", history)
    write_csv(out_dir / "history.csv", history)
    save_lbcnn(model, out_dir / "model.npz", **ds.provenance(),
               val_accuracy=summary["val_accuracy"], test_accuracy=summary["test_accuracy"],
               test_size=summary["test_size"], train_size=summary["train_size"],
               val_fraction=val_fraction, seed=summary["seed"],
               refit_on_train_plus_val=summary["refit_on_train_plus_val"])
    from ..report import plot_trials
    plot_trials(history, out_dir / "trials.png", title=f"{summary['dataset']} "
                f"filters {','.join(map(str, summary['filters']))}: validation accuracy per trial",
                chosen=summary["best_trial"], n_val=summary["train_size"]
                if summary["selection"].endswith("cross-validation") else summary["val_size"])
