"""The router-aware gray-box attack on DualMD (`dualmd_adaptive`): public routing, per-teacher
selection on calibration, the combinations, and the errors that guard it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydefense.attacks.adaptive import (
    DualMDAdaptive,
    contrast,
    served_timestep,
    settings_by_teacher,
)
from raydefense.attacks.base import AccessError, Query
from raydefense.attacks.metrics import auc
from raydefense.audit.targets import adaptive_bases, check_explicit_targets
from raydefense.defense.dualmd import DualMDStepRouter, timestep_owners
from raydefense.diffusion.sampling import sampler_timesteps
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError

from conftest import tiny_config


def test_routing_is_public_and_teacher_1_runs_the_first_step() -> None:
    schedule = NoiseSchedule(1000)
    owners = timestep_owners(schedule, 50, 2)
    grid = sampler_timesteps(schedule, 50)  # 980, 960, ..., 0
    assert [int(owners[t]) for t in grid[:4]] == [0, 1, 0, 1]
    router = DualMDStepRouter([lambda x, t: x, lambda x, t: x], schedule, 50)
    assert torch.equal(router.owner, owners)
    # The digits run's SimA t=50 and t=60 are served by different teachers.
    assert {int(owners[50]), int(owners[60])} == {0, 1}


def test_served_timestep_and_grouping() -> None:
    assert served_timestep({"t": 30, "p": 4.0}) == 30
    assert served_timestep({"timesteps": [100], "draws": 10}) == 100
    assert served_timestep({"timesteps": [20, 100]}) is None  # spans several: may mix teachers
    assert served_timestep({"t_sec": 100, "k": 10}) is None
    owners = [0, 0, 1, 1]
    groups = settings_by_teacher([{"t": 0}, {"t": 3}, {"t_sec": 2}, {"t": 1}], owners, 2)
    assert groups == {0: [0, 3], 1: [1]}


def _two_teacher_scores(n: int = 400, seed: int = 0):
    """Rows: half members (shard 1 | shard 2), half non-members; column 0 (t=0, teacher 1) sees
    shard-1 members, column 1 (t=2, teacher 2) sees shard-2 members."""
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    shard = np.where(member, np.arange(n) % 2, -1)
    cols = rng.normal(size=(n, 2))
    cols[shard == 0, 0] += 4.0
    cols[shard == 1, 1] += 4.0
    calibration = rng.permutation(n) < n // 2
    return cols, member, calibration


def test_each_teacher_alone_is_half_the_story_and_the_combination_sees_every_member() -> None:
    cols, member, cal = _two_teacher_scores()
    settings, owners = [{"t": 0, "p": 4.0}, {"t": 2, "p": 4.0}], [0, 0, 1, 1]
    test = ~cal
    single = [auc(cols[test, i], member[test]) for i in range(2)]
    assert all(0.65 < a < 0.85 for a in single)  # one shard's members: docs/results.md
    out = DualMDAdaptive({}).combine("sima", settings, cols, owners, 2, member, cal, seed=0)
    got = {p["combine"]: (p, s) for p, s in out}
    assert set(got) == {"max", "learned", "contrast"}
    assert got["max"][0] == {"base": "sima", "combine": "max", "timesteps": [0, 2]}
    for rule in ("max", "learned", "contrast"):
        assert auc(got[rule][1][test], member[test]) > 0.95, rule
        assert auc(got[rule][1][cal], member[cal]) > 0.9, rule  # out-of-fold, still strong
    # The max is standardised on calibration non-members: they sit near zero per teacher.
    ref = cal & ~member
    assert abs(np.median(got["max"][1][ref])) < 1.0


def test_the_setting_per_teacher_is_chosen_on_calibration_not_test() -> None:
    cols, member, cal = _two_teacher_scores(seed=1)
    # A third column (t=1, teacher 1) that separates shard-1 members on the TEST part only.
    rng = np.random.default_rng(2)
    extra = rng.normal(size=len(member))
    extra[(np.arange(len(member)) % 2 == 0) & member & ~cal] += 8.0
    cols = np.column_stack([cols[:, 0], extra, cols[:, 1]])
    settings = [{"t": 0}, {"t": 1}, {"t": 2}]
    out = DualMDAdaptive({"combine": ["max"]}).combine(
        "sima", settings, cols, [0, 0, 1], 2, member, cal, seed=0
    )
    assert out[0][0]["timesteps"] == [0, 2]  # the calibration-best t for teacher 1, not t=1


def test_inverted_columns_are_flipped_on_calibration() -> None:
    cols, member, cal = _two_teacher_scores(seed=3)
    out = DualMDAdaptive({"combine": ["max"]}).combine(
        "pian", [{"t": 0}, {"t": 2}], -cols, [0, 0, 1], 2, member, cal, seed=0
    )
    assert auc(out[0][1][~cal], member[~cal]) > 0.97


def test_a_teacher_without_settings_is_an_error() -> None:
    cols, member, cal = _two_teacher_scores()
    with pytest.raises(ValueError, match=r"no setting whose timestep teacher\(s\) \[2\] serve"):
        DualMDAdaptive({}).combine(
            "loss",
            [{"timesteps": [0]}, {"timesteps": [1]}],
            cols,
            [0, 0, 1],
            2,
            member,
            cal,
            seed=0,
        )


def test_bases_are_the_enabled_query_attacks_that_reach_every_teacher(tmp_path) -> None:
    cfg = tiny_config(
        tmp_path,
        **{
            "attacks.enabled": "[loss, secmi_stat, sima, dualmd_adaptive]",
            "attacks.sima.timesteps": "[0, 250]",
        },
    )
    # sampling.num_steps=4: grid 750, 500, 250, 0 -> teachers 1, 2, 1, 2.
    assert set(adaptive_bases(cfg)) == {"sima"}  # loss t=100 and SecMI reach one / mix
    black = tiny_config(
        tmp_path,
        **{
            "attacks.enabled": "[loss, dualmd_adaptive, blackbox_nn]",
            "attacks.dualmd_access": "black-box",
        },
    )
    assert adaptive_bases(black) == {}


@pytest.mark.parametrize(
    "sets, match",
    [
        (
            {"attacks.enabled": "[loss, secmi_stat, dualmd_adaptive]"},
            "needs a query attack that asks eps about one timestep served by each teacher",
        ),
        (
            {
                "attacks.enabled": "[loss, sima, dualmd_adaptive]",
                "attacks.sima.timesteps": "[0, 250]",
                "attacks.dualmd_adaptive.bases": "[pia]",
            },
            "bases names 'pia', which is not an enabled query attack",
        ),
        (
            {
                "attacks.enabled": "[sima, dualmd_adaptive]",
                "attacks.sima.timesteps": "[0]",
                "attacks.dualmd_adaptive.bases": "[sima]",
            },
            "'sima' has no timestep served by every teacher",
        ),
    ],
)
def test_bad_adaptive_configs_are_one_clear_line(tmp_path, sets, match) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        adaptive_bases(tiny_config(tmp_path, **sets))
    assert "\n" not in str(info.value)


def test_asking_for_it_on_a_target_without_a_router_is_an_error(tmp_path) -> None:
    cfg = tiny_config(
        tmp_path,
        **{
            "attacks.enabled": "[sima, dualmd_adaptive]",
            "attacks.sima.timesteps": "[0, 250]",
            "attacks.targets": "[dualmd, student]",
        },
    )
    with pytest.raises(AccessError, match="target 'student' is a single model with no router"):
        check_explicit_targets(cfg)
    check_explicit_targets(
        tiny_config(
            tmp_path,
            **{
                "attacks.enabled": "[sima, dualmd_adaptive]",
                "attacks.sima.timesteps": "[0, 250]",
                "attacks.targets": "[dualmd]",
            },
        )
    )


def test_contrast_cancels_a_difficulty_shared_by_both_teachers() -> None:
    """A row's difficulty moves both teachers' scores alike; only its own teacher sees its
    membership: max hides the members under the difficulty, the contrast recovers them."""
    rng = np.random.default_rng(4)
    n = 600
    member = np.arange(n) < n // 2
    shard = np.where(member, np.arange(n) % 2, -1)
    difficulty = rng.normal(0.0, 3.0, n)
    cols = difficulty[:, None] + rng.normal(0.0, 0.3, (n, 2))
    cols[shard == 0, 0] += 1.0
    cols[shard == 1, 1] += 1.0
    cal = rng.permutation(n) < n // 2
    out = DualMDAdaptive({"combine": ["max", "contrast"]}).combine(
        "sima", [{"t": 0}, {"t": 2}], cols, [0, 0, 1, 1], 2, member, cal, seed=0
    )
    got = {p["combine"]: s for p, s in out}
    assert auc(got["max"][~cal], member[~cal]) < 0.65
    assert auc(got["contrast"][~cal], member[~cal]) > 0.9
    z = np.array([[1.0, -1.0], [0.5, 2.5]])
    assert contrast(z) == pytest.approx([2.0, 2.0])  # |z_1 - z_2| for two teachers


def test_calibration_scores_are_out_of_fold() -> None:
    """A column that separates calibration rows by chance only: in-sample it would look strong
    on calibration; cross-fitted, its calibration AUC stays near chance."""
    rng = np.random.default_rng(5)
    n = 200
    member = np.arange(n) < n // 2
    cal = rng.permutation(n) < n // 2
    cols = rng.normal(size=(n, 40))  # 20 settings per teacher, all noise
    settings = [{"t": t} for t in range(40)]
    owners = [0] * 20 + [1] * 20
    out = DualMDAdaptive({"combine": ["max"]}).combine(
        "sima", settings, cols, owners, 2, member, cal, seed=0
    )
    assert abs(auc(out[0][1][cal], member[cal]) - 0.5) < 0.12


def test_pia_through_the_router_asks_one_teacher_per_score() -> None:
    """PIA's proximal query eps(x0, t0) and its attack query eps(x_t, t) reach the same teacher:
    t0 is the first timestep served by t's teacher (0 on a single model, unchanged)."""
    from raydefense.attacks.pia import PIA

    schedule = NoiseSchedule(1000)
    calls: list[tuple[int, int]] = []

    class Teacher:
        def __init__(self, k: int) -> None:
            self.k = k

        def __call__(self, x, t, cond=None):
            calls.extend((self.k, int(v)) for v in t.unique())
            return torch.zeros_like(x) + 0.1 * (self.k + 1)

    router = DualMDStepRouter([Teacher(0), Teacher(1)], schedule, 10)
    owner = router.owner
    attack = PIA({"timesteps": [110, 220], "canonical_t": 110})
    x0 = torch.zeros(2, 1, 4, 4)
    attack.score(Query(router, schedule, x0, torch.arange(2), 0))
    for t in (110, 220):
        t0 = router.proximal_timestep(t)
        assert owner[t0] == owner[t] and (owner[:t0] != owner[t]).all()
    seen: dict[int, set[int]] = {}
    for k, t in calls:
        seen.setdefault(k, set()).add(t)
    for k, ts in seen.items():  # every timestep a teacher was asked about is one it serves
        assert all(int(owner[t]) == k for t in ts)
    # On a single model the proximal query stays at t = 0 (the official PIA).
    calls.clear()
    attack.score(Query(Teacher(0), schedule, x0, torch.arange(2), 0))
    assert (0, 0) in calls
