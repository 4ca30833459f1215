"""Typed config tree, YAML presets shipped with the package, and `--set a.b=v` overrides.

A config is an `ExperimentConfig` (pydantic, unknown keys forbidden). Presets live in
`raydefense/presets/*.yaml`; a user file may name a preset in `base:` and override parts of it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from raydefense.errors import ConfigError

# Re-exported (`X as X`): a model family's schema base and registry.
from raydefense.families import DEFAULT_FAMILY as DEFAULT_FAMILY
from raydefense.families import MODEL_FAMILIES as MODEL_FAMILIES
from raydefense.families import ModelConfig as ModelConfig
from raydefense.families import as_family as as_family
from raydefense.families import model_families as model_families
from raydefense.families import model_family as model_family
from raydefense.hashing import stable_hash
from raydefense.registry import Registry

DEFAULT_PRESET = "digits"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CaptionerConfig(_Section):
    """A captioning model that writes the extra captions of prompt diversification (paper section
    3.1: BLIP, 5 extra captions per training image) in the prepare stage."""

    path: str = Field(
        description="a local directory holding a transformers image-to-text model and its "
        "processor (save_pretrained layout), e.g. Salesforce/blip-image-captioning-base"
    )
    num_captions: int = Field(5, ge=1, description="extra captions per image (the paper's 5)")
    max_new_tokens: int = Field(30, ge=1, description="the longest caption, in tokens")
    top_p: float = Field(
        0.9,
        gt=0.0,
        le=1.0,
        description="nucleus sampling (BLIP's sampling mode, which gives diverse captions); "
        "each image's draws are seeded by (seed, row)",
    )
    prompt: Optional[str] = Field(
        None, description="a text prefix for conditional captioning (BLIP: 'a picture of')"
    )


class DataConfig(_Section):
    """Where images come from and how they are split (members/non-members, shards, eval parts)."""

    source: str = "digits"
    root: Optional[str] = None
    split_file: Optional[str] = None
    member_roots: Optional[list[str]] = Field(
        None,
        description="instead of data.root + a split: the members as folders / Parquet files in "
        "data.source's format (imagefolder or parquet); several = one per shard, in order (an "
        "audit's teachers)",
    )
    nonmember_root: Optional[str] = Field(
        None, description="with member_roots: the non-members, in the same format"
    )
    num_members: Optional[int] = Field(None, ge=2, description="None: half of the pool")
    num_nonmembers: Optional[int] = Field(None, ge=2, description="None: the other half")
    num_shards: int = Field(2, ge=2)
    calibration_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    on_duplicate: Literal["error", "drop"] = "error"
    resolution: Optional[int] = Field(
        None,
        ge=1,
        description="resize every image to resolution x resolution (PIL bicubic); "
        "None = the source's native size (cifar 32, stl10_unlabeled 96, tiny_imagenet 64)",
    )
    image_column: str = Field(
        "image", description="parquet: encoded image bytes or raw uint8 arrays"
    )
    label_column: Optional[str] = Field(
        "label",
        description="parquet: int class labels (None or an absent default column = unlabeled)",
    )
    caption_column: Optional[str] = Field(
        None,
        description="captions: parquet: a string column (one caption per image) or a "
        "list<string> column (several; the first is the original); imagefolder: the caption "
        "column of metadata.jsonl / metadata.csv (None there = 'text')",
    )
    extra_caption_column: Optional[str] = Field(
        None,
        description="parquet / imagefolder metadata: a list<string> (or string) column of extra "
        "captions appended after the original one (e.g. BLIP captions stored beside it); a "
        "null row = no extras",
    )
    prompt_diversification: bool = Field(
        False,
        description="each time an image is used, one of its captions is drawn uniformly; "
        "false: its original caption only; applies to every model, the baseline included",
    )
    captioner: Optional[CaptionerConfig] = Field(
        None,
        description="generate extra captions in the prepare stage with a local captioning "
        "model (data.captioner.path), appended after each planned image's own captions; an "
        "image without captions gets the generated ones only (the first stands as original)",
    )

    @model_validator(mode="after")
    def _check_member_roots(self) -> DataConfig:
        if (self.member_roots is None) != (self.nonmember_root is None):
            raise ValueError(
                "data.member_roots and data.nonmember_root go together: give both (the "
                "members' and the non-members' folders) or neither"
            )
        if self.member_roots is not None:
            if not self.member_roots:
                raise ValueError("data.member_roots is empty: list the members' folders")
            if self.split_file or self.root:
                raise ValueError(
                    "data.member_roots replaces data.root and data.split_file: unset them"
                )
            if self.source not in ("imagefolder", "parquet"):
                raise ValueError(
                    f"data.member_roots are read as data.source={self.source!r}; set "
                    "data.source to imagefolder or parquet (their format)"
                )
        return self


def _model_of(value: Any) -> Any:
    """`model` validated by its family's schema (dicts; a ModelConfig passes as it is)."""
    if isinstance(value, Mapping):
        kind = value.get("kind", DEFAULT_FAMILY)
        if not isinstance(kind, str):
            raise ValueError(f"model.kind must be a family name, got {kind!r}")
        try:
            family = model_family(kind)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return family.model_validate(dict(value))
    return value


class EarlyStoppingConfig(_Section):
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


class RoleTrainConfig(_Section):
    """Per-role overrides of `train` (None: the `train` value). A shadow model follows the role
    it imitates (a shadow teacher the teachers', a shadow student the student's)."""

    steps: Optional[int] = Field(None, ge=1, description="this role's train.steps")
    lr: Optional[float] = Field(None, gt=0, description="this role's train.lr")
    ema_decay: Optional[float] = Field(None, ge=0, lt=1, description="this role's train.ema_decay")
    early_stopping: Optional[bool] = Field(
        None, description="stop early on val_eps_mse (None: train.early_stopping.enabled)"
    )


