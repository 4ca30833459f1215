"""Connect to a Ray cluster (under `ray job submit` / RAY_ADDRESS) or start a local one."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from raydefense.config import ExperimentConfig, ResourcesConfig
from raydefense.console import verbose
from raydefense.errors import ConfigError, ResourceError

log = logging.getLogger(__name__)


def cluster_task(fn: Any, num_cpus: float = 1, num_gpus: float = 0) -> Any:
    """`fn` as a Ray task scheduled on the cluster ("DEFAULT"), never in a placement group its
    caller runs in: a training-sweep trial holds a 0.01-CPU bundle that captures child tasks,
    and a one-CPU task never fits it."""
    return ray.remote(fn).options(
        num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy="DEFAULT"
    )


def init_ray(res: ResourcesConfig) -> dict[str, Any]:
    """Initialise Ray once per process and return the cluster's resources.

    A local cluster declares `local_num_cpus` logical CPUs (default 2 x cores): concurrent fits
    each hold a CPU, and Ray Data needs free CPUs beside them or ingestion deadlocks.
    """
    if not ray.is_initialized():
        # Quiet (the default): worker logs stay in Ray's session log, and Ray's own driver-side
        # messages below ERROR are not shown; progress reaches the console through
        # raydefense.distributed.progress. --verbose: everything, as Ray prints it.
        loud = verbose()
        quiet_data_logs(loud)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=loud, logging_level=logging.INFO if loud else logging.ERROR)
        else:
            num_cpus = res.local_num_cpus or 2 * (os.cpu_count() or 1)
            # The dashboard serves the State API that Ray Train's placement-group cleaner polls.
            ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                object_store_memory=512 * 1024**2,
                log_to_driver=loud,
                logging_level=logging.WARNING if loud else logging.ERROR,
            )
    return dict(ray.cluster_resources())


def quiet_data_logs(loud: bool) -> None:
    """Ray Data's progress bars (in a log, a dump every 10 s) and per-dataset INFO lines only
    with --verbose."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = loud
    ctx.print_on_execution_start = loud
    if not loud:
        logging.getLogger("ray.data").setLevel(logging.WARNING)


def alive_nodes() -> int:
    return len([n for n in ray.nodes() if n.get("Alive")])


def check_shared_storage(cfg: ExperimentConfig, nodes: int) -> None:
    """Nodes share no filesystem: on a multi-node cluster every output goes to S3 and tracking
    to an MLflow server, or a fit on another node writes where the driver never reads.

    Raises:
        ConfigError: a local storage root or tracking store on more than one node.
    """
    if nodes <= 1:
        if os.environ.get("RAY_ADDRESS") and not cfg.storage.root.startswith("s3://"):
            log.warning(
                "storage.root %s is a local path: fine while this cluster has one node; "
                "set storage.root=s3://... before it scales out",
                cfg.storage.root,
            )
        return
    if not cfg.storage.root.startswith("s3://"):
        raise ConfigError(
            f"storage.root {cfg.storage.root!r} is a local path on a {nodes}-node cluster, whose "
            "nodes share no filesystem; set storage.root=s3://BUCKET/PREFIX"
        )
    uri = cfg.tracking.uri
    if cfg.tracking.enabled and not uri.startswith(("http://", "https://", "databricks")):
        raise ConfigError(
            f"tracking.uri {uri!r} is a local store on a {nodes}-node cluster; start an "
            "`mlflow server` every node can reach and set tracking.uri=http://HOST:5000 (or "
            "tracking.enabled=false)"
        )


def check_fit_resources(res: ResourcesConfig, cluster: dict[str, Any]) -> None:
    """Refuse a fit that can never be placed (instead of waiting forever for a placement group)."""
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    need_cpu = res.workers_per_model * res.cpus_per_worker
    need_gpu = res.workers_per_model * res.gpus_per_worker
    if need_cpu > cpus:
        raise ResourceError(
            f"one model needs {need_cpu:g} CPUs (resources.workers_per_model="
            f"{res.workers_per_model} x cpus_per_worker={res.cpus_per_worker:g}) but the cluster "
            f"has {cpus:g}; lower them or add nodes"
        )
    if need_gpu > gpus:
        raise ResourceError(
            f"one model needs {need_gpu:g} GPUs (resources.workers_per_model="
            f"{res.workers_per_model} x gpus_per_worker={res.gpus_per_worker:g}) but the cluster "
            f"has {gpus:g}; set resources.gpus_per_worker=0 or add GPU nodes"
        )
