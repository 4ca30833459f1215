"""The noise-predictor contracts every consumer is written against.

- `EpsModel`: the inference callable eps(x_t, t, cond=None) that samplers, attacks, defenses
  (DualMD's step router) and quality metrics call.
- `EpsNet`: the trainable torch module a backbone builds (`raydefense.diffusion.backbones`):
  forward(x_t, t, cond=None) -> eps, differentiable; what the training losses, DDP, the EMA and
  white-box (gradient) attacks work on.
- `FrozenEps`: an EpsNet as an EpsModel (no autograd); white-box attacks reach the network
  through its `.net`.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Optional, Protocol

import torch


class EpsModel(Protocol):
    """A noise predictor: eps(x_t [B, C, H, W], t [B] long in [0, T), cond) -> [B, C, H, W].

    `cond` is the model family's conditioning (text embeddings for a text-to-image model, say);
    None for unconditional models, which refuse anything else (`check_unconditional`)."""

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor: ...


def check_unconditional(model: str, cond: Optional[Any]) -> None:
    """Raise when conditioning reaches a model that has none (instead of ignoring it)."""
    if cond is not None:
        raise ValueError(
            f"{model} is unconditional: eps(x_t, t) takes no cond (got {type(cond).__name__})"
        )


class EpsNet(torch.nn.Module):
    """A backbone's network: forward(x_t [B, C, H, W], t [B] long, cond=None) -> eps
    [B, C, H, W] (a plain tensor, with autograd). `save(directory)` writes what the backbone's
    `load(directory)` reads back."""

    @abstractmethod
    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor: ...

    @abstractmethod
    def save(self, directory: str) -> None: ...


class FrozenEps:
    """An EpsNet as an EpsModel: fp32 inference without autograd. `net` stays reachable for
    white-box attacks (gradients through torch.func) and for moving it between devices."""

    def __init__(self, net: EpsNet) -> None:
        self.net = net

    @torch.no_grad()
    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        out: torch.Tensor = self.net(x_t, t, cond)
        return out