TRAIN_ROLES = ("baseline", "teacher", "student")


class TrainConfig(_Section):
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


class DistillConfig(_Section):
    """DistillMD soft targets (Algorithm 2) and the student."""

    draws_per_row: int | Literal["auto"] = Field(
        "auto",
        description="soft-target (t, noise) draws per member row; 'auto' = enough that no draw is "
        "reused during student training (equivalent to fresh noise every step)",
    )
    batching: Literal["alternate", "mixed"] = Field(
        "alternate",
        description="alternate: whole batches alternate between shards (Algorithm 2, literal); "
        "mixed: every batch mixes rows of all shards",
    )
    teacher_assignment: Literal["mean", "one_other"] = Field(
        "mean",
        description="K > 2 shards: who labels a member row. mean: the mean of the K - 1 teachers "
        "that did not train on it; one_other: one of them, chosen uniformly per row from a seeded "
        "stream (every draw of the row uses it). K = 2: identical (the single other teacher)",
    )
    teacher_weights: Literal["ema", "raw"] = "ema"
    label_batch_size: int = Field(1024, ge=1)
    target_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="how soft targets are stored and held by the student: bfloat16 halves "
        "their bytes (a paper-scale student holds one per training example; the loss is "
        "computed in float32 either way)",
    )
    store_x_t: bool = Field(
        False,
        description="false: soft targets store their (row, draw) keys and t, and the student "
        "regenerates each x_t from the seeded noise per batch (bit-identical, half the bytes "
        "of float32 targets); true: x_t is stored with every target",
    )
    disk_dir: Optional[str] = Field(
        None,
        description="a local directory where each student fit holds its soft targets in a "
        "memory-mapped file (reserved up front, unlinked at once) instead of RAM: for "
        "paper-scale students whose targets outgrow the host (cifar10_ddpm: 0.56 TiB in "
        "bfloat16); null: in RAM. The same batches and bytes either way",
    )
    synthetic_per_teacher: int = Field(
        0,
        ge=0,
        description="an extension of Algorithm 2 (0 = off, the paper's form): each teacher draws "
        "this many DDIM samples that join the student's inputs, owned by the teacher that drew "
        "them and labelled by the others like member rows; pixel models only",
    )
    synthetic_steps: int = Field(50, ge=1, description="DDIM steps of each synthetic sample")
    member_inputs: bool = Field(
        True,
        description="true (the paper's form): the student's inputs are the noised member rows; "
        "false (an extension): members are left out of its inputs and it distils on the "
        "teachers' synthetic rows and/or public rows alone (needs "
        "distill.synthetic_per_teacher > 0 or distill.public_inputs)",
    )
    public_inputs: bool = Field(
        False,
        description="an extension of Algorithm 2: every spare pool row (in no model's rows or "
        "any audit, no content copy of a plan row: data the defender holds but trains no "
        "teacher on) joins the student's inputs, labelled by the mean of all K teachers; pixel "
        "models only",
    )

    @model_validator(mode="after")
    def _check_inputs(self) -> DistillConfig:
        if not self.member_inputs and not (self.synthetic_per_teacher or self.public_inputs):
            raise ValueError(
                "distill.member_inputs=false leaves the student no inputs: set "
                "distill.synthetic_per_teacher > 0 (e.g. 2048) or distill.public_inputs=true"
            )
        return self


class LossAttackConfig(_Section):
    """Naive loss attack: -mean over (t, draw) of the denoising error (spec/attacks.md §4)."""

    timesteps: list[int] = [100]
    draws: int = Field(10, ge=1)
    reduction: Literal["sum", "mean"] = "sum"


class SecMIConfig(_Section):
    """SecMI_stat: t-error at t_sec with DDIM stride k (official code convention)."""

    t_sec: int = Field(100, ge=2)
    k: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _check(self) -> SecMIConfig:
        if self.t_sec < 2 * self.k:
            raise ValueError(f"SecMI needs t_sec >= 2*k (got t_sec={self.t_sec}, k={self.k})")
        if self.t_sec % self.k:
            raise ValueError(
                f"SecMI needs t_sec to be a multiple of k (got t_sec={self.t_sec}, k={self.k})"
            )
        return self


class SecMINNConfig(SecMIConfig):
    """SecMI_NNs: a ResNet-18 on |x_tilde - x_hat| maps (spec/attacks.md §2.4), trained on the
    calibration part only, cross-fitted: cv_folds models, each trained on the other folds, score
    their held-out fold (honest calibration scores for thresholds) and their mean scores the test
    part (the same models, so calibration and test scores share one scale)."""

    epochs: int = Field(15, ge=1)
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    cv_folds: int = Field(2, ge=2)
    width: int = Field(64, ge=1, description="ResNet-18 stem width (64 = the original)")
    min_steps: int = Field(
        0,
        ge=0,
        description="train at least this many SGD steps (more "
        "epochs on small calibration sets); 0 = exactly `epochs`",
    )


class PIAConfig(_Section):
    """PIA / PIAN: eps(x0, 0) proximal initialisation, l_p distance (spec/attacks.md §3).

    timesteps: None = the official sweep 10, 20, ..., 300 (scaled to the schedule when T != 1000);
    canonical_t (scaled the same way) is always included and marked canonical in results.
    """

    timesteps: Optional[list[int]] = None
    canonical_t: int = Field(200, ge=0)
    p: float = Field(4.0, gt=0)


