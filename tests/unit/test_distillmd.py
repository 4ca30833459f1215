"""DistillMD soft targets: the teacher-assignment invariant, per-row determinism, fresh-noise draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydefense.defense.distillmd import (SoftTargetLabeller, auto_draws, draw_t_noise,
                                          labelling_teachers)
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import PrivacyInvariantError


class ConstTeacher:
    """eps(x, t) = a constant that identifies the teacher."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, x, t):
        return torch.full_like(x, self.value)


SCHED = NoiseSchedule()
TEACHERS = {"teacher_1": ConstTeacher(1.0), "teacher_2": ConstTeacher(2.0)}
OWNERS = {10: frozenset({"teacher_1"}), 11: frozenset({"teacher_2"}), 12: frozenset({"teacher_1"})}


def batch(rows):
    shard = {10: 0, 11: 1, 12: 0}
    return {"row_id": np.array(rows), "shard": np.array([shard[r] for r in rows]),
            "image": np.stack([np.full((1, 2, 2), r / 100, np.float32) for r in rows])}


def test_each_row_is_labelled_only_by_the_teacher_that_never_saw_it():
    lab = SoftTargetLabeller(TEACHERS, OWNERS, SCHED, draws=3, seed=0)
    out = lab(batch([10, 11, 12]))
    assert len(out["row_id"]) == 9
    for r, target, who in zip(out["row_id"], out["target"], out["teachers"]):
        expected = 2.0 if r in (10, 12) else 1.0
        assert np.all(target == expected)
        assert who == ("teacher_2" if r in (10, 12) else "teacher_1")


def test_k_shards_use_the_mean_of_the_other_teachers():
    teachers = {**TEACHERS, "teacher_3": ConstTeacher(4.0)}
    lab = SoftTargetLabeller(teachers, OWNERS, SCHED, draws=1, seed=0)
    out = lab(batch([10]))
    assert np.allclose(out["target"], 3.0)  # mean of teacher_2 (2) and teacher_3 (4)
    assert labelling_teachers(frozenset({"teacher_2"}), ["teacher_1", "teacher_2", "teacher_3"]) \
        == ["teacher_1", "teacher_3"]


def test_violations_raise():
    bad = {10: frozenset({"teacher_1", "teacher_2"})}
    with pytest.raises(PrivacyInvariantError):
        SoftTargetLabeller(TEACHERS, bad, SCHED, draws=1, seed=0)(batch([10]))
    with pytest.raises(PrivacyInvariantError, match="not a member"):
        SoftTargetLabeller(TEACHERS, {}, SCHED, draws=1, seed=0)(batch([10]))


def test_draws_are_seeded_per_row_and_draw():
    lab = SoftTargetLabeller(TEACHERS, OWNERS, SCHED, draws=4, seed=7)
    a, b = lab(batch([10, 11])), lab(batch([11, 10]))
    for key in ("t", "x_t", "target"):
        # the same (row, draw) gives byte-identical output whatever the batch order
        ia = {(r, d): i for i, (r, d) in enumerate(zip(a["row_id"], a["draw"]))}
        for j, (r, d) in enumerate(zip(b["row_id"], b["draw"])):
            assert np.array_equal(np.asarray(a[key][ia[(r, d)]]), np.asarray(b[key][j]))
    # x_t really is q_sample(x0, t, noise) with the drawn (t, noise)
    t, noise = draw_t_noise(7, 10, 0, 1000, (1, 2, 2))
    x0 = torch.full((1, 1, 2, 2), 0.10)
    expect = SCHED.q_sample(x0, torch.tensor([t]), torch.from_numpy(noise)[None])
    assert a["t"][0] == t and np.allclose(a["x_t"][0], expect[0].numpy())
    assert len(set(a["t"][:4].tolist())) > 1  # draws differ


def test_auto_draws_cover_every_student_step_with_fresh_noise():
    assert auto_draws(steps=4000, batch_size=64, num_members=256) == 1000
    assert auto_draws(steps=10, batch_size=3, num_members=7) == 5  # ceil(30 / 7)
