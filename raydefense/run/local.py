"""The in-process executor: roles that run their work in this process, one after another, with
no Ray. The same protocols as the Ray adapter (`raydefense.distributed`) and the same domain
code (`raydefense.run.fitting`), so a run through it trains the same models; tests and a
single-machine debugging session use it.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any, Optional

import torch

from raydefense import layout
from raydefense.config import ExperimentConfig
from raydefense.errors import FitsFailed, NonFiniteLossError
from raydefense.run.context import FitSpec
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
