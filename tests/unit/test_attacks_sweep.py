"""PIA / PIAN / SimA / blackbox_nn: hand-computed values for one sample, equivalent formulations,
timestep scaling, and DualMD's step router and access checks."""

from __future__ import annotations

import math

import pytest
import torch

from raydefense.attacks import ATTACKS
from raydefense.attacks.base import AccessError, Query, check_access, scaled_timestep
from raydefense.attacks.blackbox import BlackboxNN
from raydefense.attacks.pia import PIA, PIAN, normalize_eps0
from raydefense.attacks.secmi import ddim_move_yspace, secmi_error_maps
from raydefense.attacks.sima import SimA
from raydefense.config import BlackboxNNConfig, PIAConfig, SimAConfig
from raydefense.defense.dualmd import DualMDStepRouter
from raydefense.diffusion.sampling import sampler_timesteps
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import UnknownComponentError

SCHED = NoiseSchedule()
X0 = torch.tensor([[[[0.5, -0.25], [1.0, -1.0]]]])  # one 1x2x2 sample


def lin_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """eps(x, t) = c(t) x with c(t) = 0.5 + t/500."""
    return (0.5 + t.view(-1, 1, 1, 1).float() / 500.0) * x


def test_pia_hand_computed_one_sample() -> None:
    # eps0 = eps(x0, 0) = 0.5 x0; x_t = sqrt(a) x0 + sqrt(1-a) 0.5 x0 = f x0;
    # eps(x_t, t) = c(t) f x0; score = -sum |c f x0 - 0.5 x0|^4 = -|c f - 0.5|^4 sum x0^4.
    att = PIA(PIAConfig(timesteps=[200], canonical_t=200, p=4))
    a = SCHED.alphas_cumprod.double()[200].item()
    f = math.sqrt(a) + math.sqrt(1 - a) * 0.5
    c = 0.5 + 200 / 500
    expected = -(abs(c * f - 0.5) ** 4) * sum(v**4 for v in X0.flatten().tolist())
    s = att.score(Query(lin_eps, SCHED, X0, torch.tensor([0]), 0))
    assert s.shape == (1, 1)
    assert s.item() == pytest.approx(expected, rel=1e-4)
    assert att.settings() == [{"t": 200, "p": 4.0, "canonical": True}]


def test_pian_normalises_eps0() -> None:
    # eps0 = 0.5 x0, normalised so mean |eps0| = sqrt(2/pi).
    e = normalize_eps0(0.5 * X0)
    assert e.abs().mean().item() == pytest.approx(math.sqrt(2 / math.pi), rel=1e-6)
    k = math.sqrt(2 / math.pi) / (0.5 * X0.abs().mean().item())  # e = 0.5 k x0
    a = SCHED.alphas_cumprod.double()[100].item()
    # x_t = sqrt(a) x0 + sqrt(1-a) 0.5 k x0; eps(x_t, 100) = 0.7 x_t
    coef = 0.7 * (math.sqrt(a) + math.sqrt(1 - a) * 0.5 * k) - 0.5 * k
    expected = -(abs(coef) ** 4) * sum(v**4 for v in X0.flatten().tolist())
    s = PIAN(PIAConfig(timesteps=[100], canonical_t=100)).score(
        Query(lin_eps, SCHED, X0, torch.tensor([0]), 0)
    )
    assert s.item() == pytest.approx(expected, rel=1e-4)


def test_pia_p2_equals_squared_l2_distance() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * (1 + t.view(-1, 1, 1, 1).float() / 1000) + 0.1 * x**2

    s2 = PIA(PIAConfig(timesteps=[50, 150], canonical_t=50, p=2)).score(
        Query(eps, SCHED, x, torch.arange(5), 0)
    )
    e0 = eps(x, torch.zeros(5, dtype=torch.long))
    for j, t in enumerate([50, 150]):
        tt = torch.full((5,), t, dtype=torch.long)
        x_t = SCHED.q_sample(x, tt, e0)
        l2 = torch.linalg.vector_norm((eps(x_t, tt) - e0).flatten(1), dim=1) ** 2
        assert torch.allclose(-s2[:, j], l2, rtol=1e-5)


