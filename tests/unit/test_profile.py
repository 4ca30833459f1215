"""The denoising-error profile (`raydefense profile`): paired noise, the per-target lines, the
student's labelling teachers, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raydefense.audit.profile import (
    errors,
    labeller_predictions,
    parse_timesteps,
    profile,
    seeded_noise,
    timestep_predictions,
)
from raydefense.data.plan import MEMBER, TEST, make_plan
from raydefense.data.pool import DATASETS, to_model_range
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError, RaydefenseError
from raydefense.report.profile_tables import profile_markdown
from raydefense.run.profile_command import run_profile
from raydefense.storage import Storage

from conftest import tiny_config

SCHEDULE = NoiseSchedule(1000, 1e-4, 0.02, "linear")


class Memorizer:
    """eps(x_t, t) that knows a bank of clean images: it inverts x_t against the bank image
    nearest to x_t / sqrt(abar_t), so its error is ~0 on the bank at small t and large off it."""

    def __init__(self, bank: np.ndarray) -> None:
        self.bank = torch.from_numpy(to_model_range(bank)).float()

    def __call__(self, x_t, t, cond=None):
        ab = SCHEDULE.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        guess = x_t / ab.sqrt()
        d = torch.cdist(guess.flatten(1), self.bank.flatten(1))
        x0 = self.bank[d.argmin(1)]
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()


class Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, x_t, t, cond=None):
        return torch.full_like(x_t, self.value)


@pytest.fixture
def plan(tmp_path: Path):
    cfg = tiny_config(tmp_path)
    return make_plan(DATASETS.get("digits")(cfg.data), cfg.data, cfg.seed)


def test_noise_is_seeded_per_row_and_draw():
    a = seeded_noise([3, 7], (1, 2, 2), seed=0, draw=0)
    assert a.shape == (2, 1, 2, 2) and a.dtype == np.float32
    assert np.array_equal(a[1], seeded_noise([7], (1, 2, 2), 0, 0)[0])  # not order-dependent
    assert not np.array_equal(a, seeded_noise([3, 7], (1, 2, 2), 0, 1))
    assert not np.array_equal(a, seeded_noise([3, 7], (1, 2, 2), 1, 0))


def test_a_zero_predictor_errs_by_the_noise_itself():
    x0 = torch.zeros(5, 1, 4, 4)
    noise = torch.from_numpy(np.stack([seeded_noise(range(5), (1, 4, 4), 0, d) for d in range(3)]))
    pred = timestep_predictions(Constant(0.0), SCHEDULE, x0, noise, [10, 500], batch_size=2)
    assert pred.shape == (3, 2, 5, 1, 4, 4)
    err = errors(pred, noise)
    assert err.shape == (2, 5)
    expected = noise.pow(2).flatten(2).mean(2).mean(0).numpy()
    np.testing.assert_allclose(err[0], expected, rtol=1e-6)
    np.testing.assert_allclose(err[1], expected, rtol=1e-6)  # same noise at every t


def test_labellers_are_the_teachers_that_did_not_see_the_row():
    shape = (1, 1, 3, 1, 1, 1)  # [D, T, R, C, H, W]
    two = {"teacher_1": torch.full(shape, 1.0), "teacher_2": torch.full(shape, 2.0)}
    out = labeller_predictions(two, np.array([0, 1, 0]))
    assert out.flatten().tolist() == [2.0, 1.0, 2.0]
    three = {f"teacher_{k + 1}": torch.full(shape, v) for k, v in enumerate([1.0, 2.0, 4.0])}
    out = labeller_predictions(three, np.array([0, 1, 2]))
    assert out.flatten().tolist() == [3.0, 2.5, 1.5]  # the mean of the other two


def test_a_memorizer_shows_its_members_and_the_student_gap_is_taken_apart(plan):
    members = plan.split == MEMBER
    shard0 = members & (plan.shard == 0)
    shard1 = members & (plan.shard == 1)
    models = {
        "baseline": Memorizer(plan.images[members]),
        "teacher_1": Memorizer(plan.images[shard0]),
        "teacher_2": Memorizer(plan.images[shard1]),
        "student": Constant(0.0),  # no membership signal at all
    }
    prof = profile(models, SCHEDULE, plan, timesteps=[5, 900], draws=2, seed=0)
    test = plan.part == TEST
    assert prof["n_members"] == int((test & members).sum())
    base = prof["targets"]["baseline"]
    assert base["member"][0] < 1e-3 < base["nonmember"][0]
    assert base["auc"][0] == 1.0  # a perfect memorizer at small t
    t1 = prof["targets"]["teacher_1"]
    assert t1["auc"][0] == 1.0  # its own shard's members against the non-members
    student = prof["targets"]["student"]
    assert student["member"][0] == pytest.approx(student["nonmember"][0], rel=0.2)
    dec = prof["student_decomposition"]
    # each member's labeller is the teacher that did not memorise it: no better than chance
    assert dec["labellers_on_members"][0] > 10 * base["member"][0]
    assert len(dec["student_on_members"]) == 2
    text = profile_markdown(prof)
    assert "| teacher_2 |" in text and "labelling teachers on those members" in text
    assert "distilled on other inputs" not in text
    public = {"members": False, "synthetic_per_teacher": 0, "public": True}
    text = profile_markdown({**prof, "student_inputs": public})
    assert "(its members were never its inputs; public rows, labelled by every teacher)" in text


def test_bad_timesteps_are_one_line(plan):
    with pytest.raises(ConfigError, match=r"must be non-empty and in \[0, 1000\)"):
        profile({"baseline": Constant(0.0)}, SCHEDULE, plan, timesteps=[1000])
    with pytest.raises(ConfigError, match="not a list of integers"):
        parse_timesteps("10,abc")
    with pytest.raises(ConfigError, match="is empty"):
        parse_timesteps(" , ")
    assert parse_timesteps("10, 50,100") == [10, 50, 100]


def test_profile_before_a_run_names_the_fix(tmp_path):
    cfg = tiny_config(tmp_path)
    storage = Storage(cfg.storage.root, cfg.experiment)
    with pytest.raises(RaydefenseError, match="no trained baseline, teacher_1, teacher_2, "):
        run_profile(cfg, [10], 1, storage)
    assert not storage.exists("report/timestep_profile.json")
