"""The Ray executor of the pipeline's heavy work."""

from __future__ import annotations

from typing import Optional

from raydefense.config import ExperimentConfig
from raydefense.data.tables import PLAN_JSON
from raydefense.distributed.runtime import check_fit_resources, init_ray
from raydefense.distributed.scoring import RayEvalExecutor
from raydefense.distributed.soft_targets import label_soft_targets
from raydefense.distributed.train import FitSpec, fit_many
from raydefense.storage import Storage


class RayExecutor:
    """Ray Train for fits, Ray Data actor pools for soft targets and attack scoring, Ray tasks
    for per-target evaluation work, Ray Tune for attack sweeps."""

    def __init__(self, cfg: ExperimentConfig, tracking_uri: Optional[str],
                 fit_callbacks: Optional[dict[str, list]] = None) -> None:
        self.cluster = init_ray(cfg.resources)
        self.tracking_uri = tracking_uri
        self.fit_callbacks = fit_callbacks or {}  # model -> extra Ray Train callbacks

    def check_resources(self, cfg: ExperimentConfig) -> None:
        check_fit_resources(cfg.resources, self.cluster)

    def fit(self, cfg: ExperimentConfig, storage: Storage, specs: list[dict]) -> None:
        fit_many(cfg, storage, [FitSpec(**s) for s in specs], self.tracking_uri,
                 self.fit_callbacks)

    def label_soft_targets(self, cfg: ExperimentConfig, storage: Storage, teachers: list[str],
                           owners: dict[int, list[str]], draws: int, out_dir: str,
                           groups: dict[int, int]) -> int:
        shape = storage.read_json(PLAN_JSON)["image_shape"]
        return label_soft_targets(cfg, storage, teachers, owners, draws, shape, out_dir, groups)

    def score(self, cfg: ExperimentConfig, plan, jobs, generate):
        return RayEvalExecutor().score(cfg, plan, jobs, generate)

    def map(self, fn, items):
        return RayEvalExecutor().map(fn, items)

    def sweep_trials(self, cfg: ExperimentConfig, storage: Storage, rel_path: str, run_name: str,
                     trials: list[dict], scores) -> list[dict]:
        from raydefense.distributed.sweep import run_trials

        return run_trials(cfg, storage, rel_path, run_name, trials, scores)

    def training_trials(self, cfg: ExperimentConfig, storage: Storage, rel_path: str,
                        run_name: str, points: list, trials_root: str) -> list[dict]:
        from raydefense.distributed.sweep import run_training_trials

        return run_training_trials(cfg, storage, rel_path, run_name, points, trials_root)
