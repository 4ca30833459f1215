"""Sweeps on Ray Tune (the trials role). Attack-grid sweeps: one trial per (attack, setting) over
scores already computed; training sweeps: one trial per training grid point, each running a
pipeline of its own (ASHA on the watched fit's val_eps_mse).

What a trial computes comes from the sweep (`evaluate` for attack settings, a `TrainingTrial`
for grid points); this module only places the trials. The sweep's callable (with the scores
table it carries) reaches trials through the object store once (`tune.with_parameters`); a
trial reports its metrics in one `tune.report`. Run storage is
`<root>/<experiment>/sweeps/<name>/tune/<run name>`, with a deterministic run name, so an
interrupted sweep resumes through `Tuner.restore` (finished trials are not rerun; errored ones
are retried).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import ray
import ray.data
from ray import tune

from raydefense.config import ExperimentConfig
from raydefense.errors import ResourceError
from raydefense.run.context import Backend, TrainingTrial
from raydefense.storage import Storage

log = logging.getLogger("raydefense")

# Tune saves its experiment state (trial statuses, ASHA's rungs, each trial's results) to the
# driver's staging dir every ~10 s but uploads it to storage at most every sync_period, 300 s by
# default: a run killed within 5 minutes of a trial finishing would rerun that trial on resume
# and lose its result history. The state is a few small files, so upload it every few seconds.
STATE_SYNC_PERIOD_S = 5


def _trial(
    config: dict[str, Any], evaluate: Callable[[str], dict[str, float]] | None = None
) -> None:
    assert evaluate is not None  # tune.with_parameters always passes it
    tune.report(evaluate(config["setting"]))


def _dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def concurrency(cfg: ExperimentConfig, cluster: dict[str, Any], num_trials: int) -> int:
    """sweep.max_concurrent_trials, or as many trials as the cluster's CPUs hold at
    sweep.cpus_per_trial each (at least 1, at most the number of trials).

    Raises:
        ResourceError: one trial asks for more CPUs than the cluster has.
    """
    cpus, per = float(cluster.get("CPU", 0)), cfg.sweep.cpus_per_trial
    if per > cpus:
        raise ResourceError(
            f"sweep.cpus_per_trial={per:g} exceeds the cluster's {cpus:g} CPUs; lower it"
        )
    n = cfg.sweep.max_concurrent_trials or int(cpus // per)
    return max(1, min(n, num_trials))


def _fit_or_resume(
    what: str,
    storage: Storage,
    rel_path: str,
    run_name: str,
    trainable: Any,
    new_tuner: Callable[[str], tune.Tuner],
) -> Any:
    """Restore the Tune run under rel_path/run_name when it exists (finished trials keep their
    results, errored and unfinished ones run), else start it with new_tuner(storage_path).

    Raises:
        RuntimeError: trials still errored after the run (rerun to resume them).
    """
    storage_path = storage.path(rel_path)
    path = f"{storage_path}/{run_name}"
    where = storage.uri(f"{rel_path}/{run_name}")
    if tune.Tuner.can_restore(path, storage_filesystem=storage.fs):
        log.info("%s: resuming Tune run %s", what, where)
        tuner = tune.Tuner.restore(
            path, trainable=trainable, resume_errored=True, storage_filesystem=storage.fs
        )
    else:
        tuner = new_tuner(storage_path)
    grid = tuner.fit()
    if grid.num_errors:
        raise RuntimeError(
            f"{grid.num_errors} {what} trial(s) failed; see the Tune logs under "
            f"{where} and rerun to resume"
        )
    return grid


def run_trials(
    cfg: ExperimentConfig,
    storage: Storage,
    rel_path: str,
    run_name: str,
    settings: list[str],
    evaluate: Callable[[str], dict[str, float]],
) -> list[dict[str, Any]]:
    """Run (or resume) the Tune experiment; one result per setting, in order: {trial_id,
    reported_at (Tune's result timestamp), metrics (as the trial reported them)}.
    `evaluate` (with what it carries, say the scores table) reaches the trials through the
    object store once.

    Raises:
        RuntimeError: trials still errored after the run (their errors are logged by Tune).
    """
    trainable = tune.with_resources(
        tune.with_parameters(_trial, evaluate=evaluate), {"cpu": cfg.sweep.cpus_per_trial}
    )

    def new_tuner(storage_path: str) -> tune.Tuner:
        n = concurrency(cfg, ray.cluster_resources(), len(settings))
        log.info(
            "sweep: %d trials, at most %d at once (%g CPU each)",
            len(settings),
            n,
            cfg.sweep.cpus_per_trial,
        )
        return tune.Tuner(
            trainable,
            param_space={"setting": tune.grid_search(settings)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=n, reuse_actors=True, trial_dirname_creator=_dirname
            ),
            run_config=tune.RunConfig(
                name=run_name,
                storage_path=storage_path,
                storage_filesystem=storage.fs,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
                sync_config=tune.SyncConfig(sync_period=STATE_SYNC_PERIOD_S),
            ),
        )

    grid = _fit_or_resume("sweep", storage, rel_path, run_name, trainable, new_tuner)
    by_setting = {}
    for r in grid:
        by_setting[r.config["setting"]] = {
            "trial_id": r.metrics.get("trial_id"),
            "reported_at": r.metrics.get("timestamp"),
            "metrics": dict(r.metrics),
        }
    missing = [s for s in settings if s not in by_setting]
    if missing:
        raise RuntimeError(
            f"the Tune run under {storage.uri(rel_path)} lacks {len(missing)} "
            f"setting(s), e.g. {missing[0]!r}; delete it and rerun"
        )
    return [by_setting[s] for s in settings]


# ----------------------------------------------------------------------------- training sweeps


def _training_trial(
    config: dict[str, Any],
    trial: TrainingTrial | None = None,
    base: dict[str, Any] | None = None,
    backend_factory: Callable[..., Backend] | None = None,
) -> None:
    """One training-sweep trial (a Tune function trainable, the V2 pattern): its pipeline builds
    the TorchTrainers; the watched fit's reports reach Tune through TuneReportCallback (ASHA
    reads their metric), and one last report carries the objectives. `backend_factory` builds
    the trial pipeline's Ray backend (raydefense.distributed.backend.ray_backend)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    # A trial is a Ray worker: no Ray Data progress bars or plan logs in its log stream (the
    # fits' and scoring's one-line progress still reaches the driver).
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # tune.with_parameters always passes these (the defaults only make them keyword-optional)
    assert trial is not None and base is not None and backend_factory is not None
    cfg = ExperimentConfig.model_validate(base)
    i = config["point"]
    _stage_lines(trial.label(i))
    backend = backend_factory(cfg, None, fit_callbacks={trial.watched: [TuneReportCallback()]})
    out = trial.run(i, backend)
    # The scheduler needs its metric in every result: the watched model's final value,
    # measured on the stored model (also when its fit was complete before this trial attempt).
    tune.report(
        {
            **{k: v for k, v in out.items() if isinstance(v, (int, float))},
            **{k: v for k, v in out.items() if isinstance(v, str)},
            trial.metric: trial.final_value(i),
            "completed": 1,
        }
    )


def _stage_lines(key: str) -> None:
    """The trial pipeline's one-line stage summaries, labelled with the trial, reach the
    driver's output (a worker's loggers default to WARNING)."""
    logger = logging.getLogger("raydefense")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[raydefense] trial {key}: %(message)s"))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


class AshaMemory(tune.Callback):
    """Carries ASHA's rung records across `Tuner.restore`.

    Tune checkpoints its searcher and callbacks with the experiment state but not its scheduler
    (Ray 2.60), so a restored ASHA would judge the remaining trials against no one. This
    callback holds the scheduler (pickled together with it in the Tuner's state, so both
    unpickle as one pair) and saves/restores its rungs {milestone: {trial_id: reward}}.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any]:
        return {
            "rungs": [[(m, dict(rec)) for m, rec in b._rungs] for b in self.scheduler._brackets],
            "num_stopped": self.scheduler._num_stopped,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        for bracket, rungs in zip(self.scheduler._brackets, state["rungs"]):
            bracket._rungs = [(m, dict(rec)) for m, rec in rungs]
        self.scheduler._num_stopped = state["num_stopped"]


def training_concurrency(cfg: ExperimentConfig, cluster: dict[str, Any], num_trials: int) -> int:
    """sweep.max_concurrent_trials, or as many trials as the cluster's CPUs hold when each runs
    resources.concurrent_fits fits at once (at least 1, at most the number of trials)."""
    res = cfg.resources
    per_trial = res.concurrent_fits * res.workers_per_model * res.cpus_per_worker
    n = cfg.sweep.max_concurrent_trials or int(float(cluster.get("CPU", 0)) // per_trial)
    return max(1, min(n, num_trials))


def run_training_trials(
    cfg: ExperimentConfig,
    storage: Storage,
    rel_path: str,
    run_name: str,
    trial: TrainingTrial,
    backend_factory: Callable[..., Backend],
) -> list[dict[str, Any]]:
    """Run (or resume) the training sweep's Tune experiment: one trial per grid point, ASHA on
    the trial's metric (sweep.asha). Returns per point, in order: {status: completed |
    stopped, trial_id, metrics (the last result), history: [{iteration, <metric>}]}.

    Raises:
        RuntimeError: trials errored (rerun to resume them).
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # The trial function only orchestrates; its TorchTrainers and Ray Data pools reserve the
    # real resources, so a trial holds a sliver of a CPU (no deadlock on 2 cores).
    trainable = tune.with_resources(
        tune.with_parameters(
            _training_trial,
            trial=trial,
            base=cfg.model_dump(mode="json"),
            backend_factory=backend_factory,
        ),
        {"cpu": 0.01},
    )

    def new_tuner(storage_path: str) -> tune.Tuner:
        n = training_concurrency(cfg, ray.cluster_resources(), trial.points)
        a = cfg.sweep.asha
        scheduler = (
            ASHAScheduler(
                time_attr="training_iteration",
                max_t=trial.max_t,
                grace_period=a.grace_period,
                reduction_factor=a.reduction_factor,
            )
            if a.enabled
            else FIFOScheduler()
        )
        log.info(
            "training sweep: %d trials, at most %d at once%s",
            trial.points,
            n,
            f", ASHA on {trial.metric} (grace {a.grace_period}, factor {a.reduction_factor})"
            if a.enabled
            else "",
        )
        return tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(list(range(trial.points)))},
            tune_config=tune.TuneConfig(
                metric=trial.metric,
                mode="min",
                scheduler=scheduler,
                max_concurrent_trials=n,
                trial_dirname_creator=_dirname,
            ),
            run_config=tune.RunConfig(
                name=run_name,
                storage_path=storage_path,
                storage_filesystem=storage.fs,
                verbose=0,
                callbacks=[AshaMemory(scheduler)] if a.enabled else [],
                failure_config=tune.FailureConfig(max_failures=1),
                sync_config=tune.SyncConfig(sync_period=STATE_SYNC_PERIOD_S),
            ),
        )

    grid = _fit_or_resume("training sweep", storage, rel_path, run_name, trainable, new_tuner)
    by_point = {}
    for r in grid:
        df = r.metrics_dataframe
        history = []
        if df is not None and trial.metric in df:
            for it, v in zip(df["training_iteration"], df[trial.metric]):
                if v == v:  # not NaN
                    history.append({"iteration": int(it), trial.metric: float(v)})
        done = bool(r.metrics.get("completed"))
        by_point[r.config["point"]] = {
            "status": "completed" if done else "stopped",
            "trial_id": r.metrics.get("trial_id"),
            "metrics": dict(r.metrics) if done else {},
            "history": history,
        }
    missing = [i for i in range(trial.points) if i not in by_point]
    if missing:
        raise RuntimeError(
            f"the Tune run under {storage.uri(rel_path)} lacks trial(s) for grid "
            f"point(s) {missing}; delete it and rerun"
        )
    return [by_point[i] for i in range(trial.points)]


class RayTrialRunner:
    """The trials role on Ray Tune (see raydefense.run.context.TrialRunner)."""

    def __init__(self, backend_factory: Callable[..., Backend]) -> None:
        self.backend_factory = backend_factory  # what a training trial's pipeline runs on

    def attack_trials(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        rel_path: str,
        run_name: str,
        settings: list[str],
        evaluate: Callable[[str], dict[str, float]],
    ) -> list[dict[str, Any]]:
        return run_trials(cfg, storage, rel_path, run_name, settings, evaluate)

    def training_trials(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        rel_path: str,
        run_name: str,
        trial: TrainingTrial,
    ) -> list[dict[str, Any]]:
        return run_training_trials(cfg, storage, rel_path, run_name, trial, self.backend_factory)
