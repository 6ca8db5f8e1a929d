"""``optimize``: a multi-objective, multi-fidelity architecture search.

Each bracket (``brackets``) asks the study for a batch of configurations, scores
them all on a small share of the training budget, keeps the best third by Pareto
rank then crowding distance, scores those on a larger share, and so on up to the
full fit set (successive halving). Only top-rung results are told to the study as
COMPLETE; the others are told PRUNED, with every rung's result kept in the
trial's user attributes. Front members are refit on the whole budget and scored
on the test set once, after the front is fixed, all within ``--minutes``
(``budget``).
"""
from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from ...memory import memory_budget_bytes
from .brackets import OBJECTIVES, current_front
from .space import Config, SearchSpace, features
from .trial import cost, memory_need, prepare, refit


@dataclass
class OptimizeResult:
    front: list[dict]
    trials: list[dict]
    summary: dict
    out_dir: Path | None = None
    study: object = field(default=None, repr=False)


def parse_objectives(objectives) -> tuple[str, ...]:
    if isinstance(objectives, str):
        objectives = [o.strip() for o in objectives.split(",") if o.strip()]
    objectives = tuple(str(o).strip().lower() for o in objectives)
    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad:
        raise ConfigError(f"unknown objective {bad[0]!r}; choose from {', '.join(OBJECTIVES)}")
    if len(set(objectives)) != len(objectives):
        raise ConfigError(f"objectives repeat: {','.join(objectives)}")
    if "accuracy" not in objectives:
        raise ConfigError("objectives must include accuracy")
    return objectives




def _load(dataset, data_path, split, seed):
    from ...data import Dataset, load_dataset
    if isinstance(dataset, Dataset):
        return dataset
    return load_dataset(dataset, data_path, split=split, seed=seed)


