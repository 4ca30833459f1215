"""Every model and target name, in one place: what each is, how names are built and parsed, and
the access an attacker has to each target.

Models (each trained once, each a row of the membership matrix unless it is a student):
`baseline` (all members), `teacher_k` (shard k of K), `student` (distilled from the teachers),
and the attacker's shadow models per shadow draw j (`SHADOW_ROLES`): `shadow_j` like the
baseline, `shadow_j_teacher_k` like a teacher, `shadow_j_student` like the student.
Targets (what the audit attacks): the baseline, each teacher, `dualmd` (the teachers behind a
step router) and the student.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Optional

from raydefense.config import ExperimentConfig

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


def shadow_name(j: int, role: str = "baseline", shard: int = 0) -> str:
    """Shadow draw 0..S-1 and role -> model name: shadow_{j+1} (trained like the baseline),
    shadow_{j+1}_teacher_{shard+1} (like a teacher) or shadow_{j+1}_student (like the student)."""
    if role == "baseline":
        return f"shadow_{j + 1}"
    if role == "teacher":
        return f"shadow_{j + 1}_{teacher_name(shard)}"
    if role == "student":
        return f"shadow_{j + 1}_{STUDENT}"
    raise ValueError(f"unknown shadow role {role!r}; expected one of {SHADOW_ROLES}")


def shadow_router(j: int) -> str:
    """Shadow draw j's DualMD: a step router over that draw's shadow teachers (never trained;
    the reference model of a reference-calibrated attack on `dualmd`)."""
    return f"shadow_{j + 1}_{DUALMD}"


def router_teachers(model: str, teachers: list[str]) -> Optional[list[str]]:
    """The teachers behind a step router: `dualmd` -> `teachers` (the plan's), shadow_j_dualmd
    -> shadow draw j's teachers (as many); None for a single model."""
    if model == DUALMD:
        return list(teachers)
    shadow = parse_shadow(model)
    if shadow is not None and shadow[1] == DUALMD:
        return [shadow_name(shadow[0], "teacher", k) for k in range(len(teachers))]
    return None


def parse_shadow(model: str) -> Optional[tuple[int, str, int]]:
    """A shadow model name -> (draw j, role, shard k) (k = -1 unless a teacher; role "dualmd"
    for a draw's router, `shadow_router`); None for a target's name."""
    parts = model.split("_")
    if parts[0] != "shadow" or len(parts) < 2 or not parts[1].isdigit():
        return None
    j = int(parts[1]) - 1
    if len(parts) == 2:
        return j, "baseline", -1
    if parts[2:] == [STUDENT]:
        return j, "student", -1
    if parts[2:] == [DUALMD]:
        return j, DUALMD, -1
    if len(parts) == 4 and parts[2] == "teacher" and parts[3].isdigit():
        return j, "teacher", int(parts[3]) - 1
    raise KeyError(f"unknown shadow model {model!r}")


def is_student(model: str) -> bool:
    """The target student or a shadow student (both learn from soft targets)."""
    shadow = parse_shadow(model)
    return model == STUDENT or (shadow is not None and shadow[1] == "student")


def training_role(model: str) -> str:
    """The `train.<role>` settings a model trains with: baseline, teacher or student (a shadow
    model takes the role it imitates)."""
    shadow = parse_shadow(model)
    if shadow is not None:
        return shadow[1]
    if model == STUDENT:
        return "student"
    if is_teacher(model):
        return "teacher"
    if model == BASELINE:
        return "baseline"
    raise ValueError(f"unknown model {model!r}")


def model_names(
    num_shards: int, num_shadows: int = 0, shadow_roles: tuple[str, ...] = ("baseline",)
) -> list[str]:
    """Rows of the membership matrix: the undefended baseline, one teacher per shard, then per
    shadow draw the attacker's models trained on its rows (disjoint from every target row): one
    like the baseline and/or K like the teachers (the latter also when a shadow student is
    distilled from them). Students are not rows: they learn from soft targets."""
    shadows = []
    for j in range(num_shadows):
        if "baseline" in shadow_roles:
            shadows.append(shadow_name(j))
        if {"teacher", "student"} & set(shadow_roles):
            shadows += [shadow_name(j, "teacher", k) for k in range(num_shards)]
    return [BASELINE] + [teacher_name(k) for k in range(num_shards)] + shadows


def model_index(model: str, num_shards: int) -> int:
    """The index that seeds a model's training batches: baseline 0, teacher_k k, the student
    K + 1, shadow_j 100 + j - 1 (independent of how many shadows exist), shadow_j's teachers and
    student 1000 + 100 (j - 1) + their target counterpart's index."""
    if model == BASELINE:
        return 0
    shard = teacher_shard(model)
    if shard is not None:
        return shard + 1
    shadow = parse_shadow(model)
    if shadow is not None:
        j, role, k = shadow
        if role == "baseline":
            return SHADOW_MODEL_INDEX0 + j
        return SHADOW_REGIME_INDEX0 + 100 * j + (k + 1 if role == "teacher" else num_shards + 1)
    if model == STUDENT:
        return num_shards + 1
    raise KeyError(f"unknown model {model!r}")


def all_targets(num_shards: int) -> list[str]:
    """Every target the audit can attack, in report order."""
    return [BASELINE, *[teacher_name(k) for k in range(num_shards)], DUALMD, STUDENT]


def target_access(cfg: ExperimentConfig, target: str) -> str:
    """white-box (parameters and gradients) for single models; DualMD's configured access."""
    return cfg.attacks.dualmd_access if target == DUALMD else "white-box"


def shadow_role(target: str) -> str:
    """The training regime a target's regime-matched shadows imitate (SHADOW_ROLES): DualMD's
    eps queries reach its teachers, so its shadows are teacher-like."""
    if target in (BASELINE, STUDENT):
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
