"""Samplers and the DualMD router: strict alternation, teacher 1 first, images only."""

from __future__ import annotations

import torch

from raydefense.defense.dualmd import DualMDPipeline
from raydefense.diffusion.sampling import route, sample, sampler_timesteps
from raydefense.diffusion.schedule import NoiseSchedule

SCHED = NoiseSchedule()


class Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def __call__(self, x, t):
        self.log.append((self.name, int(t[0])))
        return torch.zeros_like(x)


def test_timesteps_descend_evenly():
    assert sampler_timesteps(SCHED, 50)[:3] == [980, 960, 940]
    assert sampler_timesteps(SCHED, 50)[-1] == 0 and len(sampler_timesteps(SCHED, 50)) == 50


def test_dualmd_alternates_strictly_starting_with_teacher_1():
    log: list = []
    pipe = DualMDPipeline([Recorder("t1", log), Recorder("t2", log)], SCHED)
    for sampler in ("ddim", "ddpm"):
        log.clear()
        out = pipe.generate((2, 1, 4, 4), sampler=sampler, num_steps=7, seed=0)
        assert [n for n, _ in log] == ["t1", "t2"] * 3 + ["t1"]
        assert [t for _, t in log] == sampler_timesteps(SCHED, 7)
        assert out.shape == (2, 1, 4, 4) and out.abs().max() <= 1.0
    assert route(["a", "b"], 0) == "a" and route(["a", "b"], 5) == "b"


def test_the_route_never_depends_on_the_input():
    log_a, log_b = [], []
    DualMDPipeline([Recorder(1, log_a), Recorder(2, log_a)], SCHED).generate(
        (1, 1, 4, 4), seed=1, num_steps=5
    )
    DualMDPipeline([Recorder(1, log_b), Recorder(2, log_b)], SCHED).generate(
        (1, 1, 4, 4), seed=2, num_steps=5
    )
    assert log_a == log_b


def test_sampling_is_seeded():
    m = [lambda x, t: 0.1 * x]
    a = sample(m, SCHED, (3, 1, 4, 4), "ddpm", 5, seed=3)
    assert torch.equal(a, sample(m, SCHED, (3, 1, 4, 4), "ddpm", 5, seed=3))
    assert not torch.equal(a, sample(m, SCHED, (3, 1, 4, 4), "ddpm", 5, seed=4))


def test_eps_models_take_an_optional_condition():
    """EpsModel(x_t, t, cond=None): unconditional models refuse a condition instead of ignoring
    it; the router hands each teacher its own rows of the condition."""
    import pytest

    from raydefense.defense.dualmd import DualMDStepRouter
    from raydefense.diffusion.backbones import build_net
    from raydefense.diffusion.eps import FrozenEps
    from raydefense.families import UNet2DConfig

    eps = FrozenEps(
        build_net(UNet2DConfig(block_out_channels=[8, 16], norm_num_groups=4), (1, 8, 8))
    )
    x, t = torch.zeros(2, 1, 8, 8), torch.tensor([1, 900])
    assert eps(x, t).shape == (2, 1, 8, 8) and torch.equal(eps(x, t, None), eps(x, t))
    with pytest.raises(ValueError, match="unconditional"):
        eps(x, t, torch.zeros(2, 4))
    seen = []

    def teacher(k):
        def f(x_t, tt, cond=None):
            seen.append((k, None if cond is None else cond.tolist()))
            return torch.full_like(x_t, float(k))

        return f

    router = DualMDStepRouter([teacher(0), teacher(1)], SCHED, 50)
    out = router(x, t, torch.tensor([[5.0], [6.0]]))
    owners = router.owner[t].tolist()
    assert [out[i].max().item() for i in range(2)] == [float(o) for o in owners]
    assert sorted(seen) == sorted((o, [[5.0 + i]]) for i, o in enumerate(owners))
    assert router(x, t).shape == x.shape
