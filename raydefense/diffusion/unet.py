"""UNet builder (diffusers UNet2DModel) and the eps-model adapter every consumer calls."""

from __future__ import annotations

from typing import Any, Optional, Protocol

import torch
from diffusers import UNet2DModel

from raydefense.config import ModelConfig


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


def build_unet(cfg: ModelConfig, image_size: int, channels: int) -> UNet2DModel:
    """A small diffusers UNet2DModel; attention only in the mid-block unless cfg.attention.

    Args:
        image_size: H = W of the images (8 for digits, 32 for CIFAR).
        channels: 1 (grayscale) or 3 (RGB).
    """
    n = len(cfg.block_out_channels)
    down = ["AttnDownBlock2D" if cfg.attention and i == 1 else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if cfg.attention and i == n - 2 else "UpBlock2D" for i in range(n)]
    return UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        dropout=cfg.dropout,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
    )


class UNetEps:
    """Adapts a UNet2DModel to the EpsModel protocol (fp32, returns .sample)."""

    def __init__(self, unet: UNet2DModel) -> None:
        self.unet = unet

    @torch.no_grad()
    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        check_unconditional("UNet2DModel", cond)
        out: torch.Tensor = self.unet(x_t, t).sample  # type: ignore[operator]  # diffusers stubs
        return out
