"""Attack sweeps on Ray Tune: one trial per (attack, setting) over scores already computed.

The scores table reaches trials through the object store once (`tune.with_parameters`). Each
trial computes its per-target ROC metrics (`raydefense.sweep.trial_metrics`) and reports them in
one `tune.report`. Run storage is `<root>/<experiment>/sweeps/<name>/tune/<run name>`, with a
deterministic run name, so an interrupted sweep resumes through `Tuner.restore` (finished trials
are not rerun; errored ones are retried).
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import ray
from ray import tune

from raydefense.config import ExperimentConfig
from raydefense.errors import ResourceError
from raydefense.storage import Storage

log = logging.getLogger("raydefense")


def _trial(config: dict, scores: pa.Table = None) -> None:
    from raydefense.sweep import flatten_metrics, trial_metrics

    attack, params = config["setting"].split(" ", 1)
    tune.report(flatten_metrics(trial_metrics(scores, attack, params)))


def _dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def concurrency(cfg: ExperimentConfig, cluster: dict, num_trials: int) -> int:
    """sweep.max_concurrent_trials, or as many trials as the cluster's CPUs hold at
    sweep.cpus_per_trial each (at least 1, at most the number of trials).

    Raises:
        ResourceError: one trial asks for more CPUs than the cluster has.
    """
    cpus, per = float(cluster.get("CPU", 0)), cfg.sweep.cpus_per_trial
    if per > cpus:
        raise ResourceError(f"sweep.cpus_per_trial={per:g} exceeds the cluster's {cpus:g} CPUs; "
                            "lower it")
    n = cfg.sweep.max_concurrent_trials or int(cpus // per)
    return max(1, min(n, num_trials))


def run_trials(cfg: ExperimentConfig, storage: Storage, rel_path: str, run_name: str,
               trials: list[dict[str, str]], scores: pa.Table) -> list[dict[str, Any]]:
    """Run (or resume) the Tune experiment; one result per trial, in `trials` order:
    {attack, params, trial_id, reported_at (Tune's result timestamp), metrics: {target: {...}}}.

    Raises:
        RuntimeError: trials still errored after the run (their errors are logged by Tune).
    """
    from raydefense.sweep import unflatten_metrics

    settings = [f"{t['attack']} {t['params']}" for t in trials]
    trainable = tune.with_resources(tune.with_parameters(_trial, scores=scores),
                                    {"cpu": cfg.sweep.cpus_per_trial})
    storage_path = storage.path(rel_path)
    path = f"{storage_path}/{run_name}"
    if tune.Tuner.can_restore(path, storage_filesystem=storage.fs):
        log.info("sweep: resuming Tune run %s", storage.uri(f"{rel_path}/{run_name}"))
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True,
                                   storage_filesystem=storage.fs)
    else:
        n = concurrency(cfg, ray.cluster_resources(), len(trials))
        log.info("sweep: %d trials, at most %d at once (%g CPU each)", len(trials), n,
                 cfg.sweep.cpus_per_trial)
        tuner = tune.Tuner(
            trainable,
            param_space={"setting": tune.grid_search(settings)},
            tune_config=tune.TuneConfig(max_concurrent_trials=n, reuse_actors=True,
                                        trial_dirname_creator=_dirname),
            run_config=tune.RunConfig(name=run_name, storage_path=storage_path,
                                      storage_filesystem=storage.fs, verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    grid = tuner.fit()
    if grid.num_errors:
        raise RuntimeError(f"{grid.num_errors} sweep trial(s) failed; see the Tune logs under "
                           f"{storage.uri(f'{rel_path}/{run_name}')} and rerun to resume")
    by_setting = {}
    for r in grid:
        by_setting[r.config["setting"]] = {"trial_id": r.metrics.get("trial_id"),
                                           "reported_at": r.metrics.get("timestamp"),
                                           "metrics": unflatten_metrics(r.metrics)}
    missing = [s for s in settings if s not in by_setting]
    if missing:
        raise RuntimeError(f"the Tune run under {storage.uri(rel_path)} lacks {len(missing)} "
                           f"setting(s), e.g. {missing[0]!r}; delete it and rerun")
    return [{**t, **by_setting[s]} for t, s in zip(trials, settings)]
