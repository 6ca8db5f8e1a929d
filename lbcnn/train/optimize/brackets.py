"""The successive-halving loop of ``lbcnn optimize``, every start admitted against the clock.

A bracket asks the study for its configurations and scores them on rung 0; the
best third (by Pareto rank, then crowding distance) go on to rung 1, and so on up
to the whole fit set, where they are told COMPLETE; the others PRUNED.

Admission (``budget``): an evaluation starts only if it, the promotions the
bracket would still owe after it, the refits of those that could join the front and
the refits of the present front all fit in the time left. So a short budget runs a
smaller bracket rather than an unfinished one, and the final refits always have
their time. A configuration asked but never started is told FAIL with
``skipped: deadline`` (it says nothing about the configuration); one not promoted
for lack of time is PRUNED with ``stopped: deadline``.

The loop is generic over what a trial is: a config, a kernel seed and the result
of ``trial.evaluate`` at a rung (a score at a fidelity), plus cost estimates.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .budget import work_eval
from .pareto import pareto_front, promote
from .space import Config
from .trial import FEATURES, cost, kernel_seed, rank_accuracy

OBJECTIVES = {"accuracy": "maximize", "kbits": "minimize", "macs": "minimize"}
ANCHOR_MARGIN = 1.15  # on a prediction scaled from the configuration's own measured time


def objective_values(objectives, acc: float, c: dict) -> list[float]:
    return [acc if o == "accuracy" else float(c[o]) for o in objectives]


def maximize_flags(objectives) -> list[bool]:
    return [OBJECTIVES[o] == "maximize" for o in objectives]


@dataclass
class Member:
    trial: object
    config: Config
    seed: int
    cost: dict
    C: float | None = None
    acc: float | None = None
    val: float | None = None
    measured: dict = field(default_factory=dict)  # rung -> seconds it took


def member_of(t, n_rungs: int) -> Member:
    """A study trial (fitted at least at rung 0) as a ``Member``, its measured times kept."""
    ua = t.user_attrs
    cfg = Config(**{**ua["config"], "filters": tuple(ua["config"]["filters"])})
    m = Member(t, cfg, int(ua["kernel_seed"]),
               {k: ua[k] for k in ("kbits", "macs", "params", "features")})
    m.measured = {r: float(ua[f"rung{r}"]["seconds"]) for r in range(n_rungs)
                  if f"rung{r}" in ua}
    return m


class Reporter:
    """Progress: a rich bar on a terminal, plain lines (at most one every ``every``
    seconds, and one per bracket) when the output is a file or a pipe."""

    def __init__(self, enabled: bool, clock, log=None, every: float = 15.0, stream=None):
        self.clock = clock
        self.stream = stream or sys.stderr
        self.bar = None
        self.plain = False
        self.every = every
        self._last = -math.inf
        self.log = log
        if not enabled:
            return
        if getattr(self.stream, "isatty", lambda: False)():
            from .report import progress_bar
            self.bar = progress_bar(clock.budget)
            self.bar.start()
        else:
            self.plain = True

    def update(self, text: str, force: bool = False) -> None:
        now = self.clock.elapsed()
        if self.bar is not None:
            self.bar.update(self.bar.task_ids[0], completed=min(now, self.clock.budget),
                            description=text)
        elif self.plain and (force or now - self._last >= self.every):
            self._last = now
            line = f"optimize {now:6.0f} s of {self.clock.budget:.0f}: {text}"
            if self.log is not None:
                self.log(line)
            else:
                print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Planner:
    """Predicted seconds of evaluations and refits, and the admission rule."""

    def __init__(self, data, shape, k, model, refit_seconds, n_workers: int, caches: bool):
        self.data, self.shape, self.k = data, shape, k
        self.model = model
        self.refit_seconds = refit_seconds
        self.n_workers = max(1, n_workers)
        self.caches = caches
        self.rung0: list = []  # (member, seconds) of every rung-0 evaluation

    def rows(self, rung: int) -> int:
        n = len(self.data.rungs[rung])
        return n * (2 if self.data.flip else 1)

    def work(self, m: Member, rung: int) -> float:
        d, macs = m.cost["features"], m.cost["macs"]
        n_grid = 1 if m.config.C is not None else len(self.data.c_grid)
        if self.data.folds is not None:
            n = len(self.data.y_fit)
            folds = int(self.data.folds.max()) + 1
            fit = (n - n // folds) * (2 if self.data.flip else 1)
            w, _ = work_eval(d, macs, fit, n // folds, self.k, m.config.bits, n_grid)
            return folds * w, float(macs) * n * (2 if self.data.flip else 1)
        n_c = n_grid if rung == 0 else min(n_grid, 4)
        cached = 0
        if self.caches and rung > 0:
            cached = self.rows(rung - 1) + len(self.data.y_val)
        return work_eval(d, macs, self.rows(rung), len(self.data.y_val), self.k, m.config.bits,
                         n_c, cached)

    def seconds(self, m: Member, rung: int) -> float:
        """Predicted seconds of ``m`` at ``rung``: the model's figure, or, once ``m`` has run
        a lower rung, that measurement scaled by the model's ratio between the two (the
        configuration's own speed, the model's scaling with the rows)."""
        base = self.model.seconds(self.work(m, rung))
        lower = [r for r in m.measured if r < rung]
        if not lower:
            return base
        r0 = max(lower)
        return ANCHOR_MARGIN * m.measured[r0] * base / self.model.seconds(self.work(m, r0))

    def refit(self, m: Member) -> float:
        """Predicted seconds of ``m``'s refit (anchored on its highest measured rung)."""
        base = self.refit_seconds(m)
        if not m.measured:
            return base
        r0 = max(m.measured)
        return ANCHOR_MARGIN * m.measured[r0] * base / self.model.seconds(self.work(m, r0))

    def observe(self, m: Member, rung: int, seconds: float, feature_seconds=None) -> None:
        self.model.observe(self.work(m, rung), seconds, feature_seconds)
        m.measured[rung] = float(seconds)
        if rung == 0:
            self.rung0.append((m, seconds))

    def pipeline(self, m: Member, rung: int, last: int) -> float:
        """Seconds ``m`` needs from ``rung`` to the end: that rung, the ones above, its refit."""
        return sum(self.seconds(m, r) for r in range(rung, last + 1)) + self.refit(m)

    def owed(self, members, rung: int, last: int, eta: int) -> float:
        """Seconds the bracket still owes after ``members`` ran at ``rung``: the promotions
        to every later rung (spread over the workers), and the refits (one after the
        other) of the ones that reach the top, each at the members' mean predicted cost
        (the rung admissions and the refit check keep the deadline when a costlier one
        is promoted)."""
        if not members:
            return 0.0
        promotions = 0.0
        n = len(members)
        for r in range(rung + 1, last + 1):
            n = max(1, math.ceil(n / eta - 1e-9))
            promotions += n * float(np.mean([self.seconds(m, r) for m in members]))
        top = n if rung < last else len(members)
        refits = top * float(np.mean([self.refit(m) for m in members]))
        return promotions / self.n_workers + refits

    def smallest_start(self, last: int, eta: int) -> float:
        """Seconds the cheapest bracket seen so far needs: one rung-0 evaluation at the
        median observed time, and what it would owe. 0 before any observation."""
        if not self.rung0:
            return 0.0
        typical = sorted(self.rung0, key=lambda mt: mt[1])[len(self.rung0) // 2][0]
        return self.seconds(typical, 0) + self.owed([typical], 0, last, eta)


def run_brackets(study, space, data, shape, k, objectives, infeasible, runner, run_seed, owner,
                 bracket, eta, clock, planner, max_configs, max_kbits, reporter, run_dir,
                 promote_against, front_refit_seconds) -> dict:
    """Brackets until the configurations or the time run out; returns the counters."""
    import optuna

    from ...outputs import write_csv
    from .report import trial_rows

    maximize = maximize_flags(objectives)
    last = len(data.rungs) - 1
    counters = {"brackets": 0, "evaluated": 0, "skipped_infeasible": 0, "bracket_seconds": [],
                "skipped_deadline": 0, "stopped_deadline": 0}
    best = {"acc": None}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if max_kbits is None or t.user_attrs.get("kbits", math.inf) <= max_kbits:
            top = t.user_attrs.get(f"rung{last}", {}).get("val_accuracy")
            if top is not None:
                best["acc"] = max(best["acc"] or 0.0, top)
    # every rung's earlier results (this run's and, on resume or a shared study, others')
    history = [[] for _ in data.rungs]
    for t in study.get_trials(deepcopy=False):
        for r in range(last + 1):
            res = t.user_attrs.get(f"rung{r}")
            if res is not None and "kbits" in t.user_attrs:
                history[r].append(objective_values(objectives, rank_accuracy(res), t.user_attrs))
    done = {"n": 0, "pruned": 0}

    def show(force=False):
        b = "-" if best["acc"] is None else f"{100 * best['acc']:.2f} %"
        within = f" within {max_kbits:g} kbits" if max_kbits is not None else ""
        reporter.update(f"{counters['evaluated']} configurations, {done['pruned']} pruned, "
                        f"{done['n'] - done['pruned']} completed, best val{within} {b}", force)

    def forget(m: Member) -> None:
        FEATURES.discard(FEATURES.key(m.config, m.seed, data))

    front_reserve = front_refit_seconds()
    empty = 0  # brackets in a row that found no member that fits the time left
    while True:
        if max_configs is not None and counters["evaluated"] >= max_configs:
            break
        if clock.left() <= planner.smallest_start(last, eta) + front_reserve:
            break
        size = bracket if max_configs is None else min(bracket, max_configs - counters["evaluated"])
        t_bracket = time.perf_counter()
        skipped_before = counters["skipped_deadline"]
        alive: list = []
        results: list = []
        # rung 0: asked a batch (one per worker) at a time, each admitted before it starts,
        # so a short budget asks only what it can run
        while len(alive) < size:
            def over_time(m, alive=alive):
                """(reason, excess) when ``m``'s own run to the top rung and refit, or the
                bracket with it, cannot finish in time."""
                need = front_reserve + max(
                    planner.pipeline(m, 0, last),
                    planner.seconds(m, 0) + planner.owed(alive + [m], 0, last, eta))
                left = clock.left()
                if need <= left:
                    return None
                return (f"predicted {need:.0f} s with its promotions and refit, "
                        f"{max(left, 0):.0f} s left (--minutes)", need / max(left, 1e-3) - 1)

            batch = _ask_bracket(study, space, shape, k, min(planner.n_workers, size - len(alive)),
                                 infeasible, run_seed, owner, counters, over_time)
            if not batch:
                break
            base = len(alive)
            candidates = alive + batch
            refused = {"any": False}

            def admit0(i, offset, base=base, candidates=candidates, refused=refused):
                j = base + i
                m = candidates[j]
                need = max(planner.pipeline(m, 0, last),
                           planner.seconds(m, 0) + planner.owed(candidates[:j + 1], 0, last, eta))
                if not refused["any"] and clock.left() - offset >= need + front_reserve:
                    return True
                refused["any"] = True
                return False

            got = runner.map([(m.config, m.seed, 0, m.C) for m in batch], admit=admit0,
                             predicted=[planner.seconds(m, 0) for m in batch],
                             on_result=lambda i, res: show())
            for m, res in zip(batch, got):
                if res is None:  # never fitted: no verdict on the configuration
                    m.trial.set_user_attr("skipped", "deadline")
                    study.tell(m.trial, state=optuna.trial.TrialState.FAIL)
                    counters["skipped_deadline"] += 1
                else:
                    alive.append(m)
                    results.append(res)
            if refused["any"]:
                break
        if not alive:
            # the sampler proposed only what cannot finish in the time left; smaller
            # configurations may still fit, so ask again before giving the time up
            empty += 1
            if empty < EMPTY_BRACKETS and counters["skipped_deadline"] > skipped_before:
                continue
            break
        empty = 0
        for r in range(last + 1):
            if r > 0:
                committed = {"refits": 0.0}

                def admit(i, offset, r=r, alive=alive, committed=committed):
                    """Start ``alive[i]`` at rung ``r`` ``offset`` seconds from now? Only if its
                    own run to the end fits beside the refits already owed."""
                    need = planner.pipeline(alive[i], r, last)
                    if clock.left() - offset >= need + committed["refits"] + front_reserve:
                        committed["refits"] += planner.refit(alive[i])
                        return True
                    return False

                results = runner.map([(m.config, m.seed, r, m.C) for m in alive], admit=admit,
                                     predicted=[planner.seconds(m, r) for m in alive],
                                     on_result=lambda i, res: show())
            ran = []
            for m, res in zip(alive, results):
                if res is None:
                    continue
                res = {**res, "predicted_seconds": round(planner.seconds(m, r), 3)}
                planner.observe(m, r, res["seconds"], res.get("seconds_features"))
                m.trial.set_user_attr(f"rung{r}", res)
                m.acc, m.val, m.C = rank_accuracy(res), res["val_accuracy"], res.get("C")
                ran.append(m)
            for m, res in zip(alive, results):
                if res is not None:
                    continue
                forget(m)
                m.trial.set_user_attr("pruned_at_rung", r - 1)
                m.trial.set_user_attr("stopped", "deadline")
                study.tell(m.trial, state=optuna.trial.TrialState.PRUNED)
                counters["stopped_deadline"] += 1
                done["n"] += 1
                done["pruned"] += 1
            if r == 0:
                counters["evaluated"] += len(ran)
            alive = ran
            if not alive:
                break
            points = [objective_values(objectives, m.acc, m.cost) for m in alive]
            context = list(history[r])
            history[r].extend(points)
            if r == last:
                for m in alive:
                    study.tell(m.trial, objective_values(objectives, m.acc, m.cost))
                    forget(m)
                    done["n"] += 1
                    if max_kbits is None or m.cost["kbits"] <= max_kbits:
                        best["acc"] = max(best["acc"] or 0.0, m.val)
                front_reserve = front_refit_seconds()
                break
            # successive halving among the members that can still finish: one whose run to
            # the top rung and refit no longer fits the time left is not promoted
            room = clock.left() - front_reserve
            fits = [i for i, m in enumerate(alive) if planner.pipeline(m, r + 1, last) <= room]
            n_keep = min(len(fits), max(1, math.ceil(len(alive) / eta - 1e-9)))
            keep = set()
            if fits:
                picked = promote([points[i] for i in fits], maximize, n_keep / len(fits),
                                 context if promote_against == "study" else None)
                keep = {fits[j] for j in picked.tolist()}
            for i, m in enumerate(alive):
                if i not in keep:
                    m.trial.set_user_attr("pruned_at_rung", r)
                    if i not in fits:
                        m.trial.set_user_attr("stopped", "deadline")
                        counters["stopped_deadline"] += 1
                    study.tell(m.trial, state=optuna.trial.TrialState.PRUNED)
                    forget(m)
                    done["n"] += 1
                    done["pruned"] += 1
            alive = [m for i, m in enumerate(alive) if i in keep]
            show()
        counters["brackets"] += 1
        counters["bracket_seconds"].append(time.perf_counter() - t_bracket)
        show(force=True)
        if run_dir is not None:  # a killed run still leaves an up-to-date table
            write_csv(run_dir / "trials.csv", trial_rows(study, objectives))
    return counters


EMPTY_BRACKETS = 10  # brackets in a row without a member that fits before the search ends


def _ask_bracket(study, space, shape, k, size, infeasible, run_seed, owner, counters,
                 over_time=None, patience: int = 3) -> list:
    """``size`` members to fit. A configuration that cannot be fitted (``infeasible``) is
    told PRUNED with a constraint violation, so the sampler learns to avoid the region (a
    FAIL would teach it nothing). One whose run cannot finish in the time left
    (``over_time``) is told FAIL (``skipped: deadline``): that says nothing about the
    configuration. After ``patience`` of those in a row, fewer members are returned."""
    import optuna

    members = []
    attempts = late = 0
    while len(members) < size and attempts < 200 * size and late < patience:
        attempts += 1
        trial = study.ask()
        params = space.suggest(trial, shape[2])
        cfg = Config.from_params(params, shape[2])
        why = infeasible(cfg)
        if why:
            trial.set_user_attr("infeasible", why[0])
            trial.set_constraint("size", max(float(why[1]), 1e-6))  # Optuna 5's constraint API
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            counters["skipped_infeasible"] += 1
            continue
        seed = trial.user_attrs.get("kernel_seed")
        seed = kernel_seed(run_seed, trial.number) if seed is None else int(seed)
        c = cost(cfg, shape, k)
        for key, value in (("kernel_seed", seed), ("owner", owner), ("config", cfg.to_dict()),
                           *c.items()):
            trial.set_user_attr(key, value)
        member = Member(trial, cfg, seed, c)
        late_why = over_time(member) if over_time is not None else None
        if late_why:
            late += 1
            trial.set_user_attr("skipped", f"deadline: {late_why[0]}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            counters["skipped_deadline"] += 1
            continue
        late = 0
        members.append(member)
    return members


def current_front(study, objectives, max_kbits, last: int) -> list:
    """The completed trials on the Pareto front of validation results (within max_kbits)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if max_kbits is None or t.user_attrs.get("kbits", math.inf) <= max_kbits]
    if not done:
        return []
    idx = pareto_front([t.values for t in done], maximize_flags(objectives))
    return sorted((done[i] for i in idx), key=lambda t: (t.user_attrs["kbits"], -t.values[0]))
