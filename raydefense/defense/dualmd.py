"""DualMD: two teachers trained on disjoint halves alternate one per denoising step.

The black-box interface returns final images only (invariant 6); which teacher runs a step is fixed
by the step index (strict alternation, teacher 1 first).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

from raydefense.diffusion.sampling import sample
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.unet import EpsModel


class DualMDPipeline:
    """Private inference over K >= 2 teachers (the paper uses K = 2): step k runs teacher k mod K."""

    def __init__(self, teachers: Sequence[EpsModel], schedule: NoiseSchedule) -> None:
        if len(teachers) < 2:
            raise ValueError("DualMD needs at least two teachers trained on disjoint shards")
        self._teachers = list(teachers)
        self._schedule = schedule

    def generate(self, shape: tuple[int, ...], sampler: Literal["ddim", "ddpm"] = "ddim",
                 num_steps: int = 50, seed: int = 0) -> torch.Tensor:
        """[N, C, H, W] images in [-1, 1]; no intermediate states are exposed."""
        return sample(self._teachers, self._schedule, shape, sampler, num_steps, seed)
