"""PIA and PIAN (Kong et al., ICLR 2024), as the official code computes them (spec/attacks.md §3).

eps0 = eps(x0, 0) is the "proximal initialisation" (index 0 of the 0-based schedule, abar[0] =
1 - beta_0, never 1). For each attack timestep t the deterministic point
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps0 is queried and the score is
sum_{c,h,w} |eps(x_t, t) - eps0|^p (p = 4, no root), lower for members. PIAN rescales eps0 per
sample so that its mean |.| equals E|N(0, 1)| = sqrt(2 / pi) (the code's factor).

A sweep costs 1 + len(timesteps) eps calls per image: eps0 is computed once and shared.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from raydefense.attacks.base import (
    ATTACKS,
    Query,
    QueryAttack,
    call_eps,
    check_timesteps,
    proximal_timestep,
    repeat_cond,
    scaled_timestep,
    slice_cond,
)
from raydefense.config import PIAConfig
from raydefense.diffusion.schedule import NoiseSchedule


def pia_timesteps(cfg: PIAConfig, schedule: NoiseSchedule) -> tuple[list[int], int]:
    """(sorted sweep including the canonical t, canonical t), in this schedule's indices.

    Default sweep: 10, 20, ..., 300 at T = 1000 (the official `attack_num=30, interval=10`),
    scaled to T otherwise; the canonical t = 200 (the paper's headline setting) likewise."""
    if cfg.timesteps is None:
        sweep = [scaled_timestep(t, schedule) for t in range(10, 301, 10)]
    else:
        sweep = list(cfg.timesteps)
    canonical = scaled_timestep(cfg.canonical_t, schedule)
    out = sorted(set(sweep) | {canonical})
    check_timesteps("pia", out, schedule)
    return out, canonical


def normalize_eps0(eps0: torch.Tensor) -> torch.Tensor:
    """PIAN: eps0 / mean_{c,h,w}|eps0| * sqrt(2/pi), per sample. eps0: [B, C, H, W]."""
    scale = eps0.abs().flatten(1).mean(1).clamp_min(1e-12)
    return eps0 / scale.view(-1, *([1] * (eps0.dim() - 1))) * math.sqrt(2.0 / math.pi)


def lp_distance(a: torch.Tensor, b: torch.Tensor, p: float) -> torch.Tensor:
    """sum_{c,h,w} |a - b|^p per sample (no root, as the official distance). [B, ...] -> [B]."""
    return (a - b).abs().pow(p).flatten(1).sum(1)


@ATTACKS.register("pia")
class PIA(QueryAttack):
    """Proximal initialisation attack; one score column per timestep of the sweep."""

    name = "pia"
    access = "gray-box"
    normalized = False

    def __init__(self, cfg: PIAConfig | dict[str, Any], num_train_timesteps: int = 1000) -> None:
        self.cfg = cfg if isinstance(cfg, PIAConfig) else PIAConfig.model_validate(cfg)
        self.timesteps, self.canonical = pia_timesteps(self.cfg, NoiseSchedule(num_train_timesteps))

    def settings(self) -> list[dict[str, Any]]:
        return [
            {"t": t, "p": self.cfg.p, **({"canonical": True} if t == self.canonical else {})}
            for t in self.timesteps
        ]

    @torch.no_grad()
    def score(self, q: Query) -> torch.Tensor:
        """Deterministic (q.row_ids and q.seed unused); eps0 and every x_t of row i are queried
        under q.cond[i] when the target is conditional.
        Returns:
            [B, len(timesteps)] float32 = -sum |eps(x_t, t) - eps0|^p, higher = member.
        """
        eps, cond, x = q.eps, q.cond, q.x0.float()
        b = x.shape[0]
        # The proximal query eps(x0, t0): t0 = 0 for a single model; through a step router, the
        # first timestep served by the teacher that answers t, so both queries of a score reach
        # the same teacher (DualMD routes t = 0 and an attack t to different teachers).
        t0s = [proximal_timestep(eps, t) for t in self.timesteps]
        eps0_at: dict[int, torch.Tensor] = {}
        for t0 in sorted(set(t0s)):
            t0_vec = torch.full((b,), t0, dtype=torch.long, device=x.device)
            e0 = call_eps(eps, x, t0_vec, cond).float()
            eps0_at[t0] = normalize_eps0(e0) if self.normalized else e0
        # All timesteps in one call: [n_t * B] rows, timestep-major.
        n = len(self.timesteps)
        t_vec = torch.tensor(self.timesteps, dtype=torch.long, device=x.device).repeat_interleave(b)
        x_rep, e_rep = x.repeat(n, 1, 1, 1), torch.cat([eps0_at[t0] for t0 in t0s])
        cond_rep = repeat_cond(cond, n)  # row r of x_rep is item r % b, as cond_rep's
        x_t = q.schedule.q_sample(x_rep, t_vec, e_rep)
        out = torch.empty(b, n, dtype=torch.float32, device=x.device)
        chunk = max(1, 4096 // max(b, 1)) * b  # bound memory for long sweeps
        for s in range(0, n * b, chunk):
            sl = slice(s, s + chunk)
            e = call_eps(eps, x_t[sl], t_vec[sl], slice_cond(cond_rep, sl)).float()
            d = lp_distance(e, e_rep[sl], self.cfg.p)
            idx = torch.arange(s, min(s + chunk, n * b))
            out[idx % b, idx // b] = -d
        return out


@ATTACKS.register("pian")
class PIAN(PIA):
    """PIA with the per-sample normalised proximal noise (the code's sqrt(2/pi) factor)."""

    name = "pian"
    normalized = True