class SimAConfig(_Section):
    """SimA: sum |eps(x0, t)|^p on the clean image (spec/attacks.md §6.1).

    timesteps: None = the official sweep 0, 10, ..., 200 (scaled when T != 1000)."""

    timesteps: Optional[list[int]] = None
    p: float = Field(4.0, gt=0)


class GSAConfig(_Section):
    """GSA1 / GSA2 gradient attacks (spec/attacks.md §5): per-parameter-tensor gradient norms at
    num_timesteps equidistant t, a gradient-boosting classifier trained on shadow models."""

    num_timesteps: int = Field(10, ge=1)
    weights: Literal["ema", "raw"] = Field(
        "raw", description="the official code attacks the raw training weights"
    )
    classifier: Literal["auto", "xgboost", "sklearn"] = "auto"
    n_estimators: int = Field(200, ge=1)
    scaling: Literal["separate", "shadow"] = Field(
        "separate",
        description="separate: shadow and target features z-scored with their own "
        "statistics (the official code); shadow: the target reuses the shadow scaler",
    )
    batch_size: int = Field(16, ge=1, description="rows per per-sample-gradient chunk")


class ShadowConfig(_Section):
    """Shadow models for attacks that learn from them (GSA). Each of `num_models` draws takes
    `members` rows disjoint from the target's rows to train on, and as many others as its
    non-members. With regime "matched" an attack on a target learns from shadows trained like it:
    against the baseline a shadow trained on the whole draw, against a teacher K shadow teachers
    on K disjoint shards of the draw, against the student a shadow student distilled (the same
    pipeline) from those shadow teachers. "baseline" uses the baseline-like shadow for every
    target (the GSA paper's setting, which mismatches the half-size teachers and the student)."""

    num_models: int = Field(1, ge=0)
    members: Optional[int] = Field(None, ge=2, description="None: the baseline's member count")
    regime: Literal["matched", "baseline"] = Field(
        "matched",
        description="matched: per target, shadows trained like it (baseline, "
        "teacher or distilled student); baseline: one baseline-like shadow for every target",
    )


class BlackboxNNConfig(_Section):
    """Black-box nearest-neighbour attack: distance of a query image to the nearest of
    num_generated images from the target's public sampler."""

    num_generated: int = Field(512, ge=1)
    features: list[Literal["pixel", "domain"]] = ["pixel", "domain"]


class PangWangConfig(_Section):
    """Pang & Wang's black-box attack (text-to-image): per audited image, num_generations
    images from its caption through the target's public sampler (sampling.*; DualMD: the
    alternating pipeline), scored by their mean similarity to the image (threshold attack)."""

    num_generations: int = Field(3, ge=1, description="generations per query (theirs: 3)")
    similarity: list[Literal["ssim", "l2"]] = Field(
        ["ssim", "l2"],
        description="pixel similarity per column: SSIM (their default with no feature model) "
        "and negative mean squared distance",
    )
    feature_model: Optional[str] = Field(
        None,
        description="a local transformers image model directory (theirs: "
        "facebook/deit-base-distilled-patch16-384): adds their feature column, the cosine "
        "similarity of the generation's and the image's last hidden states along the feature "
        "dimension, averaged over tokens and generations; None: pixel columns only",
    )


class ReDiffuseConfig(_Section):
    """ReDiffuse (Li et al., ICML 2025): variations of the audited image through the target's
    public image-to-image interface (noised to t_start, deterministic DDIM back to index 0 in
    steps of `step`), averaged over `average` draws; score = -mean |x0 - mean variation|^p."""

    t_start: int = Field(200, ge=1, description="for T = 1000; scaled to the model's T")
    step: int = Field(100, ge=1, description="DDIM stride (200 -> 100 -> 0 by default)")
    average: int = Field(10, ge=1, description="variations averaged per image")
    p: float = Field(1.0, gt=0, description="the distance's power (theirs: 1)")
    distance: Literal["lp", "ssim"] = Field(
        "lp",
        description="lp: -mean |x0 - reconstruction|^p (their DDIM code); ssim: the SSIM of the "
        "reconstruction to the image (their Stable Diffusion code, which scores SSIM)",
    )


class CLiDConfig(_Section):
    """CLiD_th (Zhai et al., NeurIPS 2024; raydefense.attacks.clid): the denoising loss under the
    caption and under weakened captions (its most important tokens replaced by the end-of-text
    token, then the null prompt) at `timesteps`, sharing each (t, noise) draw across conditions.
    Columns: -L (conditional loss), CLiD (weakened minus conditional loss, averaged over the
    weakened conditions) and (1 - alpha) * (-L) + alpha * CLiD per alpha (alpha is picked on the
    calibration split like every attack setting)."""

    timesteps: list[int] = Field(
        [440, 450, 460], description="for T = 1000 (theirs: 440, 450, 460); scaled to the model's T"
    )
    draws: int = Field(1, ge=1, description="noise draws per timestep (theirs: 1, 3 queries)")
    replace_fractions: list[float] = Field(
        [0.3, 0.5, 0.7],
        description="fractions in (0, 1] of a caption's tokens replaced, most important first, "
        "one weakened condition each (theirs: 0.3, 0.5, 0.7); the null prompt is always added",
    )
    alphas: list[float] = Field(
        [0.25, 0.5, 0.75, 0.9, 0.97, 0.99],
        description="weights in [0, 1] of CLiD in the combined columns; raw (unscaled) terms, "
        "so values near 1 matter when CLiD is small next to the loss",
    )

    @model_validator(mode="after")
    def _check(self) -> CLiDConfig:
        if not self.timesteps:
            raise ValueError("attacks.clid.timesteps is empty; list at least one timestep")
        for t in self.timesteps:
            if not 0 <= t < 1000:
                raise ValueError(f"attacks.clid.timesteps has {t}, outside [0, 1000) (T = 1000)")
        if len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError(f"attacks.clid.timesteps repeats a timestep: {self.timesteps}")
        for f in self.replace_fractions:
            if not 0 < f <= 1:
                raise ValueError(f"attacks.clid.replace_fractions has {f}, outside (0, 1]")
        for a in self.alphas:
            if not 0 <= a <= 1:
                raise ValueError(f"attacks.clid.alphas has {a}, outside [0, 1]")
        return self


