"""Every model and target name, in one place: what each is, how names are built and parsed, and
the access an attacker has to each target.

Models (each trained once, each a row of the membership matrix unless it is a student):
`baseline` (all members), `teacher_k` (shard k of K), `student` (distilled from the teachers),
and the attacker's shadow models per shadow draw j (`SHADOW_ROLES`): `shadow_j` like the
baseline, `shadow_j_teacher_k` like a teacher, `shadow_j_student` like the student. Online
LiRA's reference models per online draw j have the same roles under the prefix `online`
(`online_j`, `online_j_teacher_k`, `online_j_student`, the router `online_j_dualmd`): they train
on a random half of the audited rows, shadows on rows no audit scores.
Targets (what the audit attacks): the baseline, each teacher, `dualmd` (the teachers behind a
step router) and the student, and one `baseline_<name>` per `train.variants` entry: a defense
trained like the baseline (its rows, batches and initial weights) with other settings (DP-SGD,
augmentation, weight decay, ...). A variant's role is its target name; its shadow and online
models are `shadow_j_baseline_<name>` and `online_j_baseline_<name>`, on their draw's rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Optional

from raydefense.config import VARIANT_PREFIX, ExperimentConfig

BASELINE = "baseline"
STUDENT = "student"
DUALMD = "dualmd"  # the one target with a step router (gray-box through it, or black-box)
SHADOW_MODEL_INDEX0 = 100  # shadow_j trains with model_index 100 + j (seeds apart from targets)
# shadow_j's teachers and student: 1000 + 100 (j - 1) + the target's index (teacher_k k, student
# K + 1), so every shadow model draws its own batches and adding one leaves the others unchanged.
SHADOW_REGIME_INDEX0 = 1000
# The training regimes a shadow model can imitate: the baseline's (all of a draw's members), a
# teacher's (one of K shards of them) and the student's (distilled from the draw's K teachers).
SHADOW_ROLES = ("baseline", "teacher", "student")
SHADOW, ONLINE = "shadow", "online"  # the two kinds of draw (name prefixes)
# online_j's models: 50000 + 100 (j - 1) + their target counterpart's index (baseline 0).
ONLINE_INDEX0 = 50_000


def is_variant(role: str) -> bool:
    """A `train.variants` role (and target): baseline_<name>."""
    return role.startswith(VARIANT_PREFIX) and len(role) > len(VARIANT_PREFIX)


def base_role(role: str) -> str:
    """The role whose rows and batch streams a role's models use: "baseline" for a variant."""
    return BASELINE if is_variant(role) else role


def teacher_name(shard: int) -> str:
    """Shard index 0..K-1 -> model name teacher_1..teacher_K."""
    return f"teacher_{shard + 1}"


def teacher_shard(model: str) -> Optional[int]:
    """teacher_k -> its shard index k - 1; None for any other name."""
    parts = model.split("_")
    if len(parts) == 2 and parts[0] == "teacher" and parts[1].isdigit():
        return int(parts[1]) - 1
    return None


def is_teacher(model: str) -> bool:
    return teacher_shard(model) is not None


def draw_name(prefix: str, j: int, role: str = "baseline", shard: int = 0) -> str:
    """A draw's model: prefix (SHADOW or ONLINE), draw 0..S-1 and role -> {prefix}_{j+1}
    (trained like the baseline), {prefix}_{j+1}_teacher_{shard+1} (like a teacher),
    {prefix}_{j+1}_student (like the student) or {prefix}_{j+1}_dualmd (the step router over
    the draw's teachers, never trained); a variant's role baseline_<name> ->
    {prefix}_{j+1}_baseline_<name>."""
    if prefix not in (SHADOW, ONLINE):
        raise ValueError(f"unknown draw kind {prefix!r}; expected {SHADOW!r} or {ONLINE!r}")
    if role == "baseline":
        return f"{prefix}_{j + 1}"
    if is_variant(role):
        return f"{prefix}_{j + 1}_{role}"
    if role == "teacher":
        return f"{prefix}_{j + 1}_{teacher_name(shard)}"
    if role in (STUDENT, DUALMD):
        return f"{prefix}_{j + 1}_{role}"
    raise ValueError(f"unknown shadow role {role!r}; expected one of {SHADOW_ROLES}")


