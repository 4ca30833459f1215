"""DDIM and DDPM ancestral samplers with a per-step model router.

A router maps the sampler iteration index k (0 = the first, noisiest step) to the EpsModel that runs
that step. A single model is the router `[model]`; DualMD is `[teacher_1, teacher_2]`: strict
alternation, teacher 1 first (paper §2.2, invariant 6). The choice depends on k only, never on x.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.schedule import NoiseSchedule


def sampler_timesteps(schedule: NoiseSchedule, num_steps: int) -> list[int]:
    """Descending timesteps, evenly spaced ("leading" spacing): e.g. T=1000, 50 -> 980, ..., 0."""
    T = schedule.num_train_timesteps
    num_steps = min(num_steps, T)
    stride = T // num_steps
    return list(range(0, stride * num_steps, stride))[::-1]


def route(models: Sequence[EpsModel], k: int) -> EpsModel:
    """The model that runs sampler iteration k: models[k mod len(models)]."""
    return models[k % len(models)]


@torch.no_grad()
def sample(
    models: Sequence[EpsModel],
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    sampler: Literal["ddim", "ddpm"] = "ddim",
    num_steps: int = 50,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Generate images.

    Args:
        models: the router (see module docstring). shape: [N, C, H, W].
        sampler: "ddim" (eta = 0, x0_hat clipped to [-1, 1]) or "ddpm" (ancestral, strided).
    Returns:
        [N, C, H, W] float32 in [-1, 1].
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device)
    steps = sampler_timesteps(schedule, num_steps)
    for k, t in enumerate(steps):
        t_prev = steps[k + 1] if k + 1 < len(steps) else -1
        eps = route(models, k)(x, torch.full((shape[0],), t, dtype=torch.long, device=device))
        if sampler == "ddim":
            x0 = schedule.predict_x0(x, t, eps).clamp(-1.0, 1.0)
            if t_prev < 0:
                x = x0
            else:
                a_prev = schedule.abar(t_prev, x)
                # Re-derive eps from the clipped x0 so the step stays on the DDIM trajectory.
                eps = (x - schedule.abar(t, x).sqrt() * x0) / (1.0 - schedule.abar(t, x)).sqrt()
                x = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps
        else:
            x = schedule.ddpm_step(x, eps, t, t_prev, generator=None if device != "cpu" else g)
    return x.clamp(-1.0, 1.0)
