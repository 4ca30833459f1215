"""Evaluation fan-out: one Ray task per target (model loading, attack scoring, sampling)."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import ray
import torch

from raydefense.config import ExperimentConfig
from raydefense.data.tables import read_plan
from raydefense.evaluation import evaluate_target
from raydefense.storage import Storage


@ray.remote
def _evaluate(cfg_dict: dict, target: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    cfg = ExperimentConfig.model_validate(cfg_dict)
    storage = Storage(cfg.storage.root, cfg.experiment)
    cache = tempfile.mkdtemp(prefix="raydefense-eval-")
    try:
        return evaluate_target(cfg, storage, read_plan(storage), target, cache)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def evaluate_targets(cfg: ExperimentConfig, targets: list[str]) -> dict[str, dict[str, Any]]:
    """Evaluate all targets concurrently; target -> evaluate_target's dict."""
    res = cfg.resources
    threads = max(1, int(res.cpus_per_worker))
    refs = {t: _evaluate.options(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker)
            .remote(cfg.model_dump(mode="json"), t, threads) for t in targets}
    return {t: ray.get(r) for t, r in refs.items()}
