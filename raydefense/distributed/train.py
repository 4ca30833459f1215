"""Ray Train wiring: one TorchTrainer per model, fits running concurrently from driver threads.

Run names are deterministic (`<model>-<fingerprint>`) under `<root>/<experiment>/ray_train`, so a
rerun with the same config resumes from the last reported checkpoint (Ray Train V2 semantics).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, cast

import ray
import ray.train
import ray.train.torch
import torch

from raydefense.config import ExperimentConfig
from raydefense.distributed.progress import report
from raydefense.distributed.runtime import check_fit_resources
from raydefense.errors import FitsFailed, NonFiniteLossError
from raydefense.placement import torch_threads
from raydefense.roster import training_role
from raydefense.run.context import FitSpec
from raydefense.run.fitting import load_fit, run_fit
from raydefense.storage import Storage
from raydefense.tracking.tracker import Tracker

log = logging.getLogger(__name__)

# What a fit returns when its loss became nan/inf (it then ends without a final checkpoint).
NONFINITE_STEP, NONFINITE_VALUE = "nonfinite_loss_step", "nonfinite_loss"


class RayReporter:
    """Reporter for the core loop: ray.train.report + rank-0 MLflow metrics."""

    def __init__(self, tracking_uri: Optional[str], experiment: str, run_id: Optional[str]) -> None:
        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self._tracker: Optional[Tracker] = None
        if run_id and tracking_uri and self.world_rank == 0:
            from raydefense.tracking.mlflow_tracker import MlflowTracker

            self._tracker = MlflowTracker(tracking_uri, experiment)
        self._run_id = run_id
        self._restored: Optional[str] = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str]) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)
        if self._tracker is not None:
            self._tracker.log_metrics(
                self._run_id,
                {k: v for k, v in metrics.items() if k != "step"},
                step=metrics["step"],
            )

    def record_placement(self) -> list[str]:
        """Every rank's Ray node id, gathered over the process group; rank 0 tags the fit's
        MLflow run with them (`raydefense.worker_nodes`, in rank order). Tagged at every
        attempt, so a fit resumed on other nodes after a node loss shows where it ended."""
        node = ray.get_runtime_context().get_node_id()
        nodes: list[Any] = [node]
        if self.world_size > 1 and torch.distributed.is_initialized():
            nodes = [None] * self.world_size
            torch.distributed.all_gather_object(nodes, node)
        if self._tracker is not None:
            self._tracker.set_tags(self._run_id, {"raydefense.worker_nodes": ",".join(nodes)})
        return [str(n) for n in nodes]

    def latest_checkpoint(self) -> Optional[str]:
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        self._restored = ckpt.to_directory(tempfile.mkdtemp(prefix="raydefense-restore-"))
        return self._restored


class ProgressCallback(ray.train.UserCallback):
    """Per report: the fit's progress to the driver's console (the progress board), and one
    line printed by the fit's controller (its log; the console too with --verbose)."""

    def __init__(self, model: str, total_steps: int) -> None:
        self.model, self.total = model, total_steps

    def after_report(
        self,
        run_context: Any,
        metrics: list[dict[str, Any]],
        checkpoint: Optional[ray.train.Checkpoint],
    ) -> None:
        m = metrics[0] if metrics else {}
        if "loss" not in m:
            return
        step, rate = m["step"], m.get("samples_per_s", 0.0)
        steps_per_s = step / max(m.get("elapsed_s", 0.0), 1e-9)
        eta = (self.total - step) / max(steps_per_s, 1e-9)
        note = f"loss {m['loss']:.4f}" + (
            f", val_eps_mse {m['val_eps_mse']:.4f}" if "val_eps_mse" in m else ""
        )
        report(f"train {self.model}", step, self.total, note)
        print(
            f"[raydefense] train {self.model}: step {step}/{self.total} "
            f"({100 * step / self.total:.0f}%) loss {m['loss']:.4f}"
            + (f", val_eps_mse {m['val_eps_mse']:.4f}" if "val_eps_mse" in m else "")
            + f", {rate:.0f} samples/s, "
            f"ETA {eta / 60:.1f} min" + (", checkpoint saved" if checkpoint else ""),
            flush=True,
        )


def _quiet_ray_train_logs() -> None:
    """Ray Train logs every report and checkpoint at INFO (one logger is named by file path);
    the driver's progress lines are what a user reads."""
    for name in list(logging.root.manager.loggerDict):
        if "ray.train" in name or "ray/train" in name:
            logging.getLogger(name).setLevel(logging.WARNING)


