"""`train`: one training budget for every model, per-role departures, early stopping."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import (
    Field,
    model_validator,
)

from raydefense.config.sections import Section


class EarlyStoppingConfig(Section):
    """Stop a fit once its held-out eps-MSE (`val_eps_mse`, EMA weights, every `log_every`
    steps) has not improved for `patience` reports, and keep the weights of its best report
    (raw and EMA, as they were at that step). Which models stop early: each role's
    `train.<role>.early_stopping` (roles baseline, teacher, student), else `enabled`."""

    enabled: bool = Field(False, description="the default for every role")
    patience: int = Field(
        5, ge=1, description="reports (each train.log_every steps) without improvement"
    )
    min_delta: float = Field(
        0.0, ge=0, description="an improvement must lower val_eps_mse by more than this"
    )
    min_steps: int = Field(0, ge=0, description="never stop before this step")


class RoleTrainConfig(Section):
    """Per-role overrides of `train` (None: the `train` value). A shadow model follows the role
    it imitates (a shadow teacher the teachers', a shadow student the student's)."""

    steps: Optional[int] = Field(None, ge=1, description="this role's train.steps")
    lr: Optional[float] = Field(None, gt=0, description="this role's train.lr")
    ema_decay: Optional[float] = Field(None, ge=0, lt=1, description="this role's train.ema_decay")
    early_stopping: Optional[bool] = Field(
        None, description="stop early on val_eps_mse (None: train.early_stopping.enabled)"
    )


TRAIN_ROLES = ("baseline", "teacher", "student")


class TrainConfig(Section):
    """One budget for every model (paper A.2.2): baseline, each teacher and the student; the
    per-role sections (`train.teacher.steps`, `train.student.lr`, ...) depart from it."""

    steps: int = Field(4000, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1)
    ema_warmup: Literal["none", "diffusers"] = Field(
        "none",
        description="none: a constant ema_decay (pytorch-ddpm's EMA, the paper's DDPM runs); "
        "diffusers: the decay of diffusers' EMAModel as train_text_to_image uses it, "
        "min(ema_decay, (1 + s) / (10 + s)) at update s (0 at the first: the EMA starts at the "
        "weights)",
    )
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(100, ge=1)
    hflip: bool = Field(
        False, description="random horizontal flips of training images (DDPM's CIFAR-10 setting)"
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: forward and loss under torch.autocast(bfloat16), fp32 master weights",
    )
    tf32: bool = Field(
        False,
        description="TF32 matmuls and convolutions on CUDA; false is strict fp32 for both "
        "(PyTorch's own default leaves convolutions in TF32)",
    )
    channels_last: bool = Field(False, description="NHWC memory format for the network")
    compile: bool = Field(False, description="torch.compile the network before DDP")
    val_rows: int = Field(
        64,
        ge=0,
        description="calibration-part non-members on which every "
        "report measures the EMA weights' held-out eps-MSE (val_eps_mse; the "
        "ASHA metric of training sweeps and of early stopping); 0 = off",
    )
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    baseline: RoleTrainConfig = RoleTrainConfig()
    teacher: RoleTrainConfig = RoleTrainConfig()
    student: RoleTrainConfig = RoleTrainConfig()

    @model_validator(mode="after")
    def _check_early_stopping(self) -> TrainConfig:
        if any(self.stops_early(r) for r in TRAIN_ROLES) and not self.val_rows:
            raise ValueError(
                "train.early_stopping needs train.val_rows > 0 (it watches val_eps_mse); "
                "set train.val_rows or turn early stopping off"
            )
        return self

    def stops_early(self, role: str) -> bool:
        own = getattr(self, role).early_stopping
        return self.early_stopping.enabled if own is None else own

    def for_role(self, role: str) -> TrainConfig:
        """The settings one role's fits use: its overrides applied (role sections reset, and
        early stopping on or off for it as `early_stopping.enabled`)."""
        if role not in TRAIN_ROLES:
            raise ValueError(f"unknown training role {role!r}; expected one of {TRAIN_ROLES}")
        own = getattr(self, role)
        tree = self.model_dump()
        tree.update({k: v for k, v in own.model_dump().items() if v is not None})
        tree["early_stopping"] = {
            **self.early_stopping.model_dump(),
            "enabled": self.stops_early(role),
        }
        for r in TRAIN_ROLES:
            tree[r] = {}
        return TrainConfig.model_validate(tree)
