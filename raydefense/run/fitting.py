"""The domain half of a fit, shared by every executor of the Fitter role: what one model trains
on (its member rows, its latents, or its soft targets), with which settings and which held-out
validation, and the call into the core training loop. An executor (Ray Train in
`raydefense.distributed.train`) only places the work, supplies the reporter, the device and the
model wrapper, and collects the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import torch

from raydefense.audit.scoring import heldout_validator
from raydefense.config import ExperimentConfig
from raydefense.data.encoded import model_training_latents, read_encoded
from raydefense.data.examples import ImageData, TrainData
from raydefense.data.tables import image_shape, model_training_images, read_plan, read_soft_targets
from raydefense.diffusion.backbones import data_shape
from raydefense.diffusion.eps import EpsNet
from raydefense.diffusion.private_step import PrivateTraining, private_training_of
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.training import Reporter, fit
from raydefense.roster import training_role
from raydefense.run.context import FitSpec
from raydefense.storage import Storage


@dataclass
class FitWork:
    """One fit, loaded: its examples, the image shape (C, H, W) of the pixel space, the noise
    schedule, and the held-out validator (None unless `train.val_rows`)."""

    cfg: ExperimentConfig
    spec: FitSpec
    data: TrainData
    shape: tuple[int, int, int]
    schedule: NoiseSchedule
    validate: Optional[Callable[[EpsNet], dict[str, float]]]


def load_fit(cfg: ExperimentConfig, storage: Storage, spec: FitSpec) -> FitWork:
    """What `spec` trains on: kind "distill" its soft targets (x_t regenerated from the run's
    seeds, targets in RAM or under `distill.disk_dir`); otherwise the rows the membership
    matrix gives the model, as latents for a latent family or as images."""
    shape = image_shape(storage)
    # One read of the plan (the image table) serves both the DDPM rows and the validation rows.
    plan = read_plan(storage) if (spec.kind != "distill" or cfg.train.val_rows) else None
    encoded = read_encoded(storage) if cfg.model.latent else None
    schedule = NoiseSchedule.of(cfg.model)
    data: TrainData
    if spec.kind == "distill":
        data = read_soft_targets(
            storage,
            data_shape(cfg.model, shape),
            spec.model,
            encoded,
            cfg.distill.target_dtype,
            noising=(cfg.seed, schedule, cfg.data.prompt_diversification),
            disk_dir=cfg.distill.disk_dir,
        )
    elif encoded is not None:
        assert plan is not None
        rows = plan.row_id[plan.rows_of(spec.model)]
        data = model_training_latents(encoded, rows, cfg.data.prompt_diversification)
    else:
        data = model_training_images(storage, spec.model, plan)
    validate = None
    if cfg.train.val_rows:
        assert plan is not None  # read above whenever val_rows is set
        validate = heldout_validator(
            plan, schedule, cfg.train.val_rows, cfg.seed, spec.model, encoded
        )
    return FitWork(cfg, spec, data, shape, schedule, validate)


def run_fit(
    work: FitWork,
    reporter: Reporter,
    device: torch.device | str = "cpu",
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
) -> dict[str, Any]:
    """Train (or resume, from `reporter.latest_checkpoint()`) the fit to its role's steps;
    the last report's metrics.

    Raises:
        NonFiniteLossError: the loss became nan or inf (the fit ends without a checkpoint).
    """
    cfg, spec = work.cfg, work.spec
    role = training_role(spec.model)
    train_cfg = cfg.train.for_role(role)
    dropout = cfg.train.model_dropout(role)  # a variant's network dropout
    model_cfg = cfg.model if dropout is None else cfg.model.model_copy(update={"dropout": dropout})
    private: Optional[PrivateTraining] = None
    if train_cfg.dp is not None:
        if not isinstance(work.data, ImageData):
            raise ValueError(f"DP-SGD trains on image rows and {spec.model} has none")
        private = private_training_of(train_cfg, len(work.data.images))
    return fit(
        work.data,
        model_cfg,
        train_cfg,
        work.schedule,
        work.shape,
        seed=cfg.seed,
        model_index=spec.model_index,
        reporter=reporter,
        device=device,
        wrap_model=wrap_model,
        batching=cfg.distill.batching,
        validate=work.validate,
        private=private,
    )
