"""`train`: one training budget for every model, per-role departures, early stopping."""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import (
    Field,
    field_validator,
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


class DPConfig(Section):
    """DP-SGD for a fit (Abadi et al. 2016, in DPDM's form: Poisson batches of expected size
    `train.batch_size`, each row's gradient clipped to `max_grad_norm`, Gaussian noise,
    `multiplicity` (t, noise) draws per row and step). Give a target `epsilon` (the noise
    multiplier is found for the fit's steps and sampling rate) or a `noise_multiplier`, not
    both. The fit reports the epsilon it spent at `delta` (RDP accountant of the sampled
    Gaussian)."""

    epsilon: Optional[float] = Field(
        None, gt=0, description="target epsilon at delta after the fit's steps"
    )
    noise_multiplier: Optional[float] = Field(
        None, ge=0, description="sigma: noise std / clipping norm (instead of epsilon)"
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="the accountant's delta")
    max_grad_norm: float = Field(1.0, gt=0, description="per-example clipping norm C")
    multiplicity: int = Field(
        1, ge=1, description="DPDM's noise multiplicity: (t, noise) draws per row and step"
    )

    @model_validator(mode="after")
    def _one_of(self) -> DPConfig:
        if (self.epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "train.dp takes a target epsilon or a noise_multiplier: set exactly one"
            )
        return self


class RoleTrainConfig(Section):
    """Per-role overrides of `train` (None: the `train` value). A shadow model follows the role
    it imitates (a shadow teacher the teachers', a shadow student the student's)."""

    steps: Optional[int] = Field(None, ge=1, description="this role's train.steps")
    lr: Optional[float] = Field(None, gt=0, description="this role's train.lr")
    ema_decay: Optional[float] = Field(None, ge=0, lt=1, description="this role's train.ema_decay")
    early_stopping: Optional[bool] = Field(
        None, description="stop early on val_eps_mse (None: train.early_stopping.enabled)"
    )
    dp: Optional[DPConfig] = Field(None, description="this role's train.dp (None: train.dp)")


class VariantConfig(Section):
    """A defense trained like the baseline (all members, the baseline's batches and initial
    weights) with these departures from the baseline's settings: target `baseline_<name>`.
    None: the baseline's value."""

    steps: Optional[int] = Field(None, ge=1)
    lr: Optional[float] = Field(None, gt=0)
    ema_decay: Optional[float] = Field(None, ge=0, lt=1)
    weight_decay: Optional[float] = Field(None, ge=0, description="AdamW's weight decay")
    hflip: Optional[bool] = Field(None, description="random horizontal flips (augmentation)")
    dropout: Optional[float] = Field(
        None, ge=0, lt=1, description="the network's dropout for this fit (model.dropout)"
    )
    early_stopping: Optional[bool] = Field(None, description="stop early on val_eps_mse")
    dp: Optional[DPConfig] = Field(None, description="train with DP-SGD")


TRAIN_ROLES = ("baseline", "teacher", "student")
# A variant's name: lower-case words joined by "_" (its target is baseline_<name>).
VARIANT_KEY = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
VARIANT_PREFIX = "baseline_"


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
    dp: Optional[DPConfig] = Field(
        None,
        description="DP-SGD for the image fits (baseline, teachers, the attacker's models; "
        "not the student, which learns soft targets); None: plain training",
    )
    baseline: RoleTrainConfig = RoleTrainConfig()
    teacher: RoleTrainConfig = RoleTrainConfig()
    student: RoleTrainConfig = RoleTrainConfig()
    variants: dict[str, VariantConfig] = Field(
        default_factory=dict,
        description="defenses trained like the baseline with other settings, each audited as "
        "target baseline_<name> (say dp10: {dp: {epsilon: 10}}, hflip: {hflip: true})",
    )

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, v: dict[str, VariantConfig]) -> dict[str, VariantConfig]:
        for name in v:
            if not VARIANT_KEY.fullmatch(name):
                raise ValueError(
                    f"train.variants name {name!r} must be lower-case letters and digits "
                    "joined by '_' (its target is baseline_<name>)"
                )
        return v

    @model_validator(mode="after")
    def _check_early_stopping(self) -> TrainConfig:
        if any(self.stops_early(r) for r in self.roles()) and not self.val_rows:
            raise ValueError(
                "train.early_stopping needs train.val_rows > 0 (it watches val_eps_mse); "
                "set train.val_rows or turn early stopping off"
            )
        return self

    def roles(self) -> tuple[str, ...]:
        """Every training role: TRAIN_ROLES, then one per variant (baseline_<name>)."""
        return (*TRAIN_ROLES, *self.variant_targets())

    def variant_targets(self) -> tuple[str, ...]:
        """The variants' targets, baseline_<name> in config order."""
        return tuple(VARIANT_PREFIX + k for k in self.variants)

    def _variant(self, role: str) -> Optional[VariantConfig]:
        if role.startswith(VARIANT_PREFIX):
            return self.variants.get(role[len(VARIANT_PREFIX) :])
        return None

    def stops_early(self, role: str) -> bool:
        variant = self._variant(role)
        if variant is not None and variant.early_stopping is not None:
            return variant.early_stopping
        own = getattr(self, "baseline" if variant is not None else role).early_stopping
        return self.early_stopping.enabled if own is None else own

    def for_role(self, role: str) -> TrainConfig:
        """The settings one role's fits use: its overrides applied (role sections and variants
        reset, and early stopping on or off for it as `early_stopping.enabled`). A variant's
        role (baseline_<name>) is the baseline's settings with the variant's departures (its
        `dropout` is the network's: `model_dropout`)."""
        variant = self._variant(role)
        if role not in TRAIN_ROLES and variant is None:
            raise ValueError(
                f"unknown training role {role!r}; expected one of {', '.join(self.roles())}"
            )
        own = getattr(self, "baseline" if variant is not None else role)
        tree: dict[str, Any] = self.model_dump()
        tree.update({k: v for k, v in own.model_dump().items() if v is not None})
        if variant is not None:
            tree.update(
                {
                    k: v
                    for k, v in variant.model_dump().items()
                    if v is not None and k not in ("dropout", "early_stopping")
                }
            )
        if role == "student":  # soft targets are no image rows: train.dp is the image fits'
            tree["dp"] = own.model_dump()["dp"]
        tree["early_stopping"] = {
            **self.early_stopping.model_dump(),
            "enabled": self.stops_early(role),
        }
        for r in TRAIN_ROLES:
            tree[r] = {}
        tree["variants"] = {}
        return TrainConfig.model_validate(tree)

    def model_dropout(self, role: str) -> Optional[float]:
        """The network dropout a variant's role trains with (None: model.dropout)."""
        variant = self._variant(role)
        return None if variant is None else variant.dropout
