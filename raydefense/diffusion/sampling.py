"""DDIM and DDPM ancestral samplers with a per-step model router.

A router maps the sampler iteration index k (0 = the first, noisiest step) to the EpsModel that runs
that step. A single model is the router `[model]`; DualMD is `[teacher_1, teacher_2]`: strict
alternation, teacher 1 first (paper §2.2, invariant 6). The choice depends on k only, never on x.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

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


def guided_eps(
    model: EpsModel,
    x: torch.Tensor,
    t: torch.Tensor,
    cond: Optional[torch.Tensor],
    uncond: Optional[torch.Tensor],
    guidance_scale: float,
) -> torch.Tensor:
    """One step's noise prediction from ONE model: eps(x, t, cond), or with classifier-free
    guidance (guidance_scale > 1) eps_u + w (eps_c - eps_u), both halves from one batched call
    of the same model (so under DualMD the step's teacher answers both).

    Args: x [B, C, H, W]; t [B] long; cond, uncond [B, L, D] text embeddings or None.
    """
    if cond is None:
        return model(x, t)  # the unconditional call, as every EpsModel takes it
    if guidance_scale == 1.0:
        return model(x, t, cond)
    if uncond is None:
        raise ValueError("classifier-free guidance needs the empty prompt's embedding (uncond)")
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, cond]))
    eps_u, eps_c = both.chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


@torch.no_grad()
def sample(
    models: Sequence[EpsModel],
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    sampler: Literal["ddim", "ddpm"] = "ddim",
    num_steps: int = 50,
    seed: int = 0,
    device: torch.device | str = "cpu",
    cond: Optional[torch.Tensor] = None,
    uncond: Optional[torch.Tensor] = None,
    guidance_scale: float = 1.0,
    clip: bool = True,
    x_start: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Generate images (or latents).

    Args:
        models: the router (see module docstring). shape: [N, C, H, W].
        sampler: "ddim" (eta = 0) or "ddpm" (ancestral, strided).
        cond, uncond: [N, L, D] text embeddings of the prompts and of the empty prompt (text-to-
            image; see guided_eps), None for unconditional models.
        clip: clip x0_hat (and the output) to [-1, 1]: pixel models; latent models do not
            (Stable Diffusion's schedulers run with clip_sample=False).
        x_start: the initial noise [N, C, H, W] (default: drawn from `seed`).
    Returns:
        [N, C, H, W] float32 (in [-1, 1] when clip).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device) if x_start is None else x_start.to(device)
    if cond is not None:
        cond = cond.to(device)
        uncond = None if uncond is None else uncond.to(device)
    steps = sampler_timesteps(schedule, num_steps)
    for k, t in enumerate(steps):
        t_prev = steps[k + 1] if k + 1 < len(steps) else -1
        t_vec = torch.full((shape[0],), t, dtype=torch.long, device=device)
        eps = guided_eps(route(models, k), x, t_vec, cond, uncond, guidance_scale)
        if sampler == "ddim":
            x0 = schedule.predict_x0(x, t, eps)
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
            if t_prev < 0:
                x = x0
            else:
                a_prev = schedule.abar(t_prev, x)
                # Re-derive eps from the clipped x0 so the step stays on the DDIM trajectory.
                eps = (x - schedule.abar(t, x).sqrt() * x0) / (1.0 - schedule.abar(t, x)).sqrt()
                x = a_prev.sqrt() * x0 + (1.0 - a_prev).sqrt() * eps
        else:
            x = schedule.ddpm_step(
                x, eps, t, t_prev, generator=None if device != "cpu" else g, clip=clip
            )
    return x.clamp(-1.0, 1.0) if clip else x


@torch.no_grad()
def ddim_path(
    models: Sequence[EpsModel],
    schedule: NoiseSchedule,
    x: torch.Tensor,
    timesteps: Sequence[int],
    cond: Optional[torch.Tensor] = None,
    uncond: Optional[torch.Tensor] = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """Deterministic DDIM moves (eta = 0, no clipping) along descending `timesteps` t_0 > t_1 >
    ... > t_n from x at t_0, ending at index t_n (its abar, not 1: ReDiffuse's convention).
    Step k (t_k -> t_{k+1}) runs models[k mod len(models)]: DualMD alternates from teacher 1.

    Args: x [B, C, H, W] at timestep t_0; cond/uncond [B, L, D] or None (see guided_eps).
    Returns: [B, C, H, W] at t_n."""
    for k in range(len(timesteps) - 1):
        t, t_next = int(timesteps[k]), int(timesteps[k + 1])
        t_vec = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = guided_eps(route(models, k), x, t_vec, cond, uncond, guidance_scale)
        x = schedule.ddim_move(x, eps.to(x.dtype), t, t_next)
    return x
