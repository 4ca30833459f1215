"""The naive loss attack (spec/attacks.md §4): a member's denoising loss is lower.

score(x0) = -mean_{t, d} err(eps(x_t, t) - noise_{t,d}),
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise_{t,d},
err = sum (or mean) over C, H, W of the squared difference. The noises of each (row, t) come from
one generator seeded by (seed, row, t) (draw d is its d-th [C, H, W] block), so a row's score does
not depend on the batch it is scored in.
"""

from __future__ import annotations

from typing import Any

import torch

from raydefense.attacks.base import ATTACKS, Query, QueryAttack, call_eps, repeat_cond
from raydefense.config import LossAttackConfig
from raydefense.seeding import STREAM_LOSS_ATTACK, per_row_normal


@ATTACKS.register("loss")
class LossAttack(QueryAttack):
    """Denoising-loss attack averaged over `timesteps` x `draws` fresh noises per row."""

    name = "loss"
    access = "gray-box"

    def __init__(
        self, cfg: LossAttackConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = (
            cfg if isinstance(cfg, LossAttackConfig) else LossAttackConfig.model_validate(cfg)
        )

    def settings(self) -> list[dict[str, Any]]:
        return [
            {
                "timesteps": list(self.cfg.timesteps),
                "draws": self.cfg.draws,
                "reduction": self.cfg.reduction,
            }
        ]

    @torch.no_grad()
    def score(self, q: Query) -> torch.Tensor:
        """eps is called once per timestep on a [draws * B, C, H, W] batch (q.cond repeated
        draw-major like x); each row's noise comes from its row id and q.seed.
        Returns:
            [B, 1] float32 = -(average squared error), <= 0, higher = member.
        """
        schedule, b, draws = q.schedule, q.batch_size, self.cfg.draws
        if not self.cfg.timesteps:
            raise ValueError("attacks.loss.timesteps is empty; list at least one timestep")
        for t in self.cfg.timesteps:
            if not 0 <= t < schedule.num_train_timesteps:
                raise ValueError(
                    f"attacks.loss.timesteps has {t}, outside [0, {schedule.num_train_timesteps})"
                )
        x = q.x0.float()
        total = torch.zeros(b, dtype=torch.float32, device=x.device)
        # Draw-major layout: rows [d*B, (d+1)*B) hold draw d of every sample.
        x_rep = x.repeat(draws, *([1] * (x.dim() - 1)))
        cond_rep = repeat_cond(q.cond, draws)
        for t in self.cfg.timesteps:
            # One generator per (row, t) draws all `draws` noises: [B, draws, ...] -> draw-major.
            noise = per_row_normal((draws, *x.shape[1:]), q.row_ids, q.seed, STREAM_LOSS_ATTACK, t)
            noise = noise.transpose(0, 1).reshape(b * draws, *x.shape[1:])
            noise = noise.to(device=x.device, dtype=x.dtype)
            t_vec = torch.full((b * draws,), t, dtype=torch.long, device=x.device)
            x_t = schedule.q_sample(x_rep, t_vec, noise)
            sq = (call_eps(q.eps, x_t, t_vec, cond_rep).float() - noise).pow(2).flatten(1)
            err = sq.sum(1) if self.cfg.reduction == "sum" else sq.mean(1)  # [draws * B]
            total += err.view(draws, b).mean(0)
        return (-total / len(self.cfg.timesteps)).float()[:, None]
