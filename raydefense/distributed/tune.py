"""Sweeps on Ray Tune (the trials role). Attack-grid sweeps: one trial per (attack, setting) over
scores already computed; training sweeps: one trial per training grid point, each running a
pipeline of its own (ASHA on the watched fit's val_eps_mse).

The scores table reaches trials through the object store once (`tune.with_parameters`). Each
trial computes its per-target ROC metrics (`raydefense.sweeps.attacks.trial_metrics`) and
reports them in one `tune.report`. Run storage is
`<root>/<experiment>/sweeps/<name>/tune/<run name>`, with a deterministic run name, so an
interrupted sweep resumes through `Tuner.restore` (finished trials are not rerun; errored ones
are retried).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import ray
import ray.data
from ray import tune

from raydefense.config import TRAIN_ROLES, ExperimentConfig
from raydefense.errors import ResourceError
from raydefense.run.context import Backend
from raydefense.storage import Storage
from raydefense.sweeps.attacks import flatten_metrics, trial_metrics, unflatten_metrics
from raydefense.sweeps.training_sweep import apply_values, run_trial, watched_model, watched_value

log = logging.getLogger("raydefense")

# Tune saves its experiment state (trial statuses, ASHA's rungs, each trial's results) to the
# driver's staging dir every ~10 s but uploads it to storage at most every sync_period, 300 s by
# default: a run killed within 5 minutes of a trial finishing would rerun that trial on resume
# and lose its result history. The state is a few small files, so upload it every few seconds.
STATE_SYNC_PERIOD_S = 5


def _trial(config: dict[str, Any], scores: pa.Table = None) -> None:
    attack, params = config["setting"].split(" ", 1)
    tune.report(flatten_metrics(trial_metrics(scores, attack, params)))


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
    trials: list[dict[str, str]],
    scores: pa.Table,
) -> list[dict[str, Any]]:
    """Run (or resume) the Tune experiment; one result per trial, in `trials` order:
    {attack, params, trial_id, reported_at (Tune's result timestamp), metrics: {target: {...}}}.

    Raises:
        RuntimeError: trials still errored after the run (their errors are logged by Tune).
    """
    settings = [f"{t['attack']} {t['params']}" for t in trials]
    trainable = tune.with_resources(
        tune.with_parameters(_trial, scores=scores), {"cpu": cfg.sweep.cpus_per_trial}
    )

    def new_tuner(storage_path: str) -> tune.Tuner:
        n = concurrency(cfg, ray.cluster_resources(), len(trials))
        log.info(
            "sweep: %d trials, at most %d at once (%g CPU each)",
            len(trials),
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
            "metrics": unflatten_metrics(r.metrics),
        }
    missing = [s for s in settings if s not in by_setting]
    if missing:
        raise RuntimeError(
            f"the Tune run under {storage.uri(rel_path)} lacks {len(missing)} "
            f"setting(s), e.g. {missing[0]!r}; delete it and rerun"
        )
    return [{**t, **by_setting[s]} for t, s in zip(trials, settings)]


# ----------------------------------------------------------------------------- training sweeps


def _training_trial(
    config: dict[str, Any],
    base: dict[str, Any] | None = None,
    points: list[Any] | None = None,
    trials_root: str | None = None,
    backend_factory: Callable[..., Backend] | None = None,
) -> None:
    """One training-sweep trial (a Tune function trainable, the V2 pattern): its pipeline builds
    the TorchTrainers; the watched fit's reports reach Tune through TuneReportCallback (ASHA
    reads their val_eps_mse), and one last report carries the objectives. `backend_factory`
    builds the trial pipeline's Ray backend (raydefense.distributed.backend.ray_backend)."""
    from ray.tune.integration.ray_train import TuneReportCallback

    # A trial is a Ray worker: no Ray Data progress bars or plan logs in its log stream (the
    # fits' and scoring's one-line progress still reaches the driver).
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # tune.with_parameters always passes these (the defaults only make them keyword-optional)
    assert points is not None and trials_root is not None and backend_factory is not None
    cfg = ExperimentConfig.model_validate(base)
    point = points[config["point"]]
    _stage_lines(point.key)
    watched = {watched_model(cfg.sweep.target): [TuneReportCallback()]}
    backend = backend_factory(cfg, None, fit_callbacks=watched)
    out = run_trial(cfg, point, trials_root, backend)
    # ASHA needs its metric in every result: the watched model's final value, measured on the
    # stored model (also when its fit was complete before this trial attempt).
    final = watched_value(cfg, point, trials_root)
    tune.report(
        {
            **{k: v for k, v in out.items() if isinstance(v, (int, float))},
            **{k: v for k, v in out.items() if isinstance(v, str)},
            "val_eps_mse": final,
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
    points: list[Any],
    trials_root: str,
    backend_factory: Callable[..., Backend],
) -> list[dict[str, Any]]:
    """Run (or resume) the training sweep's Tune experiment: one trial per grid point, ASHA on
    val_eps_mse (sweep.asha). Returns per point, in order: {status: completed | stopped,
    trial_id, metrics (the last result), history: [{iteration, val_eps_mse}]}.

    Raises:
        RuntimeError: trials errored (rerun to resume them).
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # The trial function only orchestrates; its TorchTrainers and Ray Data pools reserve the
    # real resources, so a trial holds a sliver of a CPU (no deadlock on 2 cores).
    trainable = tune.with_resources(
        tune.with_parameters(
            _training_trial,
            base=cfg.model_dump(mode="json"),
            points=points,
            trials_root=trials_root,
            backend_factory=backend_factory,
        ),
        {"cpu": 0.01},
    )

    def new_tuner(storage_path: str) -> tune.Tuner:
        n = training_concurrency(cfg, ray.cluster_resources(), len(points))
        a = cfg.sweep.asha
        # Reports of the longest fit (+ the trial's objectives): ASHA's last rung.
        max_t = (
            max(
                apply_values(cfg, dict(p.values)).train.for_role(r).steps
                for p in points
                for r in TRAIN_ROLES
            )
            + 2
        )
        scheduler = (
            ASHAScheduler(
                time_attr="training_iteration",
                max_t=max_t,
                grace_period=a.grace_period,
                reduction_factor=a.reduction_factor,
            )
            if a.enabled
            else FIFOScheduler()
        )
        log.info(
            "training sweep: %d trials, at most %d at once%s",
            len(points),
            n,
            f", ASHA on val_eps_mse (grace {a.grace_period}, factor {a.reduction_factor})"
            if a.enabled
            else "",
        )
        return tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(list(range(len(points))))},
            tune_config=tune.TuneConfig(
                metric="val_eps_mse",
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
        if df is not None and "val_eps_mse" in df:
            for it, v in zip(df["training_iteration"], df["val_eps_mse"]):
                if v == v:  # not NaN
                    history.append({"iteration": int(it), "val_eps_mse": float(v)})
        done = bool(r.metrics.get("completed"))
        by_point[r.config["point"]] = {
            "status": "completed" if done else "stopped",
            "trial_id": r.metrics.get("trial_id"),
            "metrics": dict(r.metrics) if done else {},
            "history": history,
        }
    missing = [i for i in range(len(points)) if i not in by_point]
    if missing:
        raise RuntimeError(
            f"the Tune run under {storage.uri(rel_path)} lacks trial(s) for grid "
            f"point(s) {missing}; delete it and rerun"
        )
    return [by_point[i] for i in range(len(points))]


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
        trials: list[dict[str, Any]],
        scores: pa.Table,
    ) -> list[dict[str, Any]]:
        return run_trials(cfg, storage, rel_path, run_name, trials, scores)

    def training_trials(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        rel_path: str,
        run_name: str,
        points: list[Any],
        trials_root: str,
    ) -> list[dict[str, Any]]:
        return run_training_trials(
            cfg, storage, rel_path, run_name, points, trials_root, self.backend_factory
        )