def _train_loop(config: dict[str, Any]) -> Optional[dict[str, Any]]:
    """Runs on every Ray Train worker."""
    cfg = ExperimentConfig.model_validate(config["cfg"])
    spec = FitSpec(**config["spec"])
    torch.set_num_threads(torch_threads(cfg.resources, config["running_workers"]))
    _quiet_ray_train_logs()
    work = load_fit(cfg, Storage(cfg.storage.root, cfg.experiment), spec)
    reporter = RayReporter(config.get("tracking_uri"), cfg.experiment, spec.mlflow_run_id)
    world = reporter.world_size
    nodes = reporter.record_placement()
    if reporter.world_rank == 0 and len(set(nodes)) > 1:
        print(f"[raydefense] train {spec.model}: {world} workers on {len(set(nodes))} nodes")
    try:
        run_fit(
            work,
            reporter,
            device=ray.train.torch.get_device(),
            wrap_model=(lambda m: ray.train.torch.prepare_model(m)) if world > 1 else (lambda m: m),
        )
    except NonFiniteLossError as e:
        # Every rank stops at the same report (check_finite agrees on the step). Returned, not
        # raised: Ray Train would retry a raised error from the last checkpoint, and the same
        # batches would give the same loss. Rank 0's return value reaches the driver.
        return {NONFINITE_STEP: e.step, NONFINITE_VALUE: e.value}
    if reporter._restored:
        shutil.rmtree(reporter._restored, ignore_errors=True)
    return None


def fit_one(
    cfg: ExperimentConfig,
    storage: Storage,
    spec: FitSpec,
    tracking_uri: Optional[str],
    running_fits: int = 1,
    callbacks: Sequence[ray.train.UserCallback] = (),
) -> str:
    """Run (or resume) one TorchTrainer and copy its final checkpoint to models/<model>.
    `callbacks` join the progress callback (a training sweep's TuneReportCallback).

    Returns the storage-relative model directory.
    """
    res = cfg.resources
    # list[Any]: at runtime ray.train.RunConfig is Train V2's (UserCallback); mypy resolves the
    # name to ray.air's RunConfig, whose callbacks are Tune callbacks.
    steps = cfg.train.for_role(training_role(spec.model)).steps
    fit_callbacks: list[Any] = [ProgressCallback(spec.model, steps), *callbacks]
    trainer = ray.train.torch.TorchTrainer(
        cast(Any, _train_loop),  # V2 keeps the loop's return value; the V1 stubs want None
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "spec": spec.__dict__,
            "tracking_uri": tracking_uri,
            "running_workers": running_fits * res.workers_per_model,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers_per_model,
            use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={
                "CPU": res.cpus_per_worker,
                **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            name=spec.run_name,
            storage_path=storage.path("ray_train"),
            storage_filesystem=storage.fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=2),
            callbacks=fit_callbacks,
        ),
    )
    result = trainer.fit()
    # Train V2's Result (mypy resolves ray.train to the V1 types, which have no return_value)
    stopped = getattr(result, "return_value", None) or {}
    if NONFINITE_STEP in stopped:
        raise NonFiniteLossError(int(stopped[NONFINITE_STEP]), stopped[NONFINITE_VALUE], spec.model)
    if result.checkpoint is None:
        raise RuntimeError(f"training {spec.model} reported no checkpoint")
    rel = f"models/{spec.model}"
    with result.checkpoint.as_directory() as local:
        storage.upload_dir(local, rel)
    log.info("trained %s -> %s", spec.model, storage.uri(rel))
    return rel


def fit_many(
    cfg: ExperimentConfig,
    storage: Storage,
    specs: list[FitSpec],
    tracking_uri: Optional[str],
    callbacks: Optional[dict[str, list[Any]]] = None,
) -> dict[str, str]:
    """Fit models concurrently (at most resources.concurrent_fits at once); model -> model dir.
    `callbacks`: extra Ray Train callbacks per model name.

    Each fit gets its own placement group; fits that do not fit the cluster wait for resources.
    """
    running = max(1, min(cfg.resources.concurrent_fits, len(specs)))
    with ThreadPoolExecutor(max_workers=running, thread_name_prefix="fit") as pool:
        futures = {
            s.model: pool.submit(
                fit_one, cfg, storage, s, tracking_uri, running, (callbacks or {}).get(s.model, ())
            )
            for s in specs
        }
        # Every fit runs to its end, so one failure does not lose the others' models.
        done: dict[str, str] = {}
        failed: dict[str, BaseException] = {}
        for m, f in futures.items():
            try:
                done[m] = f.result()
            except Exception as e:
                failed[m] = e
    if failed:
        raise FitsFailed(failed, list(done))
    return done


class RayFitter:
    """The fitter role on Ray Train (see raydefense.run.context.Fitter)."""

    def __init__(
        self,
        cluster: dict[str, Any],
        tracking_uri: Optional[str],
        fit_callbacks: Optional[dict[str, list[Any]]] = None,
    ) -> None:
        self.cluster, self.tracking_uri = cluster, tracking_uri
        self.fit_callbacks = fit_callbacks or {}  # model -> extra Ray Train callbacks

    def check_resources(self, cfg: ExperimentConfig) -> None:
        check_fit_resources(cfg.resources, self.cluster)

    def fit(self, cfg: ExperimentConfig, storage: Storage, specs: list[FitSpec]) -> None:
        fit_many(cfg, storage, specs, self.tracking_uri, self.fit_callbacks)
