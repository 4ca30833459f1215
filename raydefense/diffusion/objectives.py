"""Training objectives: the DDPM eps-prediction loss and the DistillMD soft-target loss."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from raydefense.diffusion.schedule import NoiseSchedule


def ddpm_loss(
    net: torch.nn.Module,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    cond: Optional[Any] = None,
) -> torch.Tensor:
    """Mean ||eps - eps_theta(x_t, t, cond)||^2 (Ho et al. Eq. 14; paper Eq. 3).

    Args: net: an EpsNet (or its DDP wrapper); x0 [B, C, H, W] in [-1, 1]; t [B] long in
        [0, T); noise like x0, N(0, I); cond: the family's conditioning (None: unconditional).
    """
    x_t = schedule.q_sample(x0, t, noise)
    return F.mse_loss(net(x_t, t, cond), noise)


def distill_loss(
    net: torch.nn.Module,
    x_t: torch.Tensor,
    t: torch.Tensor,
    soft_target: torch.Tensor,
    cond: Optional[Any] = None,
) -> torch.Tensor:
    """Mean ||stopgrad(eps_teacher(x_t, t)) - eps_student(x_t, t)||^2 (paper Eq. 7).

    The true noise never enters: the teacher's prediction on the same (x_t, t) replaces it.
    """
    return F.mse_loss(net(x_t, t, cond), soft_target.detach())
