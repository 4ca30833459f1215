"""`sweep`: attack-grid and training sweeps."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import (
    Field,
)

from raydefense.config.sections import Section


class AshaConfig(Section):
    """ASHA early stopping of training-sweep trials on the watched model's held-out eps-MSE
    (`val_eps_mse`, reported at every `train.log_every` step; lower is better)."""

    enabled: bool = True
    grace_period: int = Field(2, ge=1, description="reports before a trial can be stopped")
    reduction_factor: int = Field(2, ge=2)


class SweepConfig(Section):
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