class DualMDAdaptiveConfig(_Section):
    """Router-aware gray-box attack on DualMD (raydefense.attacks.adaptive): per teacher, the
    base attack's best setting (calibration AUC) among the timesteps that teacher serves,
    standardised on calibration non-members, then combined; every such choice cross-fitted."""

    bases: Optional[list[str]] = Field(
        None,
        description="query attacks whose per-timestep scores are combined; None: every "
        "enabled query attack with a single-timestep setting served by each teacher",
    )
    combine: list[Literal["max", "learned", "contrast"]] = Field(
        ["max", "learned", "contrast"],
        min_length=1,
        description="max: max of the standardised per-teacher "
        "scores; learned: logistic regression on them; contrast: max_k (z_k - the other "
        "teachers' mean z), |z_1 - z_2| for two (the cross-teacher contrast)",
    )
    cv_folds: int = Field(
        2,
        ge=2,
        description="folds of the cross-fit: calibration rows are scored by choices "
        "(setting, sign, standardisation, weights) made on the other folds",
    )


_BASES_DESCRIPTION = (
    "query attacks whose per-row statistics are calibrated (every setting of each); None: "
    "every enabled query attack that asks eps(x_t, t) directly (loss, secmi_stat, pia, pian, "
    "sima)"
)


class LiRAConfig(_Section):
    """LiRA (Carlini et al. 2022, arXiv 2112.03570; on diffusion losses as in Carlini et al.
    2023): per audited row, the target's statistic against the same statistic (same seeded
    noise) from reference models that never trained on the row. Offline (the default): one-sided
    z-score against the references' Gaussian; online: log N(IN) - log N(OUT) where reference
    models trained on the row exist (raydefense.attacks.lira_rmia)."""

    bases: Optional[list[str]] = Field(None, description=_BASES_DESCRIPTION)
    variance: Literal["auto", "global", "per_example"] = Field(
        "auto",
        description="per_example: each row's own spread over its references; global: one "
        "spread shared by every row (the paper's choice below 64 references); auto: "
        "per_example from `per_example_min` references on",
    )
    per_example_min: int = Field(64, ge=2, description="references that make `auto` per-example")
    online_models: int = Field(
        0,
        ge=0,
        description="online LiRA: this many extra reference draws (0 = off; else >= 2), each "
        "trained like the targets on a random half of the audited rows (every audited row IN "
        "for exactly half of them), recorded in the membership matrix; per draw a baseline, K "
        "teachers and a distilled student (whichever roles the audited targets need): costly, "
        "off in the CPU presets",
    )
    transform: Literal["log", "none"] = Field(
        "log",
        description="log: the statistic is -log(error) of the error a base score negates (a "
        "positive error's analogue of LiRA's logit scaling, closer to Gaussian); none: the raw "
        "score",
    )

    @field_validator("online_models")
    @classmethod
    def _online_pairs(cls, v: int) -> int:
        if v == 1:
            raise ValueError(
                "attacks.lira.online_models=1 leaves each row without an IN or an OUT "
                "reference; set 0 (offline only) or >= 2"
            )
        return v


class RMIAConfig(_Section):
    """RMIA (Zarifzadeh, Liu, Shokri, ICML 2024, arXiv 2312.03262), offline: the likelihood
    ratio of x under the target vs the references, compared pairwise with population rows z
    (rows no audit uses and no model trained on). Pr(x | model) = exp(-error(x) / T(x)), the
    error a base score negates over the references' mean error on x;
    Pr(x) = ((1 + a) mean_ref Pr(x | ref) + (1 - a)) / 2; score = fraction of z with
    LR(x, z) >= gamma."""

    bases: Optional[list[str]] = Field(None, description=_BASES_DESCRIPTION)
    gamma: float = Field(
        1.0,
        gt=0,
        description="pairwise likelihood-ratio threshold; 1: the score is the population's "
        "CDF of the ratio (the paper tunes gamma near 1-2 for class probabilities; this "
        "proxy's ratios sit near 1, where gamma = 2 flags no pair)",
    )
    offline_a: float = Field(
        0.3, ge=0, le=1, description="offline approximation of Pr(x) from OUT references"
    )


class QuantileConfig(_Section):
    """Quantile-regression attack (Tang, Wu, Aydore, Kearns, Roth, ICML 2024, arXiv
    2312.05140): no shadow diffusion model. Small regressors trained on the attacker's
    population rows (never audited, never trained on) predict, from the image alone, the
    distribution of the target's statistic on non-members (a Gaussian: mean and spread, fitted
    by its likelihood); a row's score is its z-score against that prediction (a per-example
    threshold), averaged over a bag of regressors on bootstrap samples."""

    bases: Optional[list[str]] = Field(None, description=_BASES_DESCRIPTION)
    bag: int = Field(5, ge=1, description="regressors, each on its own bootstrap sample")
    aggregate: list[Literal["mean", "vote"]] = Field(
        ["mean"],
        min_length=1,
        description="mean: the bag's average z-score; vote: the fraction of the bag whose "
        "1 - alpha quantile the row's statistic exceeds (the paper's majority vote)",
    )
    alpha: float = Field(0.01, gt=0, lt=1, description="the vote's per-regressor FPR")
    epochs: int = Field(100, ge=1)
    width: int = Field(32, ge=4, description="channels of the regressor's first conv layer")
    lr: float = Field(1e-3, gt=0)
    transform: Literal["log", "none"] = Field(
        "log", description="as attacks.lira.transform: the regressed statistic"
    )


