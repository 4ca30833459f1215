"""Loss and SecMI_stat attacks: hand-computed values, batch independence, shapes, a real UNet."""

from __future__ import annotations

import math

import pytest
import torch

from raydefense.attacks import ATTACKS
from raydefense.attacks.base import Query
from raydefense.attacks.loss import LossAttack
from raydefense.attacks.secmi import SecMIStat, secmi_error_maps
from raydefense.config import LossAttackConfig, SecMIConfig
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.eps import FrozenEps
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.families import UNet2DConfig
from raydefense.seeding import STREAM_LOSS_ATTACK, per_row_normal

SCHED = NoiseSchedule()
X0 = torch.tensor([[[[0.5, -0.25], [1.0, -1.0]]]])  # one 1x2x2 sample


def half_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps(x, t) = 0.5 x: linear, so every DDIM move is a per-step scalar factor."""
    assert t.dtype == torch.long and t.shape == (x.shape[0],)
    return 0.5 * x


def lin_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps(x, t) = c(t) x, c(t) = 0.5 + t/50: linear in x, yet the round trip does not cancel."""
    return (0.5 + t.view(-1, 1, 1, 1).float() / 50.0) * x


def nonlinear_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample, t-dependent, nonlinear; no cross-sample interaction."""
    return torch.tanh(x) * (1.0 + t.view(-1, 1, 1, 1).float() / 1000.0) + 0.1 * x.pow(2)


def test_registry_and_params() -> None:
    assert ATTACKS.get("loss") is LossAttack and ATTACKS.get("secmi_stat") is SecMIStat
    la = LossAttack(LossAttackConfig(timesteps=[50, 100], draws=3, reduction="mean"))
    assert la.settings() == [{"timesteps": [50, 100], "draws": 3, "reduction": "mean"}]
    assert (la.name, la.access, la.kind) == ("loss", "gray-box", "query")
    sm = SecMIStat({"t_sec": 40, "k": 10})
    assert sm.settings() == [{"t_sec": 40, "k": 10}]
    assert (sm.name, sm.access, sm.kind) == ("secmi_stat", "gray-box", "query")


def test_secmi_hand_computed() -> None:
    a = SCHED.alphas_cumprod.double().tolist()

    def m(t_from: int, t_to: int) -> float:
        # With eps = c x, c = c(t_from):
        # move(x) = x * [sqrt(a_to) (1 - c sqrt(1-a_from)) / sqrt(a_from) + c sqrt(1-a_to)]
        c = 0.5 + t_from / 50.0
        return math.sqrt(a[t_to]) * (1 - c * math.sqrt(1 - a[t_from])) / math.sqrt(
            a[t_from]
        ) + c * math.sqrt(1 - a[t_to])

    # t_sec=20, k=10: invert 0 -> 10 (x_tilde, eps at 0), then 10 -> 20 (eps at 10) and 20 -> 10
    # (eps at 20) for x_hat; error = sum over the 4 pixels of (x_tilde - x_hat)^2.
    f_tilde = m(0, 10)
    f_hat = m(10, 20) * m(20, 10) * f_tilde
    expected = sum((f_tilde - f_hat) ** 2 * v * v for v in X0.flatten().tolist())
    assert expected > 1e-5  # far from float32 cancellation noise
    x_tilde, x_hat = secmi_error_maps(lin_eps, SCHED, X0, t_sec=20, k=10)
    assert torch.allclose(x_tilde, f_tilde * X0, rtol=1e-5)
    assert torch.allclose(x_hat, f_hat * X0, rtol=1e-5)
    score = SecMIStat(SecMIConfig(t_sec=20, k=10)).score(
        Query(lin_eps, SCHED, X0, torch.tensor([0]), 0)
    )
    assert score.shape == (1, 1) and score.dtype == torch.float32
    assert score.item() == pytest.approx(-expected, rel=1e-4)


def test_secmi_call_pattern() -> None:
    seen: list[int] = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        return 0.5 * x

    secmi_error_maps(spy, SCHED, X0, t_sec=100, k=10)
    # eps at each source index: inversion 0..80, then 90 (up) and 100 (down); 11 calls.
    assert seen == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]


def test_secmi_rejects_bad_grid() -> None:
    with pytest.raises(ValueError, match="multiple of k"):
        secmi_error_maps(half_eps, SCHED, X0, t_sec=25, k=10)
    with pytest.raises(ValueError, match="t_sec >= 2"):
        secmi_error_maps(half_eps, SCHED, X0, t_sec=10, k=10)


def test_loss_hand_computed_one_draw() -> None:
    t, seed, row = 100, 3, 42
    noise = (
        per_row_normal((1, 1, 2, 2), [row], seed, STREAM_LOSS_ATTACK, t)[0, 0].flatten().tolist()
    )
    a = SCHED.alphas_cumprod.double()[t].item()
    err = 0.0
    for x, n in zip(X0.flatten().tolist(), noise):
        x_t = math.sqrt(a) * x + math.sqrt(1 - a) * n
        err += (0.5 * x_t - n) ** 2
    att = LossAttack(LossAttackConfig(timesteps=[t], draws=1, reduction="sum"))
    score = att.score(Query(half_eps, SCHED, X0, torch.tensor([row]), seed))
    assert score.shape == (1, 1) and score.dtype == torch.float32
    assert score.item() == pytest.approx(-err, rel=1e-5)
    mean_att = LossAttack(LossAttackConfig(timesteps=[t], draws=1, reduction="mean"))
    assert mean_att.score(
        Query(half_eps, SCHED, X0, torch.tensor([row]), seed)
    ).item() == pytest.approx(-err / 4, rel=1e-5)


def test_loss_averages_draws_and_timesteps() -> None:
    seed, row = 5, 9
    att = LossAttack(LossAttackConfig(timesteps=[10, 200], draws=3))
    total = 0.0
    for t in (10, 200):
        for d in range(3):
            n = per_row_normal((3, 1, 2, 2), [row], seed, STREAM_LOSS_ATTACK, t)[:, d]
            x_t = SCHED.q_sample(X0, t, n)
            total += (half_eps(x_t, torch.tensor([t])) - n).pow(2).sum().item()
    got = att.score(Query(half_eps, SCHED, X0, torch.tensor([row]), seed)).item()
    assert got == pytest.approx(-total / 6, rel=1e-5)


@pytest.mark.parametrize(
    "attack",
    [
        LossAttack(LossAttackConfig(timesteps=[10, 100], draws=4)),
        SecMIStat(SecMIConfig(t_sec=30, k=10)),
    ],
)
def test_scores_independent_of_batch_composition(attack: object) -> None:
    g = torch.Generator().manual_seed(0)
    images = {rid: torch.rand(1, 4, 4, generator=g) * 2 - 1 for rid in (3, 5, 7, 11)}

    def run(ids: list[int]) -> dict[int, float]:
        x = torch.stack([images[i] for i in ids])
        s = attack.score(Query(nonlinear_eps, SCHED, x, torch.tensor(ids), 17))
        assert s.shape == (len(ids), 1) and s.dtype == torch.float32
        return dict(zip(ids, s[:, 0].tolist()))

    first, second = run([3, 7, 11]), run([11, 5, 3])
    for rid in (3, 11):
        assert first[rid] == pytest.approx(second[rid], rel=1e-6, abs=1e-7)


def test_loss_mean_vs_sum_rank_equivalent() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 4, 4, generator=g) * 2 - 1
    ids = torch.arange(6)
    s_sum = LossAttack(LossAttackConfig(timesteps=[50], draws=2, reduction="sum")).score(
        Query(nonlinear_eps, SCHED, x, ids, 0)
    )
    s_mean = LossAttack(LossAttackConfig(timesteps=[50], draws=2, reduction="mean")).score(
        Query(nonlinear_eps, SCHED, x, ids, 0)
    )
    assert torch.allclose(s_mean * 16, s_sum, rtol=1e-5)
    assert torch.equal(torch.argsort(s_mean), torch.argsort(s_sum))


def test_seed_changes_loss_score() -> None:
    att = LossAttack(LossAttackConfig(timesteps=[100], draws=1))
    a = att.score(Query(half_eps, SCHED, X0, torch.tensor([0]), 0))
    b = att.score(Query(half_eps, SCHED, X0, torch.tensor([0]), 1))
    assert a.item() != b.item()
    assert torch.all(a <= 0)


def test_tiny_unet_gives_finite_scores() -> None:
    torch.manual_seed(0)
    eps = FrozenEps(build_net(UNet2DConfig(block_out_channels=[16, 32]), (1, 8, 8)).eval())
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    ids = torch.tensor([0, 1, 2])
    for attack in (
        LossAttack(LossAttackConfig(timesteps=[10, 100], draws=2)),
        SecMIStat(SecMIConfig(t_sec=20, k=10)),
    ):
        s = attack.score(Query(eps, SCHED, x, ids, 0))
        assert s.shape == (3, 1) and s.dtype == torch.float32
        assert torch.isfinite(s).all()


def test_every_registered_attack_declares_itself_through_a_base_class() -> None:
    """Each attack subclasses the base of its kind, so dispatch is by type, never by getattr."""
    from raydefense.attacks import ATTACKS
    from raydefense.attacks.base import (
        ACCESS_LEVELS,
        Attack,
        GeneratedAttack,
        InterfaceAttack,
        LearnedAttack,
        QueryAttack,
        TextQueryAttack,
    )
    from raydefense.attacks.combined import CombinedAttack
    from raydefense.attacks.lira_rmia import ReferenceAttack

    bases = {
        "query": QueryAttack,
        "learned": LearnedAttack,
        "generated": GeneratedAttack,
        "text": TextQueryAttack,
        "interface": InterfaceAttack,
        "reference": ReferenceAttack,
        "combined": CombinedAttack,
    }
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        assert issubclass(cls, Attack) and cls.name == name and cls.access in ACCESS_LEVELS
        if cls.kind in bases:
            assert issubclass(cls, bases[cls.kind]), name
        else:
            assert cls.kind == "adaptive" and cls.needs_router, name
        assert (cls.trains_on is not None) == (cls.kind == "learned"), name
