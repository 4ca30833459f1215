"""`attacks`: which attacks run against which targets, each built-in attack's settings, the
attacker's shadow models, and the sections of attacks registered by other code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from raydefense.config.sections import Section
from raydefense.registry import Registry


class LossAttackConfig(Section):
    """Naive loss attack: -mean over (t, draw) of the denoising error (spec/attacks.md §4)."""

    timesteps: list[int] = [100]
    draws: int = Field(10, ge=1)
    reduction: Literal["sum", "mean"] = "sum"


class SecMIConfig(Section):
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


class PIAConfig(Section):
    """PIA / PIAN: eps(x0, 0) proximal initialisation, l_p distance (spec/attacks.md §3).

    timesteps: None = the official sweep 10, 20, ..., 300 (scaled to the schedule when T != 1000);
    canonical_t (scaled the same way) is always included and marked canonical in results.
    """

    timesteps: Optional[list[int]] = None
    canonical_t: int = Field(200, ge=0)
    p: float = Field(4.0, gt=0)


class SimAConfig(Section):
    """SimA: sum |eps(x0, t)|^p on the clean image (spec/attacks.md §6.1).

    timesteps: None = the official sweep 0, 10, ..., 200 (scaled when T != 1000)."""

    timesteps: Optional[list[int]] = None
    p: float = Field(4.0, gt=0)


class GSAConfig(Section):
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


class ShadowConfig(Section):
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


class BlackboxNNConfig(Section):
    """Black-box nearest-neighbour attack: distance of a query image to the nearest of
    num_generated images from the target's public sampler."""

    num_generated: int = Field(512, ge=1)
    features: list[Literal["pixel", "domain"]] = ["pixel", "domain"]


class PangWangConfig(Section):
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


class ReDiffuseConfig(Section):
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


class CLiDConfig(Section):
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


class DualMDAdaptiveConfig(Section):
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


class LiRAConfig(Section):
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


class RMIAConfig(Section):
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


class QuantileConfig(Section):
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


class CombinedConfig(Section):
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


class AttacksConfig(Section):
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