class CombinedConfig(_Section):
    """The combined attack: L1 logistic regression over every per-row attack column of a
    target, fitted on its calibration part; calibration scores out-of-fold (`folds`), the
    regularisation chosen by an inner CV inside each fold (nested cross-validation)."""

    folds: int = Field(5, ge=2, description="outer folds: calibration scores out-of-fold")
    inner_folds: int = Field(3, ge=2, description="inner folds choosing the regularisation")
    cs: list[float] = Field(
        [0.01, 0.03, 0.1, 0.3, 1.0], min_length=1, description="inverse L1 strengths tried"
    )


# The settings sections of attacks added by other code (a plugin, a test): each registered under
# its attack's name beside the attack's class, accepted as `attacks.<name>`. The built-in attacks'
# sections are AttacksConfig's fields, so loading a config imports no attack code (no torch).
ATTACK_SETTINGS: Registry[type[BaseModel]] = Registry("attack settings")


class AttacksConfig(_Section):
    """Which attacks run in `evaluate`, against which targets, and their hyperparameters."""

    # A registered attack's section (ATTACK_SETTINGS) is an extra key, validated by its schema.
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    enabled: list[str] = ["loss", "secmi_stat"]
    targets: Optional[list[str]] = Field(
        None,
        description="None: every target, skipping (and reporting) attacks a target's "
        "access level cannot serve; an explicit list makes such a pair an error",
    )
    dualmd_access: Literal["gray-box", "black-box"] = Field(
        "gray-box",
        description="gray-box: eps queries reach DualMD through its step router "
        "(an extension beyond the paper); black-box: generated images only",
    )
    weights: Literal["ema", "raw"] = "ema"
    batch_size: int = Field(256, ge=1)
    score_actors: int = Field(1, ge=1, description="scoring actors per target (Ray Data pool)")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for CIs (0 = no CIs)")
    loss: LossAttackConfig = LossAttackConfig()
    secmi_stat: SecMIConfig = SecMIConfig()
    secmi_nn: SecMINNConfig = SecMINNConfig()
    pia: PIAConfig = PIAConfig()
    pian: PIAConfig = PIAConfig()
    sima: SimAConfig = SimAConfig()
    gsa1: GSAConfig = GSAConfig()
    gsa2: GSAConfig = GSAConfig()
    blackbox_nn: BlackboxNNConfig = BlackboxNNConfig()
    pang_wang: PangWangConfig = PangWangConfig()
    rediffuse: ReDiffuseConfig = ReDiffuseConfig()
    clid: CLiDConfig = CLiDConfig()
    dualmd_adaptive: DualMDAdaptiveConfig = DualMDAdaptiveConfig()
    lira: LiRAConfig = LiRAConfig()
    rmia: RMIAConfig = RMIAConfig()
    quantile: QuantileConfig = QuantileConfig()
    combined: CombinedConfig = CombinedConfig()
    shadow: ShadowConfig = ShadowConfig()

    @model_validator(mode="before")
    @classmethod
    def _registered_sections(cls, data: Any) -> Any:
        """Keys that are no field: registered attacks' sections (ATTACK_SETTINGS), validated by
        their schemas; anything else is refused, naming the sections there are."""
        if not isinstance(data, Mapping):
            return data
        out = dict(data)
        for k in [k for k in data if k not in cls.model_fields]:
            if k not in ATTACK_SETTINGS:
                known = sorted([*cls.model_fields, *ATTACK_SETTINGS.names()])
                raise ValueError(
                    f"attacks.{k} is neither a setting nor a registered attack's section; valid "
                    f"keys there: {', '.join(known)}"
                )
            try:
                out[k] = ATTACK_SETTINGS.get(k).model_validate(data[k])
            except ValidationError as e:  # raised here it would lose the section's name
                err = e.errors()[0]
                where = ".".join(str(p) for p in ("attacks", k, *err["loc"]))
                raise ValueError(f"{where}: {err['msg']} (got {err.get('input')!r})") from None
        return out

    def section(self, name: str) -> Optional[BaseModel]:
        """The settings of attack `name`: its field, its registered section as given, or that
        section's defaults; None for a name with no section."""
        if name in type(self).model_fields:
            value = getattr(self, name)
            return value if isinstance(value, BaseModel) else None
        given = (self.model_extra or {}).get(name)
        if given is not None:
            return given
        return ATTACK_SETTINGS.get(name)() if name in ATTACK_SETTINGS else None


