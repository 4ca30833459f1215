"""DualMD: two teachers trained on disjoint halves alternate one per denoising step.

The black-box interface returns final images only (invariant 6); which teacher runs a step is fixed
by the step index (strict alternation, teacher 1 first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Optional

import torch

from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.sampling import sample, sampler_timesteps
from raydefense.diffusion.schedule import NoiseSchedule


class DualMDPipeline:
    """Private inference over K >= 2 teachers (the paper uses K = 2): step k runs teacher
    k mod K."""

    def __init__(self, teachers: Sequence[EpsModel], schedule: NoiseSchedule) -> None:
        if len(teachers) < 2:
            raise ValueError("DualMD needs at least two teachers trained on disjoint shards")
        self._teachers = list(teachers)
        self._schedule = schedule

    def generate(
        self,
        shape: tuple[int, ...],
        sampler: Literal["ddim", "ddpm"] = "ddim",
        num_steps: int = 50,
        seed: int = 0,
        device: torch.device | str = "cpu",
        cond: Optional[torch.Tensor] = None,
        uncond: Optional[torch.Tensor] = None,
        guidance_scale: float = 1.0,
        clip: bool = True,
    ) -> torch.Tensor:
        """[N, C, H, W] images in [-1, 1] (latents for a latent family: clip=False); no
        intermediate states are exposed. With classifier-free guidance both the conditional
        and the unconditional prediction of a step come from that step's teacher (one batched
        call), teacher 1 first."""
        return sample(
            self._teachers,
            self._schedule,
            shape,
            sampler,
            num_steps,
            seed,
            device,
            cond=cond,
            uncond=uncond,
            guidance_scale=guidance_scale,
            clip=clip,
        )


def timestep_owners(schedule: NoiseSchedule, num_steps: int, num_teachers: int) -> torch.Tensor:
    """Which teacher answers eps(x_t, t) for every t: the alternating sampler's grid
    (`sampler_timesteps`) runs teacher k mod K at iteration k, and an off-grid t goes to the
    teacher of the nearest grid timestep (ties: the lower t). Public knowledge: it follows from
    the sampler settings alone. -> [T] long, values in [0, K)."""
    grid = torch.tensor(sampler_timesteps(schedule, num_steps))  # descending
    ts = torch.arange(schedule.num_train_timesteps)
    dist = (ts[:, None] - grid[None, :]).abs()  # [T, steps]
    # argmin returns the first minimum; grid is descending, so flip to prefer the lower t.
    step = grid.numel() - 1 - dist.flip(1).argmin(1)
    return step % num_teachers


class DualMDStepRouter:
    """DualMD's gray-box interface (an extension beyond the paper): eps(x_t, t) is answered by the
    teacher that the alternating sampler assigns to timestep t.

    The sampler's grid (`sampler_timesteps`) runs teacher k mod K at iteration k; a query at a t
    off the grid goes to the teacher of the grid timestep nearest to t (ties: the lower t). The
    choice depends on t only, never on x (invariant 6). Mixed timesteps in one batch are split
    per teacher.
    """

    def __init__(
        self, teachers: Sequence[EpsModel], schedule: NoiseSchedule, num_steps: int
    ) -> None:
        if len(teachers) < 2:
            raise ValueError("DualMD needs at least two teachers trained on disjoint shards")
        self._teachers = list(teachers)
        self.owner = timestep_owners(schedule, num_steps, len(self._teachers))

    @property
    def teachers(self) -> list[EpsModel]:
        return list(self._teachers)

    def teacher_index(self, t: int) -> int:
        return int(self.owner[t])

    def proximal_timestep(self, t: int) -> int:
        """The first timestep served by the teacher that answers t (PIA's proximal query for an
        attack at t: both reach the same teacher; 0 when that teacher serves t = 0)."""
        return int(torch.nonzero(self.owner == self.owner[t])[0, 0])

    @torch.no_grad()
    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        """x_t [B, C, H, W], t [B] long -> eps [B, C, H, W] from each element's routed teacher
        (`cond`, when the teachers take one, is split with the batch)."""
        who = self.owner[t.cpu()].to(t.device)
        out = torch.empty_like(x_t)
        for k in who.unique().tolist():
            m = who == k
            if cond is None:
                out[m] = self._teachers[k](x_t[m], t[m]).to(out.dtype)
            else:
                out[m] = self._teachers[k](x_t[m], t[m], cond[m]).to(out.dtype)
        return out