def optimize(dataset="mnist", *, train_size: int | None = None, minutes: float = 30.0,
             out=None, objectives=("accuracy", "kbits"), max_kbits: float | None = None,
             space: SearchSpace | None = None, rungs=None, eta: int = 3,
             bracket: int | None = None, cv: int = 0, val_fraction: float = 0.1, seed: int = 0,
             workers: int = 0, ray_address: str | None = None, storage: str | None = None,
             study_name: str | None = None, resume: bool = False, force: bool = False,
             sampler: str = "tpe", max_configs: int | None = None, data_path=None,
             split: str = "default", promote_against: str = "bracket", flip: bool = False,
             progress: bool = False, log=None, started: float | None = None,
             device=None, gpu_threads: int = 4) -> OptimizeResult:
    """Search architecture, head bits and C for the Pareto front of validation accuracy
    against ``objectives``' costs; returns the refit, test-scored front.

    ``minutes`` is a wall-clock budget for the whole call, counted from ``started``
    (a ``time.perf_counter()`` value; default: now): search, refits, test reads and
    outputs. No evaluation or refit starts that its prediction says would not finish
    in time (``budget``, ``brackets``); C is solved per body, not sampled.
    ``device``: where features, ridge systems and C sweeps run (default: ``LBCNN_DEVICE``,
    else CUDA when present); on CUDA ``gpu_threads`` trials run at once
    (``runner.ThreadRunner``). ``workers``/``ray_address`` (Ray) run on the CPU.
    ``max_configs`` stops after that many configurations instead (tests).
    ``rungs`` (training images of the lower rungs) defaults to ``auto_rungs``.
    ``promote_against``: "bracket" ranks each rung within its bracket; "study" ranks
    it among every earlier result at that rung too. On MNIST (2026-12-01) "study"
    starved large models: at 1,000 images they are dominated by smaller ones that
    they beat at 9,000, and none above 196 kbits reached the top rung in 1,242
    configurations, so "bracket" is the default.
    ``flip``: every fit (trial, CV fold, final refit) also sees its images mirrored
    left-right; validation and held-out folds never do. Refused where a mirror can
    change the class (digits, signs). On Olivetti (paper split, 2 x 5-fold CV) it
    raised 5,4 with a 4-bit head from 98.0 % to 99.0-99.2 %.
    """
    if promote_against not in ("bracket", "study"):
        raise ConfigError(f"promote_against must be bracket or study, got {promote_against!r}")
    from ...outputs import RunLock, prepare_run_dir, write_json
    from .runner import LocalRunner, RayRunner, ThreadRunner, _check_reachable, ray_available
    from .study import check_storage_url, local_url, make_sampler, open_storage, open_study, \
        requeue_stale

    t_start = time.perf_counter() if started is None else float(started)
    objectives = parse_objectives(objectives)
    if storage is not None:
        check_storage_url(storage)
    if not minutes or minutes <= 0:
        raise ConfigError(f"minutes must be positive, got {minutes}")
    if int(eta) < 2:
        raise ConfigError(f"eta must be >= 2, got {eta}")
    if int(workers) < 0:
        raise ConfigError(f"workers must be >= 0, got {workers}")
    if int(cv) == 1 or int(cv) < 0:
        raise ConfigError(f"cv must be 0 (one validation split) or >= 2 folds, got {cv}")
    if max_kbits is not None and not max_kbits > 0:
        raise ConfigError(f"max kbits must be positive, got {max_kbits}")
    space = (space or SearchSpace()).check()
    if (workers or ray_address) and not ray_available():
        raise ConfigError('--workers/--ray need Ray: pip install -e ".[ray]"')
    if ray_address:
        _check_reachable(ray_address)
    if resume and out is None:
        raise ConfigError("--resume needs the --out folder of the run to continue")
    run_dir = prepare_run_dir(out, force=force, resume=resume) if out is not None else None
    if resume and not (run_dir / "run.json").exists():
        raise ConfigError(f"{run_dir} holds no optimize study to resume (no run.json); "
                          f"start without --resume")
    say = log or (lambda msg: None)
    with (RunLock(run_dir) if run_dir is not None else contextlib.nullcontext()):
        state = {}
        if resume:
            import json
            state = json.loads((run_dir / "run.json").read_text())
            if storage is None and state.get("storage") != "local":
                raise ConfigError("this run used --storage; pass the same --storage to resume it")
        owner = state.get("owner") or uuid.uuid4().hex
        if storage is None and run_dir is not None:
            if force and not resume:
                for suffix in ("", "-journal", "-wal", "-shm"):
                    (run_dir / f"study.db{suffix}").unlink(missing_ok=True)
            url = local_url(run_dir)
        else:
            url = storage
        store = open_storage(url) if url is not None else None
        ds = _load(dataset, data_path, split, seed)
        if rungs is None:
            rungs = auto_rungs(ds.n_classes, len(ds.y_train) if train_size is None else train_size,
                               int(eta))
        data = prepare(ds, train_size, val_fraction, seed, rungs, cv, space.colors(3), flip)
        data.c_grid = space.c_grid()
        from ...settings import resolve_device
        dev = resolve_device(device)
        if dev.type == "cuda" and not (workers or ray_address) and not cv:
            data.device = str(dev)
        shape, k = ds.input_shape, ds.n_classes
        budget_n = len(data.budget("gray")[1])
        fit_rows = budget_n * (2 if flip else 1)  # mirrored copies are extra rows to fit
        n_workers = max(1, int(workers)) if not ray_address else 1
        mem = memory_budget_bytes() // n_workers

        def infeasible(cfg: Config) -> tuple[str, float] | None:
            """(reason, relative excess) for a configuration that must not be fitted."""
            d = features(shape, cfg.filters, cfg.color)
            if d > space.max_features:
                return f"{d:,} features > --max-features {space.max_features:,}", \
                    d / space.max_features - 1
            need = memory_need(d, fit_rows, len(data.y_val))
            if need > mem:
                return "over the memory plan", need / mem - 1
            kb = cost(cfg, shape, k)["kbits"]
            if max_kbits is not None and kb > max_kbits:
                return f"{kb:.1f} kbits > --max-kbits {max_kbits:g}", kb / max_kbits - 1
            return None

        _check_space(space, shape, k, max_kbits, infeasible)
        fingerprint = {"dataset": ds.name, "split": split, "train_size": budget_n,
                       "val_fraction": val_fraction, "seed": seed, "cv": int(cv),
                       "rungs": data.rung_sizes, "objectives": list(objectives),
                       "space": space.to_dict()}
        if flip:  # only when set, so studies from before the option still resume
            fingerprint["flip"] = True
        name = study_name or state.get("study_name") or \
            f"lbcnn-{ds.name.replace(':', '-')}-{budget_n}-seed{seed}"

        n_rungs = len(data.rungs)
        bracket = int(bracket or (3 * int(eta) ** (n_rungs - 1) if n_rungs > 1
                                  else max(4, 2 * n_workers)))
        study = open_study(store, name, [OBJECTIVES[o] for o in objectives],
                           make_sampler(sampler, seed, startup=bracket), fingerprint,
                           create=not resume or storage is not None)
        if run_dir is not None:
            write_json(run_dir / "run.json", {
                "owner": owner, "study_name": name,
                "storage": "local" if storage is None else "external",
                "settings": fingerprint, "max_kbits": max_kbits, "minutes": minutes,
                "workers": workers, "sampler": sampler, "bracket": bracket, "eta": eta})
        requeued = requeue_stale(study, owner, every=storage is None)
        if requeued:
            say(f"resume: {requeued} trial(s) in flight when the run stopped are queued again")

        if workers or ray_address:
            runner = RayRunner(data, workers, ray_address)
        elif data.on_gpu:
            runner = ThreadRunner(data, gpu_threads)
        else:
            runner = LocalRunner(data)
        from .brackets import Planner, Reporter, member_of, run_brackets
        from .budget import REFIT_OVERHEAD, Clock, CostModel, calibrate, warm_imports, work_refit

        warm_imports()
        clock = Clock(minutes * 60.0, t_start)
        model = CostModel(prior=1.5 * calibrate())
        n_test = len(ds.y_test)

        def refit_seconds(m) -> float:
            return REFIT_OVERHEAD + model.seconds(work_refit(m.cost["features"], m.cost["macs"],
                                                             fit_rows, n_test, k, m.config.bits))

        last = len(data.rungs) - 1
        planner = Planner(data, shape, k, model, refit_seconds, runner.workers, runner.caches)

        def front_refit_seconds() -> float:
            return sum(planner.refit(member_of(t, last + 1))
                       for t in current_front(study, objectives, max_kbits, last))

        reporter = Reporter(progress, clock, log)
        try:
            counters = run_brackets(study, space, data, shape, k, objectives, infeasible, runner,
                                    seed, owner, bracket, int(eta), clock, planner, max_configs,
                                    max_kbits, reporter, run_dir, promote_against,
                                    front_refit_seconds)
        finally:
            reporter.close()
            runner.close()
            from .trial import FEATURES
            FEATURES.clear()
        t_search = time.perf_counter() - t_start

        from .report import trial_rows, write_outputs
        rows = trial_rows(study, objectives)
        front = _final_front(study, objectives, max_kbits, ds, data, run_dir, say, clock,
                             lambda t: planner.refit(member_of(t, last + 1)), model)
        summary = _summary(rows, front, counters, t_search, time.perf_counter() - t_start,
                           fingerprint, name, max_kbits, runner, bracket, eta, sampler)
        summary["promote_against"] = promote_against
        summary["minutes"] = minutes
        if run_dir is not None:
            write_outputs(run_dir, rows, front, summary, ds.name, objectives)
        summary["seconds"] = round(time.perf_counter() - t_start, 1)
    return OptimizeResult(front, rows, summary, run_dir, study)


