"""The attack protocol and registry.

An attack maps a batch of clean images to a membership score per image, **higher = more likely a
member**, through an EpsModel only. Attacks never touch Ray, MLflow or the file system.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.unet import EpsModel
from raydefense.registry import Registry


class Attack(Protocol):
    """Scores a batch. Constructed from its config section (a pydantic model or dict)."""

    name: str
    access: str  # "white-box" (needs eps(x_t, t)) or "black-box" (needs generated images only)

    def params(self) -> dict[str, Any]:
        """The hyperparameters that identify this attack setting (logged, in results.json)."""
        ...

    def score(self, eps: EpsModel, schedule: NoiseSchedule, x0: torch.Tensor,
              row_ids: torch.Tensor, seed: int) -> torch.Tensor:
        """Args:
            x0: [B, C, H, W] in [-1, 1]. row_ids: [B] int64, stable row identifiers, so that any
                randomness is seeded per row (a batch's composition never changes a score).
            seed: the experiment's base seed.
        Returns:
            [B] float32, higher = member.
        """
        ...


ATTACKS: Registry[type] = Registry("attack")
