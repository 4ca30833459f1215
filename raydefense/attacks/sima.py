"""SimA, the score-norm attack (arXiv 2509.25003; spec/attacks.md §6.1): the noise predictor applied
to the *clean* image, sum_{c,h,w} |eps(x0, t)|^p (p = 4), is smaller for members. One eps call per
timestep; the official sweep is t = 0, 10, ..., 200."""

from __future__ import annotations

from typing import Any

import torch

from raydefense.attacks.base import (
    ATTACKS,
    Query,
    QueryAttack,
    call_eps,
    check_timesteps,
    repeat_cond,
    scaled_timestep,
)
from raydefense.attacks.pia import lp_distance
from raydefense.config import SimAConfig
from raydefense.diffusion.schedule import NoiseSchedule


@ATTACKS.register("sima")
class SimA(QueryAttack):
    """One score column per timestep of the sweep."""

    name = "sima"
    access = "gray-box"

    def __init__(self, cfg: SimAConfig | dict[str, Any], num_train_timesteps: int = 1000) -> None:
        self.cfg = cfg if isinstance(cfg, SimAConfig) else SimAConfig.model_validate(cfg)
        schedule = NoiseSchedule(num_train_timesteps)
        if self.cfg.timesteps is None:
            ts = [scaled_timestep(t, schedule) for t in range(0, 201, 10)]
        else:
            ts = list(self.cfg.timesteps)
        self.timesteps = sorted(set(ts))
        check_timesteps("sima", self.timesteps, schedule)

    def settings(self) -> list[dict[str, Any]]:
        return [{"t": t, "p": self.cfg.p} for t in self.timesteps]

    @torch.no_grad()
    def score(self, q: Query) -> torch.Tensor:
        """Deterministic (q.row_ids and q.seed unused).
        Returns: [B, len(timesteps)] float32 = -sum |eps(x0, t)|^p, higher = member."""
        eps, cond, x = q.eps, q.cond, q.x0.float()
        b, n = x.shape[0], len(self.timesteps)
        out = torch.empty(b, n, dtype=torch.float32, device=x.device)
        per_call = max(1, 4096 // max(b, 1))  # timesteps per eps call, bounding memory
        for s in range(0, n, per_call):
            ts = self.timesteps[s : s + per_call]
            t_vec = torch.tensor(ts, dtype=torch.long, device=x.device).repeat_interleave(b)
            c = repeat_cond(cond, len(ts))  # timestep-major, as x's repeat
            e = call_eps(eps, x.repeat(len(ts), 1, 1, 1), t_vec, c).float()
            out[:, s : s + len(ts)] = (
                -lp_distance(e, torch.zeros_like(e), self.cfg.p).view(len(ts), b).T
            )
        return out
