"""A training step makes no host sync: nothing in it reads a tensor's value on the host, so on a
GPU the host only queues kernels and the step costs what its kernels cost. On CPU the interposers
of `raydefense.testing.host_reads` prove it; on CUDA (where available) so does CUDA's own sync
debug mode. Each detector is shown to fire on a planted read, so the clean runs can fail."""

from __future__ import annotations

import pytest
import torch

from raydefense.config import TrainConfig
from raydefense.data.examples import ImageData, SoftTargetData
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.training import TrainStep, prepare_fit
from raydefense.families import UNet2DConfig
from raydefense.testing.host_reads import HostReads

MODEL = UNet2DConfig(block_out_channels=[8, 16], norm_num_groups=4)
SCHED = NoiseSchedule()
# The cifar10_ddpm step's options: flips, EMA 0.9999, grad clip, lr warmup.
CFG = dict(batch_size=4, lr=2e-4, warmup_steps=5, grad_clip=1.0, ema_decay=0.9999, hflip=True)


def image_step(device: str = "cpu", **options) -> TrainStep:
    cfg = TrainConfig(steps=10, **{**CFG, **options})
    data = ImageData(torch.rand(16, 1, 8, 8) * 2 - 1)
    f = prepare_fit(data, MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=1, device=device)
    f.model.train()
    return TrainStep(f, cfg, SCHED, device)


def distill_step() -> TrainStep:
    n = 12
    data = SoftTargetData(
        x_t=torch.randn(n, 1, 8, 8),
        t=torch.randint(1000, (n,)),
        target=torch.randn(n, 1, 8, 8),
        group=torch.arange(n) % 2,
    )
    cfg = TrainConfig(steps=10, **CFG)
    f = prepare_fit(data, MODEL, cfg, SCHED, (1, 8, 8), seed=0, model_index=3)
    return TrainStep(f, cfg, SCHED, "cpu")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_image_step_reads_nothing_on_the_host(precision: str) -> None:
    step = image_step(precision=precision)
    step(0)  # first call: lazy state (optimizer moments) is created outside the check
    with HostReads() as reads:
        for i in range(1, 4):
            loss, grad_norm = step(i)
    assert reads.calls == [], reads.calls
    assert loss.dim() == 0 and grad_norm.dim() == 0 and torch.isfinite(loss)


def test_a_distillation_step_reads_nothing_on_the_host() -> None:
    step = distill_step()
    step(0)
    with HostReads() as reads:
        step(1)
        step(2)
    assert reads.calls == [], reads.calls


def test_the_check_fires_on_a_planted_read() -> None:
    """The loop's old habit of logging float(loss) every step is what the check exists for."""
    step = image_step()
    step(0)
    with HostReads() as reads:
        loss, _ = step(1)
        float(loss)
    assert "aten._local_scalar_dense" in reads.calls
    with HostReads() as reads:
        x = torch.randn(8)
        _ = x[x > 0]  # a boolean mask's output shape is read on the host
    assert reads.calls == ["aten.index"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (its sync debug mode)")
def test_a_cuda_step_makes_no_device_to_host_sync() -> None:
    step = image_step("cuda")
    step(0)
    torch.cuda.synchronize()
    with HostReads(cuda=True) as reads:  # sync debug mode "error": a sync raises
        for i in range(1, 4):
            step(i)
    assert reads.calls == [], reads.calls
    assert step.fit.source.device.type == "cuda"
    with pytest.raises(RuntimeError), HostReads(cuda=True):
        float(step(4)[0])
