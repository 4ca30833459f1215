"""Pang & Wang's black-box attack on text-to-image models, as the DualMD paper ran it (Table 4;
spec/text-to-image.md §3): for each audited image, `num_generations` images generated from its
caption through the target's public interface (DDIM; DualMD: the alternating pipeline), and the
mean similarity of the generations to the image. Members' captions regenerate their images.

This is the threshold form of their attack (no feature model is downloadable here, so pixel
SSIM, and the negative squared distance). Their script reports the best of 1,000 epochs
measured on the target; here, as for every attack, a setting is chosen on calibration only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from raydefense.attacks.base import ATTACKS, InterfaceAttack, PublicInterface
from raydefense.attacks.similarity import mse, ssim
from raydefense.config import PangWangConfig
from raydefense.seeding import STREAM_PANG_WANG, derive_seed


@ATTACKS.register("pang_wang")
class PangWang(InterfaceAttack):
    """One column per similarity (attacks.pang_wang.similarity)."""

    name = "pang_wang"
    text_only = True

    def __init__(
        self, cfg: PangWangConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = cfg if isinstance(cfg, PangWangConfig) else PangWangConfig.model_validate(cfg)

    def settings(self) -> list[dict[str, Any]]:
        return [
            {"similarity": s, "generations": self.cfg.num_generations} for s in self.cfg.similarity
        ]

    @torch.no_grad()
    def score_interface(
        self,
        interface: PublicInterface,
        images: torch.Tensor,
        row_ids: torch.Tensor,
        seed: int,
        cond: Optional[torch.Tensor] = None,
        feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Generation g of row r uses seed derive_seed(seed, STREAM_PANG_WANG, r, g).
        Returns [B, len(similarity)], the mean similarity over the generations."""
        if cond is None:
            raise ValueError("pang_wang generates from the audited images' captions (cond)")
        sims = {s: torch.zeros(len(images)) for s in self.cfg.similarity}
        for g in range(self.cfg.num_generations):
            seeds = [derive_seed(seed, STREAM_PANG_WANG, int(r), g) for r in row_ids.tolist()]
            gen = interface.generate(cond, seeds).cpu()
            ref = images.cpu()
            for s in sims:
                sims[s] += ssim(gen, ref) if s == "ssim" else -mse(gen, ref)
        n = self.cfg.num_generations
        return torch.stack([sims[s] / n for s in self.cfg.similarity], dim=1).float()
