"""Reference-calibrated attacks in the audit: which reference models and rows each target's
LiRA / RMIA / quantile attack reads, the scoring jobs that produce their columns, and the
recalibrated scores.

References are the target's regime-matched shadow models (`references_for`): shadow baselines
for the baseline, every shadow teacher for a teacher, each draw's shadow student for the
student, and for DualMD each draw's router over its shadow teachers (`shadow_j_dualmd`). Every
reference is OUT for every audited row: `check_references` proves it from the membership matrix
before any scoring. The population (`Plan.population`): rows held out by every shadow draw, no
audit scores them and no model trains on them.

Online LiRA (`attacks.lira.online_models`) adds the online draws' references
(`online_references`): trained like the target on a random half of the audited rows, so IN for
some rows and OUT for the others, which the membership matrix records (`online_membership`).

A reference job scores its model on every audited row and the population with the base query
attacks (the same seeded noise per (row, t) as the target's queries); a target's population job
scores it on the population rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from raydefense.attacks.base import QueryAttack
from raydefense.attacks.lira_rmia import LiRA, ReferenceAttack, ReferenceData
from raydefense.attacks.quantile import QuantileRegression
from raydefense.audit.scoring import ScoreJob, query_col
from raydefense.audit.targets import (
    audited_rows,
    build_attacks,
    online_references,
    shadows_for,
)
from raydefense.config import ExperimentConfig
from raydefense.data.plan import MEMBER, NONMEMBER, Plan
from raydefense.data.pool import to_model_range
from raydefense.errors import ConfigError, SplitOverlapError
from raydefense.roster import DUALMD, router_teachers, shadow_router
from raydefense.seeding import STREAM_QUALITY, derive_seed

POPULATION = "population"
REFERENCE = "reference"
MIN_POPULATION = 8  # fewer population rows make RMIA's fractions and the regressors meaningless


def job_key(model: str, kind: str) -> str:
    """The name of a model's population or reference scoring job."""
    return f"{model}@{kind}"


def base_attacks(cfg: ExperimentConfig, attack: ReferenceAttack) -> dict[str, list[dict[str, Any]]]:
    """The base query attacks a reference attack recalibrates, {name: settings}: its `bases`,
    or every enabled query attack that asks eps(x_t, t) directly.

    Raises:
        ConfigError: a named base is not such an enabled attack, or there is none.
    """
    plain = {a.name: a.settings() for a in build_attacks(cfg) if isinstance(a, QueryAttack)}
    named = getattr(cfg.attacks.section(attack.name), "bases", None)
    if named is None:
        if not plain:
            raise ConfigError(
                f"attack {attack.name!r} recalibrates query attacks and none is enabled; "
                "enable loss, secmi_stat, pia, pian or sima"
            )
        return plain
    unknown = [b for b in named if b not in plain]
    if unknown:
        raise ConfigError(
            f"attacks.{attack.name}.bases names {', '.join(map(repr, unknown))}, not an enabled "
            f"query attack that asks eps(x_t, t); choose from: {', '.join(plain) or 'none'}"
        )
    return {b: plain[b] for b in named}


def references_for(cfg: ExperimentConfig, plan: Plan, target: str) -> list[str]:
    """The reference models of `target` (see the module docstring)."""
    if target == DUALMD and cfg.attacks.shadow.regime == "matched":
        return [shadow_router(j) for j in range(plan.num_shadow_draws)]
    return shadows_for(cfg, plan, target)


def reference_members(plan: Plan, reference: str) -> np.ndarray:
    """Bool [R]: the rows a reference model trained on (a router: its teachers' union)."""
    routed = router_teachers(reference, plan.teachers)
    if routed is not None:
        rows: np.ndarray = np.any([plan.members_of(m) for m in routed], axis=0)
        return rows
    return plan.members_of(reference)


def online_membership(plan: Plan, target: str, references: Sequence[str]) -> np.ndarray:
    """Bool [o, N]: which online reference trained on which audited row of `target` (rows in
    plan order), read from the membership matrix."""
    audited = audited_rows(plan, target)
    if not references:
        return np.zeros((0, int(audited.sum())), dtype=bool)
    return np.stack([reference_members(plan, r)[audited] for r in references])


def check_references(
    cfg: ExperimentConfig, plan: Plan, target: str, references: Sequence[str]
) -> None:
    """Invariant 8 for reference attacks: none trained on an audited row of `target`, and the
    population is disjoint from every model's rows.

    Raises:
        ConfigError: no reference model. SplitOverlapError: a reference trained on audited rows.
    """
    if not references:
        raise ConfigError(
            f"reference attacks on {target!r} have no reference model; set "
            "attacks.shadow.num_models >= 1 and rerun prepare (raydefense run --force prepare)"
        )
    audited = audited_rows(plan, target)
    for r in references:
        overlap = int((reference_members(plan, r) & audited).sum())
        if overlap:
            raise SplitOverlapError(
                f"reference model {r} trained on {overlap} rows that the audit of {target!r} "
                "scores, so it is not OUT for them; rerun prepare so shadow draws exclude "
                "the targets' rows (raydefense run --force prepare)"
            )


