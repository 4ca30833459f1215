"""The denoising-error profile: every target's eps-MSE per timestep on its test members and
test non-members (`raydefense profile`).

Every query attack (loss, PIA, SimA, SecMI) thresholds a model's denoising error at chosen
timesteps, so the profile is the quantity they feed on, without their choices of timestep,
norm or orientation. For the DistillMD student it separates the two errors its membership gap
is made of:

- on a member the student was fitted to a soft target, the prediction of the teacher(s) that
  never saw that image, so its error there tracks the *labelling teachers'* error on it;
- on a non-member its error is its *own* generalisation error.

A student the error attacks cannot tell apart needs the two equal at every timestep. Where the
student generalises worse than its teachers, members look "easier" (the usual direction);
where it generalises better, they look harder (a flipped attack finds that just as well).

Noise is seeded per (seed, row, draw) and shared by every timestep and every model, so the
columns are paired comparisons. Pure PyTorch and NumPy: no Ray, no MLflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from raydefense import layout
from raydefense.attacks.metrics import auc
from raydefense.data.plan import MEMBER, NONMEMBER, TEST, Plan
from raydefense.data.pool import to_model_range
from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError
from raydefense.roster import STUDENT, teacher_shard
from raydefense.seeding import STREAM_PROFILE

DEFAULT_TIMESTEPS = (10, 25, 50, 100, 150, 200, 300, 500)
PROFILE_JSON = f"{layout.REPORT}/timestep_profile.json"
PROFILE_MD = f"{layout.REPORT}/timestep_profile.md"


def seeded_noise(
    row_ids: Sequence[int], shape: tuple[int, ...], seed: int, draw: int
) -> np.ndarray:
    """[R, *shape] float32 standard normal, one stream per (seed, row, draw)."""
    return np.stack(
        [
            np.random.default_rng([seed, int(r), STREAM_PROFILE, draw]).standard_normal(
                shape, dtype=np.float32
            )
            for r in row_ids
        ]
    )


@torch.no_grad()
def timestep_predictions(
    eps: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    noise: torch.Tensor,
    timesteps: Sequence[int],
    batch_size: int = 256,
) -> torch.Tensor:
    """eps(x_t, t) for every draw, timestep and row.

    x0: [R, C, H, W] in [-1, 1]; noise: [D, R, C, H, W] (the same for every timestep and every
    model). -> [D, len(timesteps), R, C, H, W] float32.
    """
    draws, rows = noise.shape[0], x0.shape[0]
    out = torch.empty((draws, len(timesteps)) + tuple(x0.shape), dtype=torch.float32)
    for d in range(draws):
        for i, t in enumerate(timesteps):
            for lo in range(0, rows, batch_size):
                n = noise[d, lo : lo + batch_size]
                tt = torch.full((n.shape[0],), int(t), dtype=torch.long)
                x_t = schedule.q_sample(x0[lo : lo + batch_size].float(), tt, n)
                out[d, i, lo : lo + batch_size] = eps(x_t, tt).float()
    return out


def errors(pred: torch.Tensor, noise: torch.Tensor) -> np.ndarray:
    """Per-row eps-MSE averaged over draws: pred [D, T, R, ...], noise [D, R, ...] -> [T, R]."""
    sq = (pred - noise[:, None]).pow(2).flatten(3).mean(3)  # [D, T, R]
    return sq.mean(0).numpy()


def labeller_predictions(
    teacher_preds: Mapping[str, torch.Tensor], shard: np.ndarray
) -> torch.Tensor:
    """What the student was fitted to on each member row: the mean prediction of the teachers
    that did not train on it (distill.teacher_assignment=mean; with K = 2 the other teacher).

    teacher_preds: teacher_k -> [D, T, R, ...]; shard: [R], the row's shard 0..K-1 (members
    only). -> [D, T, R, ...].
    """
    names = sorted(teacher_preds, key=lambda m: teacher_shard(m) or 0)
    stacked = torch.stack([teacher_preds[m] for m in names])  # [K, D, T, R, ...]
    own = torch.as_tensor(np.asarray(shard), dtype=torch.long)
    keep = torch.ones(len(names), len(own), dtype=torch.bool)
    keep[own, torch.arange(len(own))] = False  # [K, R]: teacher k did not see row r
    w = keep.float() / keep.float().sum(0, keepdim=True)
    w = w.view(len(names), 1, 1, len(own), *([1] * (stacked.dim() - 4)))
    return (stacked * w).sum(0)


def _target_line(err: np.ndarray, member: np.ndarray, nonmember: np.ndarray) -> dict[str, Any]:
    """err [T, R] over the profile's rows -> per-timestep member/non-member means and the
    single-timestep loss attack's AUC (score -err, members high; 0.5 = no signal, below 0.5 =
    members harder)."""
    labels = np.r_[np.ones(member.sum()), np.zeros(nonmember.sum())]
    return {
        "member": [float(e[member].mean()) for e in err],
        "nonmember": [float(e[nonmember].mean()) for e in err],
        "auc": [float(auc(-np.r_[e[member], e[nonmember]], labels)) for e in err],
    }


def profile(
    models: Mapping[str, EpsModel],
    schedule: NoiseSchedule,
    plan: Plan,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, Any]:
    """The profile of `models` (baseline, teacher_k, student; any subset) on the plan's test
    rows. -> {"timesteps", "draws", "n_members", "n_nonmembers", "targets": {name: line}, and
    with a student and its teachers "student_decomposition": {"student_on_members",
    "labellers_on_members", "student_on_nonmembers", "teachers_on_nonmembers"}} (means per
    timestep; a member is a row the target trained on, a non-member a non-member row)."""
    if not timesteps or any(not 0 <= int(t) < schedule.num_train_timesteps for t in timesteps):
        raise ConfigError(
            f"profile timesteps {list(timesteps)} must be non-empty and in "
            f"[0, {schedule.num_train_timesteps})"
        )
    test = plan.part == TEST
    rows = test & ((plan.split == MEMBER) | (plan.split == NONMEMBER))
    ids = plan.row_id[rows]
    x0 = torch.from_numpy(to_model_range(plan.images[rows]))
    noise = torch.from_numpy(
        np.stack([seeded_noise(ids, tuple(x0.shape[1:]), seed, d) for d in range(draws)])
    )
    is_member = plan.split[rows] == MEMBER
    nonmember = ~is_member
    preds: dict[str, torch.Tensor] = {}
    out: dict[str, Any] = {
        "timesteps": [int(t) for t in timesteps],
        "draws": int(draws),
        "n_members": int(is_member.sum()),
        "n_nonmembers": int(nonmember.sum()),
        "targets": {},
    }
    for name, model in models.items():
        preds[name] = timestep_predictions(model, schedule, x0, noise, timesteps, batch_size)
        k = teacher_shard(name)
        trained = is_member if k is None else is_member & (plan.shard[rows] == k)
        out["targets"][name] = _target_line(errors(preds[name], noise), trained, nonmember)
    teachers = {m: p for m, p in preds.items() if teacher_shard(m) is not None}
    if STUDENT in preds and len(teachers) >= 2:
        labels = errors(labeller_predictions(teachers, plan.shard[rows]), noise)
        student = errors(preds[STUDENT], noise)
        teacher_nm = np.mean([errors(p, noise)[:, nonmember] for p in teachers.values()], 0)
        out["student_decomposition"] = {
            "student_on_members": student[:, is_member].mean(1).tolist(),
            "labellers_on_members": labels[:, is_member].mean(1).tolist(),
            "student_on_nonmembers": student[:, nonmember].mean(1).tolist(),
            "teachers_on_nonmembers": teacher_nm.mean(1).tolist(),
        }
    return out


def parse_timesteps(text: str) -> list[int]:
    """ "10,50,100" -> [10, 50, 100]; one line on anything else."""
    try:
        ts = [int(p) for p in str(text).replace(" ", ",").split(",") if p]
    except ValueError:
        raise ConfigError(
            f"--timesteps {text!r} is not a list of integers; e.g. --timesteps 10,50,100"
        ) from None
    if not ts:
        raise ConfigError("--timesteps is empty; e.g. --timesteps 10,50,100")
    return ts