def auto_rungs(n_classes: int, budget: int, eta: int = 3) -> list[int]:
    """At most two lower rungs: ~70 images a class (at least 1,000), then eta times
    more, below the budget. MNIST: 1,000, 3,000; GTSRB (43 classes): 3,000. Fewer
    images a class rank configurations by noise (GTSRB at 1,000, 23 a class: rung-0
    validation accuracies of 12-57 %)."""
    r = max(1000, int(round(70 * n_classes, -2)))
    out = []
    while r < 0.9 * budget and len(out) < 2:
        out.append(r)
        r *= eta
    return out


def _check_space(space, shape, k, max_kbits, infeasible) -> None:
    if any(True for _ in space.enumerate(shape, lambda c: infeasible(c) is None)):
        return
    if max_kbits is not None:
        sizes = [(cost(c, shape, k)["kbits"], c) for c in space.enumerate(shape)]
        if sizes:
            smallest, cfg = min(sizes, key=lambda s: s[0])
            raise ConfigError(f"--max-kbits {max_kbits:g} is below the smallest model in the "
                              f"search space ({smallest:.1f} kbits: {cfg.label()})")
    raise ConfigError("the search space allows no model: every architecture exceeds "
                      f"--max-features {space.max_features:,} or the memory plan; widen it")


