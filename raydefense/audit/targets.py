"""Targets x attacks: which attacks run against which target, on which rows, with which shadow
models; the router-aware attack's bases.

Targets and their access: `baseline`, `teacher_k` and the `student` are white-box; `dualmd` is
gray-box (eps queries through its step router, an extension beyond the paper) or black-box
(`attacks.dualmd_access`). `baseline`, `student` and `dualmd` are audited on all members vs the
non-members, each `teacher_k` on its own shard vs the non-members.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from raydefense.attacks import ATTACKS
from raydefense.attacks.adaptive import (
    DualMDAdaptive,
    check_router,
    settings_by_teacher,
)
from raydefense.attacks.base import AccessError, Attack, check_access
from raydefense.config import ExperimentConfig
from raydefense.data.plan import MEMBER, NONMEMBER, Plan
from raydefense.defense.dualmd import timestep_owners
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError
from raydefense.roster import (
    BASELINE,
    DUALMD,
    SHADOW_ROLES,
    STUDENT,
    all_targets,
    online_name,
    online_router,
    router_teachers,
    shadow_name,
    shadow_role,
    target_access,
    teacher_name,
    teacher_shard,
)

ADAPTIVE = DualMDAdaptive.name


def audit_targets(cfg: ExperimentConfig) -> list[str]:
    """An audit's targets (`audit.models`): the imported roles in report order, with `dualmd`
    after the teachers when all K are imported.

    Raises:
        ConfigError: teachers that are not exactly teacher_1..teacher_K (K = data.num_shards).
    """
    roles = set(cfg.audit.models)
    k = cfg.data.num_shards
    teachers = sorted(r for r in roles if teacher_shard(r) is not None)
    want = [teacher_name(s) for s in range(k)]
    if teachers and sorted(teachers) != sorted(want):
        raise ConfigError(
            f"audit: teachers {', '.join(teachers)} given, but data.num_shards={k} needs "
            f"{', '.join(want)}: import all K teachers (DualMD alternates them) or set "
            "data.num_shards to their number"
        )
    out = [r for r in (BASELINE, *want) if r in roles]
    if teachers:
        out.append(DUALMD)
    return out + ([STUDENT] if STUDENT in roles else [])


def default_targets(cfg: ExperimentConfig, num_shards: int) -> list[str]:
    """The targets audited when `attacks.targets` is unset: every target of the pipeline, or an
    audit's imported ones. Pairs a target's access cannot serve are skipped, not errors."""
    if cfg.audit.models:
        return audit_targets(cfg)
    return all_targets(num_shards, cfg.train.variant_targets())


def build_attacks(cfg: ExperimentConfig) -> list[Attack]:
    """Instantiate the enabled attacks from their config sections.

    Raises:
        UnknownComponentError: an unknown attack name (the message lists the valid ones).
        ConfigError: an attack without a config section, or shadow models missing.
    """
    out = []
    for name in cfg.attacks.enabled:
        cls = ATTACKS.get(name)
        section = cfg.attacks.section(name)
        if section is None:
            raise ConfigError(f"attack {name!r} has no config section attacks.{name}")
        attack = cls(section, cfg.model.num_train_timesteps)
        if attack.text_only and not cfg.model.conditional:
            raise ConfigError(
                f"attack {name!r} needs captions: it attacks text-to-image models "
                "(model.kind=sd); drop it from attacks.enabled"
            )
        if attack.trains_on == "shadow" and cfg.attacks.shadow.num_models < 1:
            raise ConfigError(
                f"attack {name!r} learns from shadow models; set "
                "attacks.shadow.num_models >= 1 or drop it from attacks.enabled"
            )
        if attack.uses_references and cfg.attacks.shadow.num_models < 1:
            raise ConfigError(
                f"attack {name!r} compares the target with reference models and "
                "attacks.shadow.num_models=0 trains none; set attacks.shadow.num_models >= 1 "
                "or drop it from attacks.enabled"
            )
        if attack.uses_population and cfg.attacks.shadow.num_models < 1:
            raise ConfigError(
                f"attack {name!r} needs population rows (the held-out half of a shadow draw, "
                "never audited) and attacks.shadow.num_models=0 draws none; set "
                "attacks.shadow.num_models >= 1 or drop it from attacks.enabled"
            )
        out.append(attack)
    return out


def uses_shadow_models(attack: type[Attack] | Attack) -> bool:
    """The attack learns from shadow models or compares with them as references."""
    return attack.trains_on == "shadow" or attack.uses_references


def shadows_needed(cfg: ExperimentConfig) -> int:
    """Number of shadow draws prepare must plan: 0 unless an enabled attack learns from shadow
    models, compares with reference models or reads population rows (a draw's held-out half)."""
    uses = any(
        uses_shadow_models(a) or a.uses_population for a in map(ATTACKS.get, cfg.attacks.enabled)
    )
    return cfg.attacks.shadow.num_models if uses else 0


def shadow_roles(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The shadow regimes prepare must plan: with `attacks.shadow.regime` "baseline" only the
    baseline-like shadow; with "matched" the roles of the targets a shadow-trained or reference
    attack audits (every target unless `attacks.targets` is set). () when no shadow model is
    needed (a population-only attack draws rows but trains no shadow model)."""
    if not shadows_needed(cfg) or not any(
        uses_shadow_models(ATTACKS.get(n)) for n in cfg.attacks.enabled
    ):
        return ()
    if cfg.attacks.shadow.regime == "baseline":
        return ("baseline",)
    return _audited_roles(cfg, [a for a in build_attacks(cfg) if uses_shadow_models(a)])


def _audited_roles(cfg: ExperimentConfig, attacks: list[Attack]) -> tuple[str, ...]:
    """The training regimes (`shadow_role`, in SHADOW_ROLES order, then the variants' in
    config order) of the targets any of `attacks` can audit (every target unless
    `attacks.targets` is set)."""
    roles = set()
    for t in cfg.attacks.targets or default_targets(cfg, cfg.data.num_shards):
        for a in attacks:
            try:
                check_access(a, t, target_access(cfg, t))
            except AccessError:
                continue
            roles.add(shadow_role(t))
    order = (*SHADOW_ROLES, *cfg.train.variant_targets())
    return tuple(r for r in order if r in roles)


def online_needed(cfg: ExperimentConfig) -> int:
    """Number of online draws prepare must plan: `attacks.lira.online_models` when LiRA is
    enabled, else 0."""
    return cfg.attacks.lira.online_models if "lira" in cfg.attacks.enabled else 0


def online_roles(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The regimes online LiRA's references imitate: the roles (`shadow_role`) of the targets
    LiRA audits (every target unless `attacks.targets` is set). () when online LiRA is off."""
    if not online_needed(cfg):
        return ()
    return _audited_roles(cfg, [a for a in build_attacks(cfg) if a.name == "lira"])


def online_students(cfg: ExperimentConfig, plan: Plan) -> list[str]:
    """The online students the distill stage must distil (one per online draw)."""
    if "student" not in online_roles(cfg):
        return []
    return [online_name(j, "student") for j in range(plan.num_online_draws)]


def online_references(cfg: ExperimentConfig, plan: Plan, target: str) -> list[str]:
    """Online LiRA's references of `target`, each IN for about half of its audited rows: per
    online draw the model of the target's regime (every teacher of the draw for a teacher, the
    draw's router for `dualmd`). [] when online LiRA is off.

    Raises:
        ConfigError: the plan lacks them (prepared without online draws or for other targets).
    """
    if not online_needed(cfg):
        return []
    role = shadow_role(target)
    out: list[str] = []
    for j in range(plan.num_online_draws):
        if target == DUALMD:
            out.append(online_router(j))
        elif role == "teacher":
            out += [online_name(j, "teacher", k) for k in range(plan.num_shards)]
        else:
            out.append(online_name(j, role))
    trained = set(plan.online_models) | set(online_students(cfg, plan))
    behind = [router_teachers(m, plan.teachers) or [m] for m in out]  # a router: its teachers
    needed = [m for models in behind for m in models if m not in trained]
    if needed or not out:
        raise ConfigError(
            f"online LiRA on {target!r} needs {cfg.attacks.lira.online_models} online draws "
            f"with {role}-like models and the plan has "
            f"{'none' if not out else 'not ' + ', '.join(needed)}; rerun prepare with this "
            "config (raydefense run --force prepare)"
        )
    return out


def shadow_students(cfg: ExperimentConfig, plan: Plan) -> list[str]:
    """The shadow students the distill stage must distil (one per draw with the student role)."""
    if "student" not in shadow_roles(cfg):
        return []
    return [shadow_name(j, "student") for j in range(plan.num_shadow_draws)]


def shadows_for(cfg: ExperimentConfig, plan: Plan, target: str) -> list[str]:
    """The shadow models a shadow-trained attack on `target` learns from: per draw, the shadows
    of the target's regime (`shadow_role`; every teacher-like shadow of the draw for a teacher,
    whose K shards are all that regime) or, with regime "baseline", the baseline-like one.

    Raises:
        ConfigError: the plan lacks them (prepared for other targets or another regime).
    """
    role = "baseline" if cfg.attacks.shadow.regime == "baseline" else shadow_role(target)
    out = []
    for j in range(plan.num_shadow_draws):
        if role == "teacher":
            out += [shadow_name(j, "teacher", k) for k in range(plan.num_shards)]
        else:
            out.append(shadow_name(j, role))
    available = set(plan.shadows) | set(shadow_students(cfg, plan))
    missing = [m for m in out if m not in available]
    if missing or not out:
        raise ConfigError(
            f"the plan has no {role}-like shadow models for target {target!r} "
            f"(missing: {', '.join(missing) or 'all'}); rerun prepare with this "
            "config (raydefense run --force prepare)"
        )
    return out


def shadow_rows(plan: Plan, model: str) -> np.ndarray:
    """Bool [R]: the rows a shadow-trained attack learns on from `model`: its members and its
    draw's held-out rows."""
    rows: np.ndarray = plan.members_of(model) | plan.shadow_nonmembers(model)
    return rows


@dataclass
class AttackPlan:
    """Per target, the attacks that run; and the (target, attack, reason) pairs refused."""

    targets: list[str]
    attacks: dict[str, list[Attack]]
    skipped: list[dict[str, str]] = field(default_factory=list)


def plan_attacks(cfg: ExperimentConfig, plan: Plan) -> AttackPlan:
    """Match attacks to targets by access level.

    With `attacks.targets` unset every target is audited and pairs its access cannot serve are
    skipped (and reported); naming targets explicitly makes such a pair an error.

    Raises:
        AccessError: an explicitly requested target cannot serve an enabled attack.
        ConfigError: an unknown target name.
    """
    check_explicit_targets(cfg)
    explicit = cfg.attacks.targets
    targets = list(explicit) if explicit is not None else default_targets(cfg, plan.num_shards)
    attacks = build_attacks(cfg)
    out = AttackPlan(targets=targets, attacks={})
    for t in targets:
        out.attacks[t] = []
        for a in attacks:
            try:
                check_access(a, t, target_access(cfg, t))
                check_router(a, t)
            except AccessError as e:  # explicit targets were checked above
                out.skipped.append({"target": t, "attack": a.name, "reason": str(e).split(";")[0]})
                continue
            out.attacks[t].append(a)
    return out


def check_explicit_targets(cfg: ExperimentConfig) -> None:
    """Fail fast (before any stage runs) on an explicit target that is unknown or cannot serve
    an enabled attack; the same rules as plan_attacks, without a plan."""
    if cfg.attacks.targets is None:
        return
    known = all_targets(cfg.data.num_shards, cfg.train.variant_targets())
    attacks = build_attacks(cfg)
    for t in cfg.attacks.targets:
        if t not in known:
            raise ConfigError(
                f"unknown target {t!r} in attacks.targets; choose from: {', '.join(known)}"
            )
        for a in attacks:
            check_access(a, t, target_access(cfg, t))
            check_router(a, t)


def adaptive_bases(
    cfg: ExperimentConfig, num_shards: Optional[int] = None
) -> dict[str, list[dict[str, Any]]]:
    """The base attacks of `dualmd_adaptive` ({name: settings}): the configured
    `attacks.dualmd_adaptive.bases`, or (None) every enabled query attack with a single-timestep
    setting served by each of DualMD's teachers. Empty when the attack is not enabled or DualMD
    is audited black-box only.

    Raises:
        ConfigError: a named base is not an enabled query attack or misses a teacher, or no
            enabled query attack can serve as a base.
    """
    if ADAPTIVE not in cfg.attacks.enabled or cfg.attacks.dualmd_access == "black-box":
        return {}

    k = num_shards or cfg.data.num_shards
    owners = timestep_owners(schedule_of(cfg), cfg.sampling.num_steps, k).tolist()
    query = {a.name: a.settings() for a in build_attacks(cfg) if a.kind == "query"}

    def covers(settings: list[dict[str, Any]]) -> bool:
        return all(settings_by_teacher(settings, owners, k).values())

    named = cfg.attacks.dualmd_adaptive.bases
    if named is not None:
        for b in named:
            if b not in query:
                raise ConfigError(
                    f"attacks.dualmd_adaptive.bases names {b!r}, which is not an "
                    f"enabled query attack; enabled query attacks: "
                    f"{', '.join(query) or 'none'}"
                )
            if not covers(query[b]):
                raise ConfigError(
                    f"attacks.dualmd_adaptive.bases: {b!r} has no timestep served "
                    f"by every teacher under sampling.num_steps="
                    f"{cfg.sampling.num_steps}; give it more timesteps"
                )
        return {b: query[b] for b in named}
    out = {b: st for b, st in query.items() if covers(st)}
    if not out:
        raise ConfigError(
            "attack 'dualmd_adaptive' needs a query attack that asks eps about one "
            "timestep served by each teacher, and none of the enabled ones "
            f"({', '.join(query) or 'none'}) does; enable sima or pia (their "
            "timestep sweeps cover every teacher)"
        )
    return out


def audited_rows(plan: Plan, target: str) -> np.ndarray:
    """Bool [R]: the member rows of `target`'s training set plus every non-member row."""
    nonmember = plan.split == NONMEMBER
    rows: np.ndarray
    if target in (STUDENT, DUALMD, BASELINE):
        rows = (plan.split == MEMBER) | nonmember
        return rows
    if target not in plan.models:
        raise KeyError(f"unknown target {target!r}")
    rows = plan.rows_of(target) | nonmember
    return rows


def training_rows(plan: Plan, target: str) -> np.ndarray:
    """Bool [R]: the images a target learned from (dualmd: its teachers' shards; the student:
    the members its soft targets were computed on)."""
    if target in (STUDENT, DUALMD):
        members: np.ndarray = plan.split == MEMBER
        return members
    return plan.rows_of(target)


def schedule_of(cfg: ExperimentConfig) -> NoiseSchedule:
    return NoiseSchedule.of(cfg.model)
