"""Exponential moving average of model weights (what the attacks target, as SecMI/PIA do)."""

from __future__ import annotations

import copy
from typing import Generic, TypeVar

import torch

M = TypeVar("M", bound=torch.nn.Module)


class EMA(Generic[M]):
    """Keeps `shadow`, a frozen copy of the model whose parameters track an EMA of the live ones."""

    def __init__(self, model: M, decay: float) -> None:
        self.decay = decay
        self.shadow: M = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach(), 1.0 - self.decay)
        for sb, b in zip(self.shadow.buffers(), model.buffers()):
            sb.copy_(b)