class QualityConfig(_Section):
    """Utility and memorization of generated samples (evaluate)."""

    num_generated: int = Field(512, ge=2, description="samples per target for FID/memorization")
    inception_weights: Optional[str] = Field(
        None,
        description="local path of torch-fidelity's Inception weights; None = no "
        "FID/IS (nothing is downloaded)",
    )
    domain_classifier_epochs: int = Field(30, ge=1)
    mmd_permutations: int = Field(
        1000,
        ge=0,
        description="distribution-level membership check "
        "(kernel MMD of generated samples to members vs non-members, "
        "permutation p-value); 0 = off",
    )
    domain_rows: int = Field(
        2000,
        ge=2,
        description="at most this many spare pool rows (no "
        "target, shadow or audit uses them; content duplicates of those "
        "dropped) train the domain feature extractor",
    )
    domain_rows_from: Literal["spare", "spare_and_shadow"] = Field(
        "spare_and_shadow",
        description="the rows the domain feature extractor may train on: spare pool rows "
        "only, or those first and then the shadow draws' rows (the attacker's own data, "
        "disjoint from every target's members and non-members) when spare rows are fewer than "
        "domain_rows (a split that uses nearly the whole pool leaves almost no spare rows)",
    )
    sscd_model: Optional[str] = Field(
        None,
        description="text-to-image memorization: local path of an SSCD TorchScript model "
        "(sscd_disc_mixup.torchscript.pt); None = no SSCD similarity",
    )
    clip_model: Optional[str] = Field(
        None,
        description="text-to-image prompt alignment: a local transformers CLIPModel directory "
        "(with its tokenizer); None = no CLIP score",
    )
    memorization_k: int = Field(50, ge=1)
    memorization_threshold: float = Field(1 / 3, gt=0)
    precision_recall_k: int = Field(3, ge=1)


class SamplingConfig(_Section):
    """Sample grids (baseline, DualMD, student) and the held-out quality metric."""

    sampler: Literal["ddim", "ddpm"] = "ddim"
    num_steps: int = Field(50, ge=1)
    num_images: int = Field(64, ge=1)
    quality_draws: int = Field(4, ge=1)
    guidance_scale: float = Field(
        1.0,
        ge=1.0,
        description="text-to-image sampling: classifier-free guidance weight (1 = no guidance; "
        "SD's default is 7.5); under DualMD both halves of a step come from that step's teacher",
    )


class TrackingConfig(_Section):
    uri: str = "sqlite:///mlflow.db"
    enabled: bool = True
    register_models: bool = Field(
        True,
        description="log every trained target model (baseline, teacher_k, student) to its run "
        "as an MLflow pyfunc that generates images, register it as <experiment>-<model>, and "
        "tag the version with its audit (worst-case AUC, TPR@1%FPR, utility) after the report",
    )


class StorageConfig(_Section):
    root: str = "./runs"


class ResourcesConfig(_Section):
    workers_per_model: int = Field(1, ge=1)
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    concurrent_fits: int = Field(3, ge=1)
    torch_threads: Optional[int] = Field(
        None,
        ge=1,
        description="threads per worker; None = the node's cores shared among the "
        "workers running at once (at least cpus_per_worker)",
    )
    label_actors: int = Field(1, ge=1, description="soft-target actor pool size")
    local_num_cpus: Optional[int] = Field(
        None, ge=1, description="logical CPUs of a local Ray cluster; None = 2 x os.cpu_count()"
    )


class AshaConfig(_Section):
    """ASHA early stopping of training-sweep trials on the watched model's held-out eps-MSE
    (`val_eps_mse`, reported at every `train.log_every` step; lower is better)."""

    enabled: bool = True
    grace_period: int = Field(2, ge=1, description="reports before a trial can be stopped")
    reduction_factor: int = Field(2, ge=2)


class SweepConfig(_Section):
    """`raydefense sweep`. kind=attacks: per attack, a grid over fields of its `attacks.<name>`
    section (the Cartesian product of the listed values; unlisted fields keep their
    `attacks.<name>` value), validated against the attack registry by `raydefense.audit.grid`.
    kind=training: a grid over dotted config paths (`train.lr`, `distill.draws_per_row`,
    `data.num_shards`, ...); every point is a small pipeline
    (`raydefense.sweeps.training_sweep`)."""

    name: str = Field(
        "attacks",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="outputs under <root>/<experiment>/sweeps/<name>/",
    )
    attacks: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict,
        description="{attack: {field: [values, ...]}}, e.g. "
        "{secmi_stat: {t_sec: [50, 100], k: [10]}, loss: {timesteps: [[50], [200]]}}",
    )
    max_concurrent_trials: Optional[int] = Field(
        None, ge=1, description="None: the cluster's CPUs / cpus_per_trial (at least 1)"
    )
    cpus_per_trial: float = Field(
        0.5,
        gt=0,
        description="CPUs reserved per Tune trial "
        "(fractional: a trial is a vectorised ROC over stored scores)",
    )
    kind: Literal["attacks", "training"] = "attacks"
    training: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="kind=training: {dotted.path: [values, ...]}, e.g. "
        "{train.lr: [0.001, 0.002], distill.draws_per_row: [1, 4]}",
    )
    target: str = Field(
        "student",
        description="kind=training: the model whose worst-case "
        "attack AUC and utility are the trial's objectives (its own training "
        "curve drives ASHA; dualmd: teacher_0's)",
    )
    trial_attacks: Optional[list[str]] = Field(
        None,
        description="kind=training: the attacks each trial runs (None: every attack of "
        "attacks.enabled, the full worst case)",
    )
    utility: Literal["domain_fid", "heldout_eps_mse"] = Field(
        "domain_fid", description="kind=training: the utility objective (lower is better)"
    )
    asha: AshaConfig = AshaConfig()
    reference: Optional[str] = Field(
        "baseline",
        description="kind=training: a second target every trial also audits (same seed and "
        "data), whose utility is the trial's reference (utility_reference); None = off",
    )
    utility_budget: float = Field(
        1.1,
        gt=0,
        description="kind=training: the recommended setting is the most private one on the "
        "calibration-side front whose utility is at most this factor times the baseline's: "
        "the mean of its trials' utility / utility_reference, else against the experiment's "
        "own evaluated baseline",
    )


AUDIT_ROLE = r"^(baseline|student|teacher_[1-9][0-9]*)$"