def reference_jobs(
    cfg: ExperimentConfig, plan: Plan, served: dict[str, list[ReferenceAttack]]
) -> list[ScoreJob]:
    """Per target with reference attacks (`served`), its population job; per reference model,
    one job over every audited row and the population (shared by the targets it references).
    Each job runs the union of the bases those attacks recalibrate."""
    population = plan.population()
    audited = (plan.split == MEMBER) | (plan.split == NONMEMBER)
    needs = sorted({a.name for attacks in served.values() for a in attacks if a.uses_population})
    if needs and population.sum() < MIN_POPULATION:
        raise ConfigError(
            f"attacks {', '.join(needs)} need population rows (held out by every shadow draw) "
            f"and the plan has {int(population.sum())}: the draws overlap; lower "
            "attacks.shadow.num_models or attacks.shadow.members and rerun prepare "
            "(raydefense run --force prepare)"
        )
    jobs: list[ScoreJob] = []
    ref_bases: dict[str, set[str]] = {}
    for t, attacks in served.items():
        if not attacks:
            continue
        bases = sorted({b for a in attacks for b in base_attacks(cfg, a)})
        if population.any():
            jobs.append(ScoreJob(t, population, bases, False, job_key(t, POPULATION)))
        if any(a.uses_references for a in attacks):
            refs = references_for(cfg, plan, t)
            check_references(cfg, plan, t, refs)
            for r in refs:
                ref_bases.setdefault(r, set()).update(bases)
        lira = [a for a in attacks if isinstance(a, LiRA)]
        for r in online_references(cfg, plan, t) if lira else []:
            ref_bases.setdefault(r, set()).update(base_attacks(cfg, lira[0]))
    for r, names in ref_bases.items():
        jobs.append(ScoreJob(r, audited | population, sorted(names), False, job_key(r, REFERENCE)))
    return jobs


def reference_inputs(
    cfg: ExperimentConfig,
    plan: Plan,
    target: str,
    attack: ReferenceAttack,
    scored: dict[str, dict[str, np.ndarray]],
) -> tuple[list[dict[str, Any]], ReferenceData]:
    """What one reference attack on `target` reads: the base settings (one per column, the
    base's name under "base") and every column stacked (`ReferenceAttack.score_columns`), rows
    in plan order (the audited rows of `target`; the population)."""
    mask = audited_rows(plan, target)
    population = plan.population()
    own, pop = scored[target], scored.get(job_key(target, POPULATION))
    refs = references_for(cfg, plan, target) if attack.uses_references else []
    # A reference job covers every audited row and the population: pick this target's rows.
    ref_rows = (plan.split == MEMBER) | (plan.split == NONMEMBER) | population
    at_audited, at_population = mask[ref_rows], population[ref_rows]
    columns = [
        ({"base": base, **params}, query_col(base, i))
        for base, settings in base_attacks(cfg, attack).items()
        for i, params in enumerate(settings)
    ]
    cols = [c for _, c in columns]

    def stack(job: dict[str, np.ndarray], rows: Any = slice(None)) -> np.ndarray:
        return np.stack([job[c][rows] for c in cols], axis=-1).astype(np.float64)

    ref_jobs = [scored[job_key(r, REFERENCE)] for r in refs]
    data = ReferenceData(
        target=stack(own),
        references=(
            np.stack([stack(j, at_audited) for j in ref_jobs])
            if refs
            else np.zeros((0, int(mask.sum()), len(cols)))
        ),
        pop_target=stack(pop) if pop is not None else None,
        pop_references=(
            np.stack([stack(j, at_population) for j in ref_jobs])
            if refs and pop is not None
            else None
        ),
    )
    online = online_references(cfg, plan, target) if isinstance(attack, LiRA) else []
    if online:
        data.online = np.stack([stack(scored[job_key(r, REFERENCE)], at_audited) for r in online])
        data.online_in = online_membership(plan, target, online)
    if isinstance(attack, QuantileRegression):
        data.images = to_model_range(plan.images[mask])
        data.pop_images = to_model_range(plan.images[population])
    return [p for p, _ in columns], data


def score_reference_attack(
    attack_name: str, cfg_dict: dict[str, Any], data: ReferenceData
) -> np.ndarray:
    """One reference attack over all its columns (a Ray task in production): ->
    [N, S, len(settings())]."""
    cfg = ExperimentConfig.model_validate(cfg_dict)
    attack = next(a for a in build_attacks(cfg) if a.name == attack_name)
    if not isinstance(attack, ReferenceAttack):
        raise TypeError(f"{attack_name} is a {attack.kind} attack, not a reference one")
    return attack.score_columns(data, derive_seed(cfg.seed, STREAM_QUALITY, len(attack_name)))


def reference_rows(
    attack: ReferenceAttack,
    base_settings: list[dict[str, Any]],
    scores: np.ndarray,
    num_refs: int,
    num_online: int = 0,
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """[(params, scores [N])] per base column and own setting of a `score_reference_attack`
    result; params: the base, its setting, the attack's own, and the reference count (online
    LiRA: its online references)."""
    out = []
    for i, base in enumerate(base_settings):
        for j, params in enumerate(attack.settings()):
            full = {**base, **params}
            if attack.uses_references:
                full["references"] = num_online if params.get("mode") == "online" else num_refs
            out.append((full, scores[:, i, j]))
    return out