def test_pia_sweep_shares_eps0_and_scales_to_schedule() -> None:
    calls: list[list[int]] = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(sorted(set(t.tolist())))
        return 0.5 * x

    att = PIA({})  # default sweep 10..300 + canonical 200
    assert [s["t"] for s in att.settings()] == list(range(10, 301, 10))
    att.score(Query(spy, SCHED, X0, torch.tensor([0]), 0))
    assert calls[0] == [0] and sum(len(c) for c in calls[1:]) == 30  # 1 + 30 eps timesteps
    short = PIA({}, num_train_timesteps=100)
    assert [s["t"] for s in short.settings()][:3] == [1, 2, 3]
    assert [s for s in short.settings() if s.get("canonical")] == [
        {"t": 20, "p": 4.0, "canonical": True}
    ]
    assert scaled_timestep(200, NoiseSchedule(100)) == 20


def test_sima_hand_computed() -> None:
    att = SimA(SimAConfig(timesteps=[0, 100], p=4))
    s = att.score(Query(lin_eps, SCHED, X0, torch.tensor([0]), 0))
    x4 = sum(v**4 for v in X0.flatten().tolist())
    assert s.shape == (1, 2)
    assert s[0, 0].item() == pytest.approx(-(0.5**4) * x4, rel=1e-5)
    assert s[0, 1].item() == pytest.approx(-(0.7**4) * x4, rel=1e-5)
    assert [st["t"] for st in SimA({}).settings()] == list(range(0, 201, 10))


def test_secmi_xspace_and_yspace_moves_agree() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1, 4, 4, generator=g)
    e = torch.randn(4, 1, 4, 4, generator=g)
    for a, b in ((0, 10), (90, 100), (100, 90), (500, 20)):
        xs = SCHED.ddim_move(x, e, a, b)
        ys = ddim_move_yspace(x, e, SCHED.abar(a, x), SCHED.abar(b, x))
        assert torch.allclose(xs, ys, rtol=1e-4, atol=1e-5)
    x_tilde, x_hat = secmi_error_maps(lin_eps, SCHED, X0, 40, 10)
    assert x_tilde.shape == X0.shape and torch.isfinite(x_hat).all()


def test_blackbox_nn_hand_computed() -> None:
    gen = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    q = torch.tensor([[[[0.0, 0.0], [0.0, 0.5]]], [[[1.0, 1.0], [1.0, -1.0]]]])
    att = BlackboxNN(BlackboxNNConfig(num_generated=2, features=["pixel"]))
    s = att.score_generated(gen, q)
    assert s.shape == (2, 1)
    assert s[0, 0].item() == pytest.approx(-0.5) and s[1, 0].item() == pytest.approx(-2.0)
    both = BlackboxNN(BlackboxNNConfig(num_generated=2))
    s2 = both.score_generated(gen, q, feature_fn=lambda x: x.flatten(1)[:, :1])
    assert s2.shape == (2, 2) and s2[:, 1].tolist() == [0.0, 0.0]
    assert [x["space"] for x in both.settings(with_features=False)] == ["pixel"]


def test_router_alternates_on_the_sampler_grid() -> None:
    sched = NoiseSchedule(1000)
    seen: list[tuple[int, list[int]]] = []

    def teacher(k: int):
        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            seen.append((k, t.tolist()))
            return torch.full_like(x, float(k))

        return eps

    router = DualMDStepRouter([teacher(0), teacher(1)], sched, 50)
    grid = sampler_timesteps(sched, 50)
    assert [router.teacher_index(t) for t in grid[:4]] == [0, 1, 0, 1]
    assert router.teacher_index(grid[-1]) == (len(grid) - 1) % 2
    x = torch.zeros(3, 1, 2, 2)
    out = router(x, torch.tensor([grid[0], grid[1], grid[0]]))
    assert out[:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0]
    # Off-grid t goes to the nearest grid step's teacher; the choice never depends on x.
    assert router.teacher_index(grid[1] + 3) == router.teacher_index(grid[1])
    assert torch.equal(
        router(x + 5, torch.tensor([grid[1]] * 3)), router(x, torch.tensor([grid[1]] * 3))
    )


def test_access_levels() -> None:
    gsa = ATTACKS.get("gsa1")({})
    pia = PIA({})
    bb = BlackboxNN({})
    check_access(pia, "dualmd", "gray-box")
    check_access(bb, "dualmd", "black-box")
    with pytest.raises(AccessError, match="needs white-box access .* exposes only gray-box"):
        check_access(gsa, "dualmd", "gray-box")
    with pytest.raises(AccessError, match="needs gray-box access .* black-box"):
        check_access(pia, "dualmd", "black-box")
    with pytest.raises(
        UnknownComponentError,
        match="choose one of: " + ", ".join(ATTACKS.names()),
    ):
        ATTACKS.get("secmi")