def _final_front(study, objectives, max_kbits, ds, data, run_dir, say, clock=None,
                 refit_seconds=None, model=None) -> list[dict]:
    """Fix the front on validation results, then refit and test each member once. A
    refit the clock has no room for (predicted beyond the deadline by more than 7 % of
    the budget) is skipped and the member reported without a model."""
    from ...deploy.accounting import account
    from ...models.lbcnn import save_lbcnn
    from .budget import work_refit

    last = len(data.rungs) - 1
    members = current_front(study, objectives, max_kbits, last)
    front = []
    for t in members:  # the front is fixed above; nothing below feeds back into it
        top = t.user_attrs[f"rung{last}"]
        cfg = Config(**{**t.user_attrs["config"], "filters": tuple(t.user_attrs["config"]["filters"])})
        if cfg.C is None:  # solved per body: the C the top rung chose
            cfg = Config(cfg.filters, cfg.nl, float(top["C"]), cfg.bits, cfg.color)
        seed = int(t.user_attrs["kernel_seed"])
        # the ranked value may carry a tie-break; the member reports the accuracy itself
        val = float(top["val_accuracy"])
        row = {"trial": t.number + 1, "config": cfg.to_dict(), "label": cfg.label(),
               "kernel_seed": seed, "val_accuracy": val, "test_accuracy": None,
               "kbits": float(t.user_attrs["kbits"]), "macs": int(t.user_attrs["macs"]),
               "params": int(t.user_attrs["params"]), "features": int(t.user_attrs["features"]),
               "train_size": int(len(data.budget(cfg.color)[1])), "fit_seconds": None,
               "model": None}
        predicted = refit_seconds(t) if refit_seconds is not None else None
        if predicted is not None:
            row["predicted_fit_seconds"] = round(predicted, 3)
        if clock is not None and predicted is not None and \
                predicted > clock.left() + 0.07 * clock.budget:
            row["refit"] = "skipped: the --minutes deadline"
            front.append(row)
            say(f"front: {cfg.label():40s} val {100 * val:.2f} %  refit skipped (deadline)")
            continue
        model_, fit_s = refit(cfg, seed, data)
        x_test = ds.x_test
        if cfg.color == "y":
            from ...preprocess import rgb_to_y
            x_test = rgb_to_y(x_test)
        info = account(model_, sizes=False)
        if abs(info["total_kbits"] - t.user_attrs["kbits"]) > 1e-9:  # cost() mirrors account()
            say(f"warning: trial {t.number + 1} kbits {t.user_attrs['kbits']} != saved "
                f"{info['total_kbits']}")
        t0 = time.perf_counter()
        test_acc = model_.score(x_test, ds.y_test)  # the one look at the test set
        if model is not None:
            c = t.user_attrs
            model.observe(work_refit(c["features"], c["macs"], row["train_size"], len(ds.y_test),
                                     ds.n_classes, cfg.bits), fit_s + time.perf_counter() - t0)
        path = None
        if run_dir is not None:  # trials are numbered from 1, as in search
            path = run_dir / "models" / f"trial-{t.number + 1:05d}.npz"
            save_lbcnn(model_, path, **ds.provenance(), val_accuracy=val,
                       test_accuracy=float(test_acc), test_size=int(len(ds.y_test)),
                       kernel_seed=seed, train_size=len(data.budget(cfg.color)[1]),
                       input_color=cfg.color, optimize_trial=t.number + 1,
                       refit_on_train_plus_val=True)
        params = sum(r["weights"] for r in info["layers"] if r["layer"] != "head scales")
        row.update({"test_accuracy": float(test_acc), "kbits": float(info["total_kbits"]),
                    "macs": int(info["macs"]), "params": int(params),
                    "features": int(info["features"]), "fit_seconds": round(fit_s, 3),
                    "model": str(path) if path is not None else None})
        front.append(row)
        say(f"front: {cfg.label():40s} val {100 * val:.2f} %  test {100 * test_acc:.2f} %  "
            f"{info['total_kbits']:.1f} kbits")
    return front


def _summary(rows, front, counters, t_search, t_total, fingerprint, name, max_kbits, runner,
             bracket, eta, sampler) -> dict:
    n_rungs = len(fingerprint["rungs"])
    per_rung = []
    for r in range(n_rungs):
        at = [row for row in rows if row.get(f"rung{r}_val_accuracy") is not None]
        per_rung.append({
            "rung": r, "n_train": fingerprint["rungs"][r], "configs": len(at),
            "pruned": sum(1 for row in rows if row.get("pruned_at_rung") == r),
            "seconds": round(sum(row[f"rung{r}_seconds"] for row in at), 2),
            "seconds_per_config": round(statistics.mean(row[f"rung{r}_seconds"] for row in at), 3)
            if at else None})
    evaluated = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    return {
        **fingerprint, "study_name": name, "max_kbits": max_kbits, "sampler": sampler,
        "bracket": bracket, "eta": eta, "runner": runner.kind, "workers": runner.workers,
        "trials": len(evaluated), "pruned": sum(r["state"] == "PRUNED" for r in evaluated),
        "completed": sum(r["state"] == "COMPLETE" for r in evaluated),
        "infeasible": sum(r["state"] == "INFEASIBLE" for r in rows),
        "evaluated_this_run": counters["evaluated"], "brackets_this_run": counters["brackets"],
        "skipped_infeasible_this_run": counters["skipped_infeasible"],
        "skipped_deadline_this_run": counters.get("skipped_deadline", 0),
        "stopped_deadline_this_run": counters.get("stopped_deadline", 0),
        "rungs_detail": per_rung, "seconds_search": round(t_search, 1),
        "seconds": round(t_total, 1), "front": front,
    }
