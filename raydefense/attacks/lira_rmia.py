"""Reference-calibrated attacks (spec/attacks.md §6b): LiRA and RMIA.

A member's error is low partly because the model trained on it and partly because the image is
easy. These attacks compare the target's per-row statistic with the same statistic of the same
row, under the same seeded noise and timestep, from reference models that never trained on it
(the attacker's regime-matched shadow models), which removes the row's difficulty. They make no
model query of their own: they recalibrate the columns the base query attacks (loss, SecMI, PIA,
PIAN, SimA) computed on the target, the references and the population rows.

Every base score is a negated non-negative error (higher = member); `statistic` turns it into
the quantity the Gaussian fits see. Pure numpy.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np

from raydefense.attacks.base import ATTACKS, Attack, AttackKind
from raydefense.config import LiRAConfig, RMIAConfig
from raydefense.errors import ConfigError

# Below this an error counts as zero (a log would diverge).
TINY_ERROR = 1e-30


@dataclass
class ReferenceData:
    """The columns one reference-calibrated attack reads, for one base attack setting.

    target: [N] the target's base score on the audited rows (higher = member).
    references: [m, N] each OUT reference model's score on the same rows, same seeded noise.
    pop_target: [Z] the target's score on the population rows (no audit scores them, no model
        trained on them); pop_references: [m, Z] the references' (None when not scored).
    images, pop_images: [N, C, H, W] / [Z, C, H, W] float32 in [-1, 1] (the quantile
        regressor's inputs; None for the attacks that read scores only).
    online: [o, N] online LiRA's references' scores on the same rows (None when off);
        online_in: [o, N] bool, which of them trained on the row (IN), from the membership
        matrix.
    """

    target: np.ndarray
    references: np.ndarray
    pop_target: Optional[np.ndarray] = None
    pop_references: Optional[np.ndarray] = None
    images: Optional[np.ndarray] = None
    pop_images: Optional[np.ndarray] = None
    online: Optional[np.ndarray] = None
    online_in: Optional[np.ndarray] = None


class ReferenceAttack(Attack):
    """An attack that recalibrates base query columns (`score_reference`); `uses_references`:
    it needs OUT reference models; `uses_population`: it needs population rows."""

    kind: ClassVar[AttackKind] = "reference"
    access = "gray-box"  # it reads the gray-box query columns of its bases
    uses_references: ClassVar[bool] = True
    uses_population: ClassVar[bool] = False

    @abstractmethod
    def score_reference(self, data: ReferenceData, seed: int) -> np.ndarray:
        """One base column recalibrated. `settings()` holds the attack's own parameters (the
        base's setting is added per column). -> [N, len(settings())] float64, higher = member."""
        ...

    def score_columns(self, data: ReferenceData, seed: int) -> np.ndarray:
        """Every base column at once: `data` with a trailing column axis (target [N, S],
        references [m, N, S], pop_target [Z, S], pop_references [m, Z, S], online [o, N, S];
        images and online_in have none).
        -> [N, S, len(settings())] float64. By default one `score_reference` per column."""

        def col(a: Optional[np.ndarray], i: int) -> Optional[np.ndarray]:
            return None if a is None else a[..., i]

        out = [
            self.score_reference(
                ReferenceData(
                    target=data.target[:, i],
                    references=data.references[..., i],
                    pop_target=col(data.pop_target, i),
                    pop_references=col(data.pop_references, i),
                    images=data.images,
                    pop_images=data.pop_images,
                    online=col(data.online, i),
                    online_in=data.online_in,
                ),
                seed,
            )
            for i in range(data.target.shape[1])
        ]
        return np.stack(out, axis=1)


def error_of(score: np.ndarray) -> np.ndarray:
    """The non-negative error a base score negates (score = -error). -> same shape."""
    err: np.ndarray = np.maximum(-np.asarray(score, dtype=np.float64), TINY_ERROR)
    return err


def statistic(score: np.ndarray, transform: str) -> np.ndarray:
    """The statistic the Gaussian fits see, higher = member: -log(error) for "log" (errors are
    positive and right-skewed; their log is close to Gaussian, as LiRA's logit scaling makes a
    confidence), the score itself for "none"."""
    if transform == "log":
        out: np.ndarray = -np.log(error_of(score))
        return out
    if transform == "none":
        return np.asarray(score, dtype=np.float64)
    raise ValueError(f"unknown transform {transform!r}; expected 'log' or 'none'")


# ------------------------------------------------------------------------------------- LiRA


def lira_offline(
    target: np.ndarray,
    out_refs: np.ndarray,
    per_example: bool,
    pop_residuals: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Offline LiRA's one-sided test: how far the target's statistic lies on the member side
    of the OUT references' Gaussian, (phi - mu_out(x)) / sigma_out.

    Args:
        target: [N] the target's statistic (higher = member). out_refs: [m, N] the OUT
            references' statistic on the same rows.
        per_example: sigma_out per row (needs m >= 2); else one global sigma: the pooled
            per-row spread of the references (m >= 2), or with one reference the spread of
            target - reference over the population rows (`pop_residuals`, [Z]), or 1.
            A global sigma rescales every row alike, so rank metrics do not depend on it.
    Returns: [N] float64 z-scores (Phi of them is the OUT CDF, the paper's p-value form).
    """
    out_refs = np.atleast_2d(np.asarray(out_refs, dtype=np.float64))
    m = out_refs.shape[0]
    if m < 1:
        raise ValueError("LiRA needs at least one reference model")
    mu = out_refs.mean(axis=0)
    if per_example:
        if m < 2:
            raise ValueError("a per-example variance needs at least two reference models")
        sd = out_refs.std(axis=0, ddof=1)
        sd = np.where(sd > 0, sd, _positive_mean(sd))
    else:
        sd = np.full_like(mu, _global_sd(out_refs, pop_residuals))
    z: np.ndarray = (np.asarray(target, dtype=np.float64) - mu) / sd
    return z


def lira_online(
    target: np.ndarray,
    in_refs: np.ndarray,
    in_mask: np.ndarray,
    out_refs: np.ndarray,
    out_mask: np.ndarray,
    per_example: bool,
) -> np.ndarray:
    """Online LiRA: log N(phi; mu_in, sigma_in^2) - log N(phi; mu_out, sigma_out^2) per row, the
    Gaussians fitted to the references that trained on the row (IN) and those that did not.

    Args:
        target: [N]. in_refs / out_refs: [m, N] statistics of every reference on every row;
            in_mask / out_mask: [m, N] bool, which entries are IN / OUT for that row (each row
            needs at least one of each). per_example: per-row variances (else global ones).
    Returns: [N] float64 log-likelihood ratios, higher = member.
    """
    phi = np.asarray(target, dtype=np.float64)
    mu_in, sd_in = _masked_gaussian(np.asarray(in_refs, np.float64), in_mask, per_example)
    mu_out, sd_out = _masked_gaussian(np.asarray(out_refs, np.float64), out_mask, per_example)
    llr: np.ndarray = _log_normal(phi, mu_in, sd_in) - _log_normal(phi, mu_out, sd_out)
    return llr


def _log_normal(x: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    out: np.ndarray = -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)
    return out


def _masked_gaussian(
    values: np.ndarray, mask: np.ndarray, per_example: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row mean and spread over the entries `mask` selects ([m, N] each)."""
    count = mask.sum(axis=0)
    if (count < 1).any():
        raise ValueError("online LiRA needs at least one IN and one OUT reference per row")
    mu = np.where(mask, values, 0.0).sum(axis=0) / count
    resid = np.where(mask, values - mu, 0.0)
    if per_example:
        if (count < 2).any():
            raise ValueError("a per-example variance needs two references per row and side")
        sd = np.sqrt((resid**2).sum(axis=0) / (count - 1))
        return mu, np.where(sd > 0, sd, _positive_mean(sd))
    dof = int((count - 1).sum())
    sd_global = float(np.sqrt((resid**2).sum() / dof)) if dof > 0 else 1.0
    return mu, np.full_like(mu, sd_global if sd_global > 0 else 1.0)


def _global_sd(out_refs: np.ndarray, pop_residuals: Optional[np.ndarray]) -> float:
    m = out_refs.shape[0]
    if m >= 2:
        sd = float(np.sqrt(out_refs.var(axis=0, ddof=1).mean()))
    elif pop_residuals is not None and len(pop_residuals) > 1:
        sd = float(np.std(pop_residuals, ddof=1))
    else:
        sd = 1.0
    return sd if sd > 0 else 1.0


def _positive_mean(sd: np.ndarray) -> float:
    pos = sd[sd > 0]
    return float(pos.mean()) if pos.size else 1.0


@ATTACKS.register("lira")
class LiRA(ReferenceAttack):
    """LiRA on every base statistic: offline against the target's regime-matched shadow models
    (all OUT for every audited row); with `online_models` also online, against the online
    draws' references (IN for half of the rows, OUT for the rest)."""

    name = "lira"

    def __init__(self, cfg: LiRAConfig | dict[str, Any], num_train_timesteps: int = 1000) -> None:
        self.cfg = cfg if isinstance(cfg, LiRAConfig) else LiRAConfig.model_validate(cfg)
        if self.cfg.variance == "per_example" and 0 < self.cfg.online_models < 4:
            raise ConfigError(
                f"attacks.lira.variance=per_example with online_models="
                f"{self.cfg.online_models} leaves a row one IN or one OUT reference, no spread; "
                "set online_models >= 4 or variance: auto"
            )

    def per_example(self, num_references: int) -> bool:
        v = self.cfg.variance
        return v == "per_example" or (v == "auto" and num_references >= self.cfg.per_example_min)

    def settings(self) -> list[dict[str, Any]]:
        own = {"variance": self.cfg.variance, "transform": self.cfg.transform}
        online = [{"mode": "online", **own}] if self.cfg.online_models else []
        return [{"mode": "offline", **own}, *online]

    def score_reference(self, data: ReferenceData, seed: int) -> np.ndarray:
        tr = self.cfg.transform
        refs = statistic(np.atleast_2d(data.references), tr)
        resid = None
        if data.pop_target is not None and data.pop_references is not None:
            pop_refs = statistic(np.atleast_2d(data.pop_references), tr)
            resid = statistic(data.pop_target, tr) - pop_refs.mean(axis=0)
        target = statistic(data.target, tr)
        out = [lira_offline(target, refs, self.per_example(len(refs)), resid)]
        if self.cfg.online_models:
            if data.online is None or data.online_in is None:
                raise ValueError("online LiRA needs the online references' scores and IN mask")
            online = statistic(np.atleast_2d(data.online), tr)
            inside = np.asarray(data.online_in, dtype=bool)
            # per-example needs two entries per row and side: half the references are IN
            per_example = self.per_example(len(online)) and int(inside.sum(0).min()) >= 2
            per_example &= int((~inside).sum(0).min()) >= 2
            out.append(lira_online(target, online, inside, online, ~inside, per_example))
        return np.stack(out, axis=1)


# ------------------------------------------------------------------------------------- RMIA


def likelihood(score: np.ndarray, temperature: np.ndarray) -> np.ndarray:
    """RMIA's Pr(x | model) for a diffusion statistic: exp(-error(x) / temperature(x)) in
    (0, 1], a Gibbs likelihood of the denoising error whose per-row temperature is the
    reference models' mean error on that row. (One temperature for all rows lets the hardest
    rows' near-zero likelihoods decide when errors span orders of magnitude, as they do across
    images.) score: [..., N] base scores; temperature: [N] > 0."""
    out: np.ndarray = np.exp(-error_of(score) / temperature)
    return out


def rmia_offline(
    p_target: np.ndarray,
    p_refs: np.ndarray,
    pz_target: np.ndarray,
    pz_refs: np.ndarray,
    gamma: float,
    a: float,
) -> np.ndarray:
    """RMIA's score with OUT references only (Zarifzadeh et al. 2024, eq. for the offline
    attack): Pr(x) = ((1 + a) mean_ref Pr(x | ref) + (1 - a)) / 2, ratio(x) = Pr(x | target) /
    Pr(x), LR(x, z) = ratio(x) / ratio(z), score(x) = the fraction of population rows z with
    LR(x, z) >= gamma.

    Args: p_target [N] and p_refs [m, N]: Pr(x | model) of the audited rows; pz_target [Z] and
        pz_refs [m, Z]: of the population rows. gamma > 0, a in [0, 1].
    Returns: [N] float64 in [0, 1], higher = member.
    """

    def ratio(p: np.ndarray, refs: np.ndarray) -> np.ndarray:
        prior = 0.5 * ((1.0 + a) * np.atleast_2d(refs).mean(axis=0) + (1.0 - a))
        out: np.ndarray = np.asarray(p, np.float64) / prior
        return out

    rx, rz = ratio(p_target, p_refs), ratio(pz_target, pz_refs)
    if rz.size == 0:
        raise ValueError("RMIA needs population rows z (rows no audit uses)")
    # fraction of z with rx / rz >= gamma  <=>  rz <= rx / gamma: a sorted search, O((N+Z) log Z)
    rz_sorted = np.sort(rz)
    counts = np.searchsorted(rz_sorted, rx / gamma, side="right")
    frac: np.ndarray = counts / rz.size
    return frac


@ATTACKS.register("rmia")
class RMIA(ReferenceAttack):
    """Offline RMIA on every base statistic; population rows z from the attacker's population."""

    name = "rmia"
    uses_population = True

    def __init__(self, cfg: RMIAConfig | dict[str, Any], num_train_timesteps: int = 1000) -> None:
        self.cfg = cfg if isinstance(cfg, RMIAConfig) else RMIAConfig.model_validate(cfg)

    def settings(self) -> list[dict[str, Any]]:
        return [{"mode": "offline", "gamma": self.cfg.gamma, "offline_a": self.cfg.offline_a}]

    def score_reference(self, data: ReferenceData, seed: int) -> np.ndarray:
        if data.pop_target is None or data.pop_references is None:
            raise ValueError("RMIA needs the target's and the references' population scores")
        refs, pop_refs = np.atleast_2d(data.references), np.atleast_2d(data.pop_references)
        temp_x, temp_z = error_of(refs).mean(axis=0), error_of(pop_refs).mean(axis=0)
        s = rmia_offline(
            likelihood(data.target, temp_x),
            likelihood(refs, temp_x),
            likelihood(data.pop_target, temp_z),
            likelihood(pop_refs, temp_z),
            self.cfg.gamma,
            self.cfg.offline_a,
        )
        return s[:, None]