def shadow_name(j: int, role: str = "baseline", shard: int = 0) -> str:
    """Shadow draw 0..S-1 and role -> model name: shadow_{j+1} (trained like the baseline),
    shadow_{j+1}_teacher_{shard+1} (like a teacher) or shadow_{j+1}_student (like the student)."""
    if role == DUALMD:
        raise ValueError(f"unknown shadow role {role!r}; expected one of {SHADOW_ROLES}")
    return draw_name(SHADOW, j, role, shard)


def online_name(j: int, role: str = "baseline", shard: int = 0) -> str:
    """Online draw j's reference model of a role (`draw_name` with the prefix `online`)."""
    return draw_name(ONLINE, j, role, shard)


def shadow_router(j: int) -> str:
    """Shadow draw j's DualMD: a step router over that draw's shadow teachers (never trained;
    the reference model of a reference-calibrated attack on `dualmd`)."""
    return draw_name(SHADOW, j, DUALMD)


def online_router(j: int) -> str:
    """Online draw j's DualMD: a step router over that draw's teachers."""
    return draw_name(ONLINE, j, DUALMD)


def router_teachers(model: str, teachers: list[str]) -> Optional[list[str]]:
    """The teachers behind a step router: `dualmd` -> `teachers` (the plan's), shadow_j_dualmd
    / online_j_dualmd -> that draw's teachers (as many); None for a single model."""
    if model == DUALMD:
        return list(teachers)
    draw = parse_draw(model)
    if draw is not None and draw[2] == DUALMD:
        return [draw_name(draw[0], draw[1], "teacher", k) for k in range(len(teachers))]
    return None


def parse_draw(model: str) -> Optional[tuple[str, int, str, int]]:
    """A shadow or online model name -> (kind SHADOW/ONLINE, draw j, role, shard k) (k = -1
    unless a teacher; role "dualmd" for a draw's router, baseline_<name> for a variant's);
    None for a target's name."""
    parts = model.split("_")
    if parts[0] not in (SHADOW, ONLINE) or len(parts) < 2 or not parts[1].isdigit():
        return None
    kind, j = parts[0], int(parts[1]) - 1
    if len(parts) == 2:
        return kind, j, "baseline", -1
    if parts[2:] == [STUDENT]:
        return kind, j, "student", -1
    if parts[2:] == [DUALMD]:
        return kind, j, DUALMD, -1
    if is_variant("_".join(parts[2:])):
        return kind, j, "_".join(parts[2:]), -1
    if len(parts) == 4 and parts[2] == "teacher" and parts[3].isdigit():
        return kind, j, "teacher", int(parts[3]) - 1
    raise KeyError(f"unknown {kind} model {model!r}")


def parse_shadow(model: str) -> Optional[tuple[int, str, int]]:
    """A shadow model name -> (draw j, role, shard k) (k = -1 unless a teacher; role "dualmd"
    for a draw's router, `shadow_router`); None for any other name (online ones included)."""
    draw = parse_draw(model)
    return None if draw is None or draw[0] != SHADOW else draw[1:]


def parse_online(model: str) -> Optional[tuple[int, str, int]]:
    """An online reference model's name -> (draw j, role, shard k); None for any other."""
    draw = parse_draw(model)
    return None if draw is None or draw[0] != ONLINE else draw[1:]


def training_role(model: str) -> str:
    """The `train.<role>` settings a model trains with: baseline, teacher, student or a
    variant's baseline_<name> (`TrainConfig.for_role`; a shadow model or an online reference
    takes the role it imitates)."""
    draw = parse_draw(model)
    if draw is not None:
        return draw[2]
    if model == STUDENT:
        return "student"
    if is_teacher(model):
        return "teacher"
    if model == BASELINE or is_variant(model):
        return model
    raise ValueError(f"unknown model {model!r}")


