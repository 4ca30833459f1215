"""SecMI_stat (Duan et al., ICML 2023), in the official code's convention (spec/attacks.md §2.2).

Deterministic DDIM inversion 0 -> k -> 2k -> ... -> t_sec - k gives x_tilde; one more inversion step
t_sec - k -> t_sec and one denoise step back give x_hat. The t-error is
sum_{c,h,w} (x_tilde - x_hat)^2, lower for members. eps is always evaluated at the source index of a
move, alphas_cumprod is 0-based (index 0 is 1 - beta_0, never 1) and x0_hat is never clipped.
"""

from __future__ import annotations

from typing import Any

import torch

from raydefense.attacks.base import ATTACKS, Query, QueryAttack, call_eps, check_cond
from raydefense.config import SecMIConfig
from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.schedule import NoiseSchedule


def ddim_move_yspace(
    x: torch.Tensor,
    eps: torch.Tensor,
    abar_from: torch.Tensor | float,
    abar_to: torch.Tensor | float,
) -> torch.Tensor:
    """The DDIM move written in the PIA repo's y-space (algebraically equal to
    NoiseSchedule.ddim_move); kept as an independent check of that formula.

    y = x / sqrt(abar), p = sqrt(1/abar - 1), y_next = y + eps (p_to - p_from),
    x_next = y_next sqrt(abar_to).

    Args:
        x, eps: [B, C, H, W]. abar_from, abar_to: alphas_cumprod values in (0, 1], scalars or
            tensors broadcastable to x.
    Returns:
        [B, C, H, W], x moved to the abar_to noise level.
    """
    a_from = torch.as_tensor(abar_from, dtype=x.dtype, device=x.device)
    a_to = torch.as_tensor(abar_to, dtype=x.dtype, device=x.device)
    y = x / a_from.sqrt()
    p_from = (1.0 / a_from - 1.0).sqrt()
    p_to = (1.0 / a_to - 1.0).sqrt()
    return (y + eps * (p_to - p_from)) * a_to.sqrt()


def _check_secmi(schedule: NoiseSchedule, t_sec: int, k: int) -> None:
    if k < 1 or t_sec < 2 * k:
        raise ValueError(f"SecMI needs k >= 1 and t_sec >= 2*k (got t_sec={t_sec}, k={k})")
    if t_sec % k:
        # The official inversion stops at the last multiple of k below t_sec but the round trip
        # starts from t_sec - k; the two only agree when k divides t_sec.
        raise ValueError(f"SecMI needs t_sec to be a multiple of k (got t_sec={t_sec}, k={k})")
    if t_sec >= schedule.num_train_timesteps:
        raise ValueError(
            f"SecMI t_sec={t_sec} must be below the schedule's "
            f"{schedule.num_train_timesteps} timesteps"
        )


@torch.no_grad()
def secmi_error_maps(
    eps: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t_sec: int,
    k: int,
    cond: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two states SecMI compares, both at index t_sec - k (t_sec / k + 1 eps calls).

    Args:
        eps: noise predictor, called on [B, C, H, W] with t a [B] long tensor.
        x0: [B, C, H, W] in [-1, 1].
        t_sec, k: SecMI's attack index and DDIM stride; k >= 1, t_sec >= 2k, k divides t_sec.
        cond: [B, L, D] text embeddings aligned with x0 (text-to-image targets), None for
            unconditional models; every eps call of the round trip gets it (same batch).
    Returns:
        (x_tilde, x_hat), each [B, C, H, W] float32 (unbounded): x_tilde is the deterministic
        inversion of x0 to t_sec - k,
        x_hat = psi(phi(x_tilde, t_sec - k -> t_sec), t_sec -> t_sec - k).
    """
    _check_secmi(schedule, t_sec, k)
    check_cond("secmi", x0, cond)
    x = x0.float()
    b = x.shape[0]

    def move(x_src: torch.Tensor, t_from: int, t_to: int) -> torch.Tensor:
        t_vec = torch.full((b,), t_from, dtype=torch.long, device=x_src.device)
        return schedule.ddim_move(x_src, call_eps(eps, x_src, t_vec, cond).float(), t_from, t_to)

    t = 0
    for s in range(k, t_sec, k):  # k, 2k, ..., t_sec - k
        x = move(x, t, s)
        t = s
    x_tilde = x
    x_up = move(x_tilde, t_sec - k, t_sec)
    x_hat = move(x_up, t_sec, t_sec - k)
    return x_tilde, x_hat


@ATTACKS.register("secmi_stat")
class SecMIStat(QueryAttack):
    """SecMI_stat: score = -sum_{c,h,w} (x_tilde - x_hat)^2 (higher = member)."""

    name = "secmi_stat"
    access = "gray-box"

    def __init__(self, cfg: SecMIConfig | dict[str, Any], num_train_timesteps: int = 1000) -> None:
        self.cfg = cfg if isinstance(cfg, SecMIConfig) else SecMIConfig.model_validate(cfg)

    def settings(self) -> list[dict[str, Any]]:
        return [{"t_sec": self.cfg.t_sec, "k": self.cfg.k}]

    def score(self, q: Query) -> torch.Tensor:
        """Deterministic (q.row_ids and q.seed unused); the round trip is shared with SecMI_NN
        through q's per-batch cache.
        Returns:
            [B, 1] float32 = -t-error, <= 0, higher = member.
        """
        x_tilde, x_hat = shared_error_maps(q, self.cfg.t_sec, self.cfg.k)
        return -(x_tilde - x_hat).pow(2).flatten(1).sum(1).float()[:, None]


def shared_error_maps(q: Query, t_sec: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """secmi_error_maps of the batch q, computed once per batch under ("secmi", t_sec, k) (and
    q.cond's identity, `Query.shared`) so SecMI_stat and SecMI_NN share one round trip."""
    return q.shared(
        ("secmi", t_sec, k),
        lambda: secmi_error_maps(q.eps, q.schedule, q.x0, t_sec, k, q.cond),
    )