class AuditConfig(_Section):
    """Audit existing models instead of training them (`raydefense audit`): each named target
    role is imported, not trained; the other targets are left out. Shadow models (for the
    shadow-trained attacks) are still trained, like the `model` section describes."""

    models: dict[str, str] = Field(
        default_factory=dict,
        description="target role (baseline, student, teacher_k) -> a diffusers UNet directory, "
        "a diffusers pipeline directory, a raydefense model directory (models/<name>), or an "
        "MLflow model URI (models:/<name>/<version>, runs:/<run id>/<path>)",
    )
    digests: dict[str, str] = Field(
        default_factory=dict,
        description="set by the audit command, not by hand: role -> SHA-256 of the imported "
        "weights (so new weights under the same path are audited afresh)",
    )

    @model_validator(mode="after")
    def _check_roles(self) -> AuditConfig:
        import re

        for role in self.models:
            if not re.match(AUDIT_ROLE, role):
                raise ValueError(
                    f"audit.models: unknown role {role!r}; name each model baseline (trained "
                    "on all members), teacher_1..teacher_K (trained on shard k; DualMD is "
                    "audited when all K are given) or student"
                )
        return self


class ExperimentConfig(_Section):
    experiment: str = "digits"
    seed: int = 0
    data: DataConfig = DataConfig()
    model: SerializeAsAny[ModelConfig] = Field(
        default_factory=lambda: model_family(DEFAULT_FAMILY)()
    )
    train: TrainConfig = TrainConfig()
    distill: DistillConfig = DistillConfig()
    attacks: AttacksConfig = AttacksConfig()
    sampling: SamplingConfig = SamplingConfig()
    quality: QualityConfig = QualityConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    resources: ResourcesConfig = ResourcesConfig()
    sweep: SweepConfig = SweepConfig()
    audit: AuditConfig = AuditConfig()

    _family_schema = field_validator("model", mode="before")(_model_of)

    @model_validator(mode="after")
    def _check_capabilities(self) -> ExperimentConfig:
        """Settings the model family's capabilities rule out (`latent`, `conditional`)."""
        m = self.model
        if m.latent and self.train.hflip:
            raise ValueError(
                f"train.hflip flips pixels, but model.kind={m.kind} trains on latents encoded "
                "once in prepare: set train.hflip=false"
            )
        if not m.conditional and self.data.prompt_diversification:
            raise ValueError(
                "data.prompt_diversification draws captions for a text-conditioned model; "
                f"model.kind={m.kind} takes none: set model.kind=sd or turn it off"
            )
        if m.latent and self.distill.synthetic_per_teacher:
            raise ValueError(
                "distill.synthetic_per_teacher draws pixel samples; a latent model "
                f"(model.kind={m.kind}) is not supported: set it to 0"
            )
        if m.latent and self.distill.public_inputs:
            raise ValueError(
                "distill.public_inputs labels pixel rows; a latent model "
                f"(model.kind={m.kind}) is not supported: set it to false"
            )
        if not m.conditional and self.data.captioner is not None:
            raise ValueError(
                "data.captioner writes captions for a text-conditioned model; "
                f"model.kind={m.kind} takes none: set model.kind=sd or unset it"
            )
        return self

    def flat_params(self) -> dict[str, str]:
        """Dotted keys -> string values, as logged to MLflow params."""
        return {
            k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in _flatten(self.model_dump(mode="json")).items()
        }

    def fingerprint(self) -> str:
        """SHA-256 of the whole config (results.json's `config_fingerprint`); an unused `audit`
        section is left out, so configs from before it keep their fingerprints."""
        d = self.model_dump(mode="json")
        if d["audit"] == AuditConfig().model_dump(mode="json"):
            del d["audit"]
        return stable_hash(d)