def model_names(
    num_shards: int,
    num_shadows: int = 0,
    shadow_roles: tuple[str, ...] = ("baseline",),
    num_online: int = 0,
    online_roles: tuple[str, ...] = (),
    variants: tuple[str, ...] = (),
) -> list[str]:
    """Rows of the membership matrix: the undefended baseline, one teacher per shard, then per
    shadow draw the attacker's models trained on its rows (disjoint from every target row): one
    like the baseline and/or K like the teachers (the latter also when a shadow student is
    distilled from them); then the same per online draw for its `online_roles`; then the
    `variants` (baseline_<name> targets) and, per draw, the models of the variant roles among
    the draws' roles (after every other row, so a plan without variants is unchanged).
    Students are not rows: they learn from soft targets."""

    def draws(prefix: str, n: int, roles: tuple[str, ...]) -> list[str]:
        out = []
        for j in range(n):
            if "baseline" in roles:
                out.append(draw_name(prefix, j))
            if {"teacher", "student"} & set(roles):
                out += [draw_name(prefix, j, "teacher", k) for k in range(num_shards)]
        return out

    def variant_draws(prefix: str, n: int, roles: tuple[str, ...]) -> list[str]:
        return [draw_name(prefix, j, r) for j in range(n) for r in roles if is_variant(r)]

    return (
        [BASELINE]
        + [teacher_name(k) for k in range(num_shards)]
        + draws(SHADOW, num_shadows, shadow_roles)
        + draws(ONLINE, num_online, online_roles)
        + list(variants)
        + variant_draws(SHADOW, num_shadows, shadow_roles)
        + variant_draws(ONLINE, num_online, online_roles)
    )


def model_index(model: str, num_shards: int) -> int:
    """The index that seeds a model's training batches: baseline 0, teacher_k k, the student
    K + 1, shadow_j 100 + j - 1 (independent of how many shadows exist), shadow_j's teachers and
    student 1000 + 100 (j - 1) + their target counterpart's index, online_j's models
    50000 + 100 (j - 1) + their counterpart's index. A variant's models take their baseline
    counterpart's index: the same initial weights and batches, so a defense's difference from
    the baseline is its settings alone (a paired comparison)."""
    if model == BASELINE or is_variant(model):
        return 0
    shard = teacher_shard(model)
    if shard is not None:
        return shard + 1
    draw = parse_draw(model)
    if draw is not None:
        kind, j, role, k = draw
        role = base_role(role)
        own = {"baseline": 0, "teacher": k + 1}.get(role, num_shards + 1)
        if kind == ONLINE:
            return ONLINE_INDEX0 + 100 * j + own
        if role == "baseline":
            return SHADOW_MODEL_INDEX0 + j
        return SHADOW_REGIME_INDEX0 + 100 * j + own
    if model == STUDENT:
        return num_shards + 1
    raise KeyError(f"unknown model {model!r}")


def all_targets(num_shards: int, variants: Iterable[str] = ()) -> list[str]:
    """Every target the audit can attack, in report order (`variants`: the baseline_<name>
    targets of `train.variants`, after the baseline)."""
    return [BASELINE, *variants, *[teacher_name(k) for k in range(num_shards)], DUALMD, STUDENT]


def target_access(cfg: ExperimentConfig, target: str) -> str:
    """white-box (parameters and gradients) for single models; DualMD's configured access."""
    return cfg.attacks.dualmd_access if target == DUALMD else "white-box"


def shadow_role(target: str) -> str:
    """The training regime a target's regime-matched shadows imitate (SHADOW_ROLES): DualMD's
    eps queries reach its teachers, so its shadows are teacher-like; a variant's shadows are
    trained like it."""
    if target in (BASELINE, STUDENT) or is_variant(target):
        return target
    return "teacher"


_TARGET_GROUPS: tuple[str, ...] = (BASELINE, "teacher", DUALMD, STUDENT)


def _natural_key(text: str) -> tuple[Any, ...]:
    """Splits digits out so that "teacher_10" sorts after "teacher_2"."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text))


def target_order_key(target: str) -> tuple[int, tuple[Any, ...]]:
    """Sort key for targets: baseline, teacher_1, teacher_2, ... (natural), dualmd*, student, rest.

    Prefix matching keeps variants such as "dualmd_graybox" next to "dualmd".
    """
    name = str(target)
    for rank, group in enumerate(_TARGET_GROUPS):
        if (
            name == group
            or name.startswith(group + "_")
            or (group == "teacher" and re.fullmatch(r"teacher\d+", name))
        ):
            return rank, _natural_key(name)
    return len(_TARGET_GROUPS), _natural_key(name)


def sort_targets(targets: Iterable[str]) -> list[str]:
    """Unique targets in report order (see `target_order_key`)."""
    return sorted(dict.fromkeys(targets), key=target_order_key)
