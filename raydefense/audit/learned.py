"""Learned attacks (a classifier over per-row features) and the router-aware attack's
recombination of DualMD's query columns.

Calibration-trained attacks cross-fit on the target's calibration part and score its test part;
shadow-trained ones learn the members vs held-out rows of the shadows of the target's regime."""

from __future__ import annotations

from typing import Any

import numpy as np

from raydefense.attacks.base import CalibrationTrainedAttack, LearnedAttack
from raydefense.audit.grid import resolve_attack
from raydefense.audit.scoring import feature_col, query_col
from raydefense.audit.targets import (
    adaptive_bases,
    audited_rows,
    build_attacks,
    schedule_of,
    shadow_rows,
    shadows_for,
)
from raydefense.config import ExperimentConfig
from raydefense.data.plan import MEMBER, TEST, Plan
from raydefense.defense.dualmd import timestep_owners
from raydefense.diffusion.backbones import data_shape
from raydefense.seeding import STREAM_QUALITY, derive_seed


def fit_learned(
    attack_name: str,
    cfg_dict: dict[str, Any],
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_x: list[np.ndarray],
    image_shape: tuple[int, int, int],
    cross_fit: bool = False,
) -> dict[str, Any]:
    """Fit one learned attack and score (a Ray task in production). Returns
    {"eval": [scores per eval matrix], "oof": out-of-fold scores of train_x (cross_fit) or
    None}."""
    cfg = ExperimentConfig.model_validate(cfg_dict)
    if "@" in attack_name:  # an attack sweep's grid point
        attack = resolve_attack(cfg, attack_name)
    else:
        attack = next(a for a in build_attacks(cfg) if a.name == attack_name)
    if not isinstance(attack, LearnedAttack):
        raise TypeError(f"{attack_name} is a {attack.kind} attack, not a learned one")
    # A sweep point (`gsa1@3`) seeds like its attack, so the base setting reproduces evaluate.
    seed = derive_seed(cfg.seed, STREAM_QUALITY, len(attack_name.split("@")[0]))
    if cross_fit:
        if not isinstance(attack, CalibrationTrainedAttack):
            raise TypeError(f"{attack_name} is not trained on a calibration part")
        oof, scores = attack.cross_fit_predict(
            train_x, train_y, eval_x, seed, image_shape=image_shape
        )
        return {"eval": scores, "oof": oof}
    return {
        "eval": attack.fit_predict(train_x, train_y, eval_x, seed, image_shape=image_shape),
        "oof": None,
    }


def learned_fit_args(
    cfg: ExperimentConfig,
    plan: Plan,
    target: str,
    name: str,
    attack: LearnedAttack,
    scored: dict[str, dict[str, np.ndarray]],
) -> tuple[Any, ...]:
    """The `fit_learned` arguments of one (target, learned attack): calibration-trained attacks
    cross-fit on the target's calibration part and score its test part; shadow-trained ones
    learn the members vs held-out rows of every shadow of the target's regime (`shadows_for`)
    and score the target's audited rows.
    `name` is the feature column's attack name (a sweep point's `<attack>@<i>`)."""
    f = scored[target][feature_col(name)]
    c, h, w = (int(x) for x in plan.images.shape[1:])
    shape = data_shape(cfg.model, (c, h, w))  # latent families' features are latent-shaped
    if attack.trains_on == "calibration":
        mask = audited_rows(plan, target)
        cal = plan.part[mask] != TEST
        member = (plan.split[mask] == MEMBER).astype(np.int64)
        return (name, cfg.model_dump(mode="json"), f[cal], member[cal], [f[~cal]], shape, True)
    xs, ys = [], []
    for m in shadows_for(cfg, plan, target):
        xs.append(scored[m][feature_col(name)])
        ys.append(plan.members_of(m)[shadow_rows(plan, m)].astype(np.int64))
    return (
        name,
        cfg.model_dump(mode="json"),
        np.concatenate(xs),
        np.concatenate(ys),
        [f],
        shape,
        False,
    )


def learned_scores(out: dict[str, Any], part: np.ndarray) -> np.ndarray:
    """A `fit_learned` result -> one score per audited row (calibration-trained: out-of-fold
    scores on the calibration part, held-out scores on the test part)."""
    if out["oof"] is None:
        return np.asarray(out["eval"][0])
    cal = part != TEST
    score = np.empty(len(part))
    score[cal], score[~cal] = out["oof"], out["eval"][0]
    return score


def adaptive_scores(
    cfg: ExperimentConfig, plan: Plan, attack: Any, columns: dict[str, np.ndarray], mask: np.ndarray
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """`dualmd_adaptive` over DualMD's scored query columns (`q:<base>:<i>`), for every base
    attack and combine rule: [(params, scores over the audited rows `mask`)]."""

    owners = timestep_owners(schedule_of(cfg), cfg.sampling.num_steps, plan.num_shards).tolist()
    member = plan.split[mask] == MEMBER
    calibration = plan.part[mask] != TEST
    out = []
    for base, settings in adaptive_bases(cfg, plan.num_shards).items():
        cols = np.stack([columns[query_col(base, i)] for i in range(len(settings))], axis=1)
        out += attack.combine(
            base,
            settings,
            cols,
            owners,
            plan.num_shards,
            member,
            calibration,
            derive_seed(cfg.seed, STREAM_QUALITY, len(attack.name)),
        )
    return out
