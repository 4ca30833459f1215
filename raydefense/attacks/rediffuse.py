"""ReDiffuse (Li et al., ICML 2025, "Towards Black-Box Membership Inference Attack for Diffusion
Models"; spec/attacks.md §6.2): variations of the audited image through the target's public
image-to-image interface (noised to t = 200, deterministic DDIM back to index 0 in steps of 100),
averaged over 10 draws; members are reconstructed more faithfully. Threshold form: score =
-mean_{c,h,w} |x0 - mean variation|^p (their repo feeds that map to a ResNet classifier; the
threshold form needs no classifier). For DualMD the variations come from the alternating sampler,
so the attack tests its black-box claim end to end; text-to-image targets vary the image under
its caption, and the attacker sees decoded pixels only. Their Stable Diffusion code uses other
settings (`sd15_pokemon` sets them): t = 50, one DDIM step (k = 50), one draw, classifier-free
guidance 7.5 (the target's public sampler's), scored by SSIM (`distance: ssim`; theirs is
skimage's on grayscale decodes, ours the Gaussian-window SSIM of `attacks.similarity` on the
pixels). Their SD script builds linear betas 0.00085..0.012; the variations here use the
target's own schedule (SD's scaled-linear), as its public interface would.
"""

from __future__ import annotations

from typing import Any

import torch

from raydefense.attacks.base import ATTACKS, InterfaceAttack, PublicQuery, scaled_timestep
from raydefense.attacks.similarity import ssim
from raydefense.config import ReDiffuseConfig
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.seeding import STREAM_REDIFFUSE, derive_seed


@ATTACKS.register("rediffuse")
class ReDiffuse(InterfaceAttack):
    """One column: the averaged reconstruction's distance (negated)."""

    name = "rediffuse"

    def __init__(
        self, cfg: ReDiffuseConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = cfg if isinstance(cfg, ReDiffuseConfig) else ReDiffuseConfig.model_validate(cfg)
        schedule = NoiseSchedule(num_train_timesteps)
        self.t_start = scaled_timestep(self.cfg.t_start, schedule)
        self.num_steps = max(1, round(self.cfg.t_start / self.cfg.step))
        if self.cfg.step > self.cfg.t_start:
            raise ValueError(
                f"attacks.rediffuse.step={self.cfg.step} exceeds t_start={self.cfg.t_start}"
            )

    def settings(self) -> list[dict[str, Any]]:
        c = self.cfg
        if c.distance == "ssim":
            return [{"t_start": self.t_start, "steps": self.num_steps, "average": c.average,
                     "distance": "ssim"}]  # fmt: skip
        return [{"t_start": self.t_start, "steps": self.num_steps, "average": c.average, "p": c.p}]

    @torch.no_grad()
    def score_interface(self, q: PublicQuery) -> torch.Tensor:
        """Variation i of row r uses seed derive_seed(q.seed, STREAM_REDIFFUSE, r, i).
        Returns [B, 1] = -mean |x0 - mean_i variation_i|^p, higher = member."""
        images = q.images
        ref = images.cpu().float()
        total = torch.zeros_like(ref)
        for i in range(self.cfg.average):
            seeds = [derive_seed(q.seed, STREAM_REDIFFUSE, int(r), i) for r in q.row_ids.tolist()]
            total += q.interface.vary(images, self.t_start, self.num_steps, seeds, q.cond).cpu()
        recon = total / self.cfg.average
        if self.cfg.distance == "ssim":
            return ssim(recon, ref)[:, None].float()
        dist = (ref - recon).abs().pow(self.cfg.p).flatten(1).mean(1)
        return (-dist)[:, None].float()
