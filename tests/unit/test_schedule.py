"""Schedule math against hand-computed values (0-based alphas_cumprod, DDIM move)."""

from __future__ import annotations

import math

import pytest
import torch

from raydefense.attacks.secmi import ddim_move_yspace
from raydefense.diffusion.schedule import NoiseSchedule


@pytest.fixture()
def sched() -> NoiseSchedule:
    return NoiseSchedule()


def test_alphas_cumprod_is_zero_based(sched: NoiseSchedule) -> None:
    abar = sched.alphas_cumprod
    assert abar.dtype == torch.float32 and abar.shape == (1000,)
    # Index 0 is 1 - beta_0, not 1 (spec/attacks.md §1.2).
    assert abar[0].item() == torch.tensor(1 - 1e-4, dtype=torch.float32).item()
    beta_1 = 1e-4 + (0.02 - 1e-4) / 999  # linspace step
    assert abar[1].item() == pytest.approx((1 - 1e-4) * (1 - beta_1), rel=1e-7)
    assert torch.all(abar[1:] < abar[:-1])


def test_q_sample_hand_values(sched: NoiseSchedule) -> None:
    abar = sched.alphas_cumprod.double()
    x0 = torch.tensor([0.5, -1.0]).view(2, 1, 1, 1)
    noise = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    t = torch.tensor([0, 500])
    out = sched.q_sample(x0, t, noise).flatten().tolist()
    # Row 0 at t=0: sqrt(a0)*0.5 + sqrt(1-a0)*1 with a0 the float32 table value (1 - a0 is exact
    # in float32 but is 1.00017e-4, not 1e-4: float32 cannot hold 0.9999 exactly).
    a0 = abar[0].item()
    assert out[0] == pytest.approx(math.sqrt(a0) * 0.5 + math.sqrt(1 - a0) * 1.0, rel=1e-6)
    assert out[0] == pytest.approx(0.49997500 + 0.01, abs=2e-6)
    a = abar[500].item()
    assert out[1] == pytest.approx(math.sqrt(a) * -1.0 + math.sqrt(1 - a) * 2.0, rel=1e-6)
    # An int t broadcasts to every row.
    out_int = sched.q_sample(x0, 0, noise).flatten()
    assert out_int[0].item() == pytest.approx(out[0], rel=1e-7)


def test_ddim_move_round_trip_with_same_eps(sched: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g)
    e = torch.randn(3, 2, 4, 4, generator=g)
    up = sched.ddim_move(x, e, 10, 90)
    back = sched.ddim_move(up, e, 90, 10)
    assert torch.allclose(back, x, atol=1e-5)
    assert not torch.allclose(up, x, atol=1e-2)


@pytest.mark.parametrize("t_from,t_to", [(0, 10), (90, 100), (100, 90), (500, 20)])
def test_ddim_move_matches_yspace(sched: NoiseSchedule, t_from: int, t_to: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=g)
    e = torch.randn(2, 3, 4, 4, generator=g)
    abar = sched.alphas_cumprod
    ref = sched.ddim_move(x, e, t_from, t_to)
    alt = ddim_move_yspace(x, e, abar[t_from], abar[t_to])
    assert torch.allclose(ref, alt, rtol=1e-5, atol=1e-5)