def first_error(e: ValidationError) -> tuple[str, str, Any]:
    """The first error of a pydantic ValidationError: (dotted location, message without
    pydantic's "Value error, " prefix, the offending input), for one-line ConfigErrors."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return loc, str(err["msg"]).removeprefix("Value error, "), err.get("input")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------- loading


EXPERIMENT_PRESETS = "raydefense.presets"
HARDWARE_PRESETS = "raydefense.presets.hardware"
# What a hardware preset may set: placement and speed only, never what a model learns or how it
# is audited (so it changes no fingerprint and no number).
HARDWARE_SECTIONS = ("resources",)


def _names(package: str) -> list[str]:
    files = resources.files(package).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def experiment_preset_names() -> list[str]:
    """Presets of what runs (data, model, training, attacks): digits, smoke, ..."""
    return _names(EXPERIMENT_PRESETS)


def hardware_preset_names() -> list[str]:
    """Presets of where it runs (the `resources` section): cpu2, cpu16, ..."""
    return _names(HARDWARE_PRESETS)


def preset_names() -> list[str]:
    return experiment_preset_names() + hardware_preset_names()


def _yaml(package: str, name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files(package).joinpath(f"{name}.yaml").read_text()) or {}


def _preset_dict(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """An experiment preset's tree; a preset may start from another with `base:` (its own
    keys win, merged section by section)."""
    if name in seen:
        raise ConfigError(
            f"experiment preset {name!r} names itself as a base ({' -> '.join(seen)})"
        )
    if name not in experiment_preset_names():
        hint = (
            f" ({name!r} is a hardware preset: add an experiment preset or --config)"
            if name in hardware_preset_names()
            else ""
        )
        raise ConfigError(
            f"unknown experiment preset {name!r}{hint}; choose one of: "
            f"{', '.join(experiment_preset_names())}"
        )
    tree = _yaml(EXPERIMENT_PRESETS, name)
    base = tree.pop("base", None)
    return _deep_merge(_preset_dict(base, (*seen, name)), tree) if base else tree


def _hardware_dict(name: str) -> dict[str, Any]:
    tree = _yaml(HARDWARE_PRESETS, name)
    extra = sorted(set(tree) - set(HARDWARE_SECTIONS))
    if extra:  # a shipped file that breaks the rule is a bug, said plainly
        raise ConfigError(
            f"hardware preset {name!r} sets {', '.join(extra)}; hardware presets "
            f"may only set {', '.join(HARDWARE_SECTIONS)}"
        )
    return tree


def split_presets(presets: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """`--preset` values -> (the experiment preset or None, the hardware presets in order).

    Raises:
        ConfigError: an unknown name, or more than one experiment preset.
    """
    hardware = set(hardware_preset_names())
    unknown = [p for p in presets if p not in hardware and p not in experiment_preset_names()]
    if unknown:
        raise ConfigError(
            f"unknown preset {unknown[0]!r}; experiment presets: "
            f"{', '.join(experiment_preset_names())}; hardware presets: "
            f"{', '.join(sorted(hardware))}"
        )
    experiments = [p for p in presets if p not in hardware]
    if len(experiments) > 1:
        raise ConfigError(
            f"--preset {experiments[0]} and --preset {experiments[1]} are both "
            "experiment presets; give one, plus any hardware presets "
            f"({', '.join(sorted(hardware))})"
        )
    return (experiments[0] if experiments else None), [p for p in presets if p in hardware]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, section by section; a `model` section that names another
    family than the base's starts from the base's schedule only (`switch_family`)."""
    out = dict(base)
    if isinstance(over.get("model"), dict) and isinstance(out.get("model"), dict):
        out["model"] = switch_family(out["model"], over["model"].get("kind"))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: 3, 1e-3, true, null, [32, 64], s3://b/p."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is not KEY=VALUE (for example train.steps=500)")
    key, value = assignment.split("=", 1)
    set_path(tree, key.strip(), _parse_value(value))


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted config key in a config dict (as `--set` does), checked against the schema.

    Raises:
        ConfigError: one line naming the unknown part of the key and the valid keys there.
    """
    parts = key.split(".")
    node: Any = tree
    known: Any = ExperimentConfig.model_fields
    for i, part in enumerate(parts):
        if known == "free":  # below a dict-typed field (sweep.attacks): any key
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
            continue
        registered = i == 1 and parts[0] == "attacks" and part in ATTACK_SETTINGS
        if not registered and (known is None or part not in known):
            where = ".".join(parts[:i]) or "the top level"
            choices = ", ".join(sorted(known)) if known else "(none: not a section)"
            raise ConfigError(
                f"unknown config key {key!r}: {part!r} is not in {where}; "
                f"valid keys there: {choices}"
            )
        if registered:  # a registered attack's section (ATTACK_SETTINGS)
            sub: Any = ATTACK_SETTINGS.get(part).model_fields
        else:
            annotation = known[part].annotation
            # Optional[Section] (data.captioner): its keys are the section's
            members = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
            if getattr(annotation, "model_fields", None) is None and len(members) == 1:
                annotation = members[0]
            sub = getattr(annotation, "model_fields", None)
            if sub is None and getattr(annotation, "__origin__", None) is dict:
                sub = "free"
        if i == 0 and part == "model":  # the keys of the family the tree selects so far
            current = node.get("model") or {}
            sub = _family_fields(current.get("kind", DEFAULT_FAMILY))
        if i == len(parts) - 1:
            if i == 1 and parts[0] == "model" and part == "kind":  # another family's fields go
                switched = dict(switch_family(node, value))
                node.clear()
                node.update(switched)
            node[part] = value
        else:
            if node.get(part) is None:  # an unset optional section
                node[part] = {}
            node = node[part]
            known = sub


def switch_family(model: dict[str, Any], kind: Any) -> dict[str, Any]:
    """A `model` dict moved to family `kind`: unchanged for its own family (or kind None); for
    another, only the keys every family shares (kind, the noise schedule) are kept, since the
    old family's own fields mean nothing to the new one."""
    if kind is None or kind == model.get("kind", DEFAULT_FAMILY):
        return model
    shared = {k: v for k, v in model.items() if k in ModelConfig.model_fields}
    return {**shared, "kind": kind}


def _family_fields(kind: Any) -> dict[str, Any]:
    """The `model` keys of family `kind` (a ConfigError naming the families when unknown)."""
    return dict(model_family(str(kind)).model_fields)


def load_config(
    preset: Union[str, Sequence[str], None] = None,
    config_file: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> ExperimentConfig:
    """Build a config: an experiment preset or a YAML file (which may name a `base:` preset),
    then hardware presets in order (`resources` only), then `--set` overrides.

    `preset`: one name or several (`["digits", "cpu2"]`): at most one experiment preset and any
    number of hardware presets.

    Raises:
        ConfigError: one line naming the bad key or value.
    """
    presets = [preset] if isinstance(preset, str) else list(preset or [])
    preset, hardware = split_presets(presets)
    if preset and config_file:
        raise ConfigError(
            "give either an experiment --preset or --config, not both (hardware "
            "presets combine with either)"
        )
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {config_file!r} does not exist")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {config_file!r} is not valid YAML: {e}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"config file {config_file!r} must hold a mapping of sections")
        base = user.pop("base", None)
        tree = _deep_merge(_preset_dict(base), user) if base else user
    else:
        tree = _preset_dict(preset or DEFAULT_PRESET)
    for name in hardware:
        tree = _deep_merge(tree, _hardware_dict(name))
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as e:
        loc, msg, value = first_error(e)
        raise ConfigError(
            f"invalid config value at {loc or 'config'}: {msg} (got {value!r})"
        ) from None
