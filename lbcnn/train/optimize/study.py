"""The Optuna study: where it lives, how it is joined, resumed and repaired.

By default the study is an SQLite file in the run folder: every tell is a
transaction and SQLite's locks die with the process, so a run killed at any
moment (SIGKILL included) loses at most the trials that were in flight. Those
are left RUNNING; ``--resume`` marks the ones this run folder owned as FAIL and
queues their parameters and kernel seeds again.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ...errors import ConfigError

STUDY_FILE = "study.db"
RDB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg2", "postgresql+psycopg",
               "postgresql+pg8000", "mysql", "mysql+pymysql", "mysql+mysqldb")


def check_storage_url(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in RDB_SCHEMES:
        raise ConfigError(f"--storage must be a database URL (postgresql://USER:PASS@HOST/DB, "
                          f"mysql://..., sqlite:///PATH), got {url!r}")
    return url


def open_storage(url: str, attempts: int = 5):
    """Optuna's RDB storage for ``url``. Processes that start together on a fresh
    database race to create its tables, and the loser sees a duplicate-key error
    (PostgreSQL's pg_type); once the winner is done the tables exist, so a failed
    open is retried a few times before it is reported."""
    import time

    import optuna

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except ModuleNotFoundError as exc:
            raise ConfigError(f"the database driver for {url.split('://')[0]} is not installed "
                              f"({exc.name}); pip install -e \".[postgres]\" (PostgreSQL, "
                              f"psycopg) or pymysql (MySQL)") from None
        except Exception as exc:  # sqlalchemy's OperationalError and friends
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            if "DB access module" in first:  # Optuna's wording for a missing driver
                first += ' (PostgreSQL: pip install -e ".[postgres]"; MySQL: pip install pymysql)'
            elif attempt + 1 < attempts and ("duplicate key" in first or "already exists" in first):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise ConfigError(f"cannot open the study storage {_redact(url)}: {first}") from None


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def local_url(run_dir: Path) -> str:
    return f"sqlite:///{(Path(run_dir) / STUDY_FILE).resolve()}"


def make_sampler(kind: str, seed: int, startup: int):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "tpe":
            # MO-TPE; group=True because the nf2/nf3 parameters exist only for deeper nets
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              n_startup_trials=startup, constant_liar=True)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(startup, 10))
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {kind!r}; choose tpe, nsga2 or random")


def study_exists(storage, name: str) -> bool:
    import optuna
    return any(s.study_name == name for s in optuna.study.get_all_study_summaries(storage))


def open_study(storage, name: str, directions, sampler, fingerprint: dict, *, create: bool):
    """Create (``create``) or load the study and check it was made for the same data."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    exists = study_exists(storage, name)
    if not exists and not create:
        raise ConfigError(f"no study {name!r} to resume in that storage; start the run "
                          f"without --resume")
    study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                sampler=sampler, load_if_exists=True)
    stored = study.user_attrs.get("lbcnn_optimize")
    if stored is None:
        study.set_user_attr("lbcnn_optimize", fingerprint)
    elif stored != fingerprint:
        diff = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        raise ConfigError(f"study {name!r} was made with other settings ({', '.join(diff)} differ); "
                          f"use the same options or another --study-name")
    if [d.name.lower() for d in study.directions] != list(directions):
        raise ConfigError(f"study {name!r} has other objectives")
    return study


def requeue_stale(study, owner: str, every: bool = False) -> int:
    """Trials this run folder left RUNNING (killed mid-bracket): FAIL them and queue
    their parameters and kernel seeds again. ``every``: the study is this folder's
    own (the run lock proves nobody else runs it), so every RUNNING trial is stale,
    even one killed before it was stamped with its owner. Returns how many."""
    import optuna

    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if not every and t.user_attrs.get("owner") != owner:
            continue  # another process's trial in a shared study
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        if "kernel_seed" in t.user_attrs and t.params:  # stamped after all params were drawn
            study.enqueue_trial(t.params, user_attrs={"kernel_seed": t.user_attrs["kernel_seed"],
                                                      "requeued_from": t.number})
        n += 1
    return n
