"""A target's public, black-box interface (`raydefense.attacks.base.PublicInterface`): what a
deployed text-to-image or unconditional model answers, images in and images out.

- `generate`: the public sampler (sampling.sampler/num_steps/guidance_scale; DDIM), one image per
  seed (and prompt), so a row's generations never depend on its batch.
- `vary`: image-to-image variations (SDEdit-style, what ReDiffuse queries): the image (a latent
  family's: its VAE posterior draw) noised to t_start with its seed's noise, then deterministic
  DDIM down to index 0.
DualMD's interface runs its teachers alternately, teacher 1 first, in both (invariant 6); with
classifier-free guidance both halves of a step come from that step's teacher. Latent families
decode through the VAE: the attacker only ever sees pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch

from raydefense.config import SamplingConfig
from raydefense.diffusion.backbones.sd import SDCodec
from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.sampling import ddim_path, sample
from raydefense.diffusion.schedule import NoiseSchedule


def seeded_normal(shape: tuple[int, ...], seeds: Sequence[int]) -> torch.Tensor:
    """[len(seeds), *shape] float32 standard normals, one generator per seed."""
    return torch.from_numpy(
        np.stack(
            [np.random.default_rng(int(s)).standard_normal(shape, dtype=np.float32) for s in seeds]
        )
    )


class SamplerInterface:
    """The public interface of a single model (models = [m]) or of DualMD (its teachers).

    Args:
        models: the step router (see raydefense.diffusion.sampling). data_shape: (C, H, W) the
            diffusion runs on. codec: a latent family's VAE + text encoder (None: pixels).
        null: [L, D] the empty prompt's embedding (classifier-free guidance).
    """

    def __init__(
        self,
        models: Sequence[EpsModel],
        schedule: NoiseSchedule,
        sampling: SamplingConfig,
        data_shape: tuple[int, int, int],
        codec: Optional[SDCodec] = None,
        null: Optional[torch.Tensor] = None,
        device: str = "cpu",
    ) -> None:
        self.models, self.schedule, self.sampling = list(models), schedule, sampling
        self.shape, self.codec, self.null, self.device = data_shape, codec, null, device

    def _uncond(self, cond: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if cond is None or self.null is None:
            return None
        return self.null.to(cond.device).expand_as(cond)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1.0, 1.0) if self.codec is None else self.codec.decode(x)

    @torch.no_grad()
    def generate(self, cond: Optional[torch.Tensor], seeds: list[int]) -> torch.Tensor:
        """One image per seed (and prompt embedding cond[i]) -> [N, C, H, W] in [-1, 1]."""
        s = self.sampling
        x = seeded_normal(self.shape, seeds).to(self.device)
        c = None if cond is None else cond.to(self.device)
        if s.sampler != "ddim":  # an ancestral sampler's noise would depend on the batch
            raise ValueError("the public interface samples with DDIM; set sampling.sampler=ddim")
        out = sample(
            self.models,
            self.schedule,
            tuple(x.shape),
            "ddim",
            s.num_steps,
            device=self.device,
            cond=c,
            uncond=self._uncond(c),
            guidance_scale=s.guidance_scale,
            clip=self.codec is None,
            x_start=x,
        )
        return self._decode(out)

    @torch.no_grad()
    def vary(
        self,
        images: torch.Tensor,
        t_start: int,
        num_steps: int,
        seeds: list[int],
        cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Variations of images [N, C, H, W] in [-1, 1] (see the module docstring)."""
        x0 = images.to(self.device)
        noise_seeds = [int(s) for s in seeds]
        if self.codec is not None:
            mean, std = self.codec.latent_moments(x0)
            z = seeded_normal(tuple(mean.shape[1:]), [s + 1 for s in noise_seeds])
            x0 = mean + std * z.to(self.device)
        noise = seeded_normal(tuple(x0.shape[1:]), noise_seeds).to(self.device)
        x_t = self.schedule.q_sample(x0, t_start, noise)
        stride = max(1, t_start // max(1, num_steps))
        path = list(range(t_start, -1, -stride))
        if path[-1] != 0:
            path.append(0)
        c = None if cond is None else cond.to(self.device)
        out = ddim_path(
            self.models,
            self.schedule,
            x_t,
            path,
            c,
            self._uncond(c),
            self.sampling.guidance_scale,
        )
        return self._decode(out)
