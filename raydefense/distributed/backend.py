"""The Ray backend of a run: one object per role of `raydefense.run.context.Backend`, on one
Ray cluster (joined under `ray job submit` / RAY_ADDRESS, else a local one).

- fitter: Ray Train, one TorchTrainer per model (`raydefense.distributed.train`);
- pool: Ray Data actor pools for row blocks and Parquet streams, Ray tasks for functions
  (`raydefense.distributed.ray_pool`), on which the scorer (`audit.scoring.PoolScorer`) scores,
  generates and fits learned attacks and the labeller (`run.labelling.PoolLabeller`) draws
  synthetic rows and writes soft targets;
- trials: Ray Tune for attack-grid and training sweeps (`raydefense.distributed.tune`).
"""

from __future__ import annotations

import atexit
from typing import Any, Optional

from raydefense.config import ExperimentConfig
from raydefense.console import session
from raydefense.distributed.progress import start_board
from raydefense.distributed.ray_pool import RayWorkerPool
from raydefense.distributed.runtime import alive_nodes, check_shared_storage, init_ray
from raydefense.distributed.train import RayFitter
from raydefense.distributed.tune import RayTrialRunner
from raydefense.run.context import Backend

_progress: dict[str, Any] = {}


def ray_backend(
    cfg: ExperimentConfig,
    tracking_uri: Optional[str],
    fit_callbacks: Optional[dict[str, list[Any]]] = None,
) -> Backend:
    """Start (or join) Ray and return its roles (fitter, pool, trials).
    `fit_callbacks`: extra Ray Train callbacks per model name (a training sweep's
    TuneReportCallback on the watched fit)."""
    cluster = init_ray(cfg.resources)
    check_shared_storage(cfg, alive_nodes())
    # One progress display per CLI process with the quiet console (not for in-process callers,
    # whose output is theirs, nor with --verbose, where Ray's own lines show progress).
    console = session()
    if console is not None and console.log_path and "stop" not in _progress:
        _progress["stop"] = start_board()
        atexit.register(_progress["stop"])
    return Backend(
        fitter=RayFitter(cluster, tracking_uri, fit_callbacks),
        pool=RayWorkerPool(),
        trials=RayTrialRunner(backend_factory=ray_backend),
    )
