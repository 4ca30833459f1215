"""The in-process executor: roles that run their work in this process, one after another, with
no Ray. The same protocols as the Ray adapter (`raydefense.distributed`) and the same domain
code (`raydefense.run.fitting`, `run.labelling`, `audit.scoring`); tests and a
single-machine debugging session use it.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Optional

import torch

from raydefense import layout
from raydefense.config import ExperimentConfig
from raydefense.errors import FitsFailed, NonFiniteLossError
from raydefense.placement import InProcessPool
from raydefense.run.context import Backend, FitSpec, TrainingTrial
from raydefense.run.fitting import load_fit, run_fit
from raydefense.storage import Storage
from raydefense.tracking.tracker import Tracker

LATEST = "latest.json"


class LocalReporter:
    """A single-process fit's reports: metrics to the tracker (when given a run), and every
    checkpoint under `ray_train/<run name>/local/step-<n>` with a pointer to the newest, written
    after it is complete, so a killed fit resumes from its last whole checkpoint (and `--force`,
    which deletes `ray_train/<run name>`, starts it over, as for a Ray Train fit)."""

    world_rank, world_size = 0, 1

    def __init__(
        self,
        storage: Storage,
        run_name: str,
        tracker: Optional[Tracker] = None,
        run_id: Optional[str] = None,
    ) -> None:
        self.storage, self.tracker, self.run_id = storage, tracker, run_id
        self.root = f"{layout.ray_train_run(run_name)}/local"
        self._cache = tempfile.mkdtemp(prefix="raydefense-local-fit-")

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None:
        if self.tracker is not None and self.run_id is not None:
            values = {k: float(v) for k, v in metrics.items() if k != "step"}
            self.tracker.log_metrics(self.run_id, values, step=int(metrics["step"]))
        if checkpoint_dir is None:
            return
        previous = self.latest()
        rel = f"{self.root}/step-{int(metrics['step'])}"
        self.storage.upload_dir(checkpoint_dir, rel)
        self.storage.write_json(f"{self.root}/{LATEST}", {"dir": rel})
        if previous is not None and previous != rel:
            self.storage.delete(previous)

    def latest(self) -> Optional[str]:
        """The storage-relative directory of the newest complete checkpoint, or None."""
        pointer = f"{self.root}/{LATEST}"
        if not self.storage.exists(pointer):
            return None
        rel: str = self.storage.read_json(pointer)["dir"]
        return rel

    def latest_checkpoint(self) -> Optional[str]:
        """A local directory holding the newest checkpoint (None: a fresh start)."""
        rel = self.latest()
        return None if rel is None else self.storage.local_dir(rel, self._cache)

    def close(self) -> None:
        """Remove the local copies of checkpoints (remote storage only; the storage keeps them)."""
        shutil.rmtree(self._cache, ignore_errors=True)


class LocalFitter:
    """The Fitter role in this process: the specs one after another on this machine's device
    (CUDA when present), each resumed from its last checkpoint, its final checkpoint copied to
    models/<model>. Every fit runs to its end, so one failure keeps the others' models."""

    def __init__(self, tracker: Optional[Tracker] = None) -> None:
        self.tracker = tracker

    def check_resources(self, cfg: ExperimentConfig) -> None:
        """Nothing to place: one fit at a time on this machine."""

    def fit(self, cfg: ExperimentConfig, storage: Storage, specs: list[FitSpec]) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        done: list[str] = []
        failed: dict[str, BaseException] = {}
        for spec in specs:
            reporter = LocalReporter(storage, spec.run_name, self.tracker, spec.mlflow_run_id)
            try:
                run_fit(load_fit(cfg, storage, spec), reporter, device=device)
                final = reporter.latest_checkpoint()
                if final is None:
                    raise RuntimeError(f"training {spec.model} left no checkpoint")
                storage.upload_dir(final, layout.model_dir(spec.model))
                done.append(spec.model)
            except NonFiniteLossError as e:
                failed[spec.model] = NonFiniteLossError(e.step, e.value, spec.model)
            except Exception as e:
                failed[spec.model] = e
            finally:
                reporter.close()
        if failed:
            raise FitsFailed(failed, done)


class LocalTrialRunner:
    """The TrialRunner in this process: trials one after another, each to its end (early
    stopping needs a scheduler that runs trials side by side: none here), each trial's result
    stored under rel_path/run_name/trial_<i>.json once it is done, so an interrupted sweep
    resumes with its finished trials' results. A training trial's pipeline runs on
    `local_backend` (this runner included)."""

    def __init__(self, tracker: Optional[Tracker] = None) -> None:
        self.tracker = tracker

    def _run(
        self, storage: Storage, rel: str, key: str, compute: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """compute()'s result for trial `key`, or the one stored at rel for the same key."""
        if storage.exists(rel):
            stored = storage.read_json(rel)
            if stored.get("key") == key:
                kept: dict[str, Any] = stored["result"]
                return kept
        result = compute()
        storage.write_json(rel, {"key": key, "result": result})
        return result

    def attack_trials(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        rel_path: str,
        run_name: str,
        settings: list[str],
        evaluate: Callable[[str], dict[str, float]],
    ) -> list[dict[str, Any]]:
        def trial(i: int, setting: str) -> dict[str, Any]:
            metrics = evaluate(setting)
            return {"trial_id": f"local_{i:05d}", "reported_at": time.time(), "metrics": metrics}

        return [
            self._run(storage, f"{rel_path}/{run_name}/trial_{i:05d}.json", s, partial(trial, i, s))
            for i, s in enumerate(settings)
        ]

    def training_trials(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        rel_path: str,
        run_name: str,
        trial: TrainingTrial,
    ) -> list[dict[str, Any]]:
        def run(i: int) -> dict[str, Any]:
            out = trial.run(i, local_backend(self.tracker))
            value = trial.final_value(i)
            metrics = {k: v for k, v in out.items() if isinstance(v, (int, float, str))}
            metrics.update({trial.metric: value, "completed": 1})
            return {
                "status": "completed",
                "trial_id": f"local_{i:05d}",
                "metrics": metrics,
                "history": [{"iteration": trial.max_t, trial.metric: value}],
            }

        return [
            self._run(
                storage,
                f"{rel_path}/{run_name}/trial_{i:05d}.json",
                trial.label(i),
                partial(run, i),
            )
            for i in range(trial.points)
        ]


def local_backend(tracker: Optional[Tracker] = None) -> Backend:
    """Every role in this process: fits one after another (`LocalFitter`), scoring and labelling
    on `InProcessPool`, sweep trials one after another (`LocalTrialRunner`)."""
    return Backend(
        fitter=LocalFitter(tracker), pool=InProcessPool(), trials=LocalTrialRunner(tracker)
    )
