"""UNet builder (diffusers UNet2DModel) and the eps-model adapter every consumer calls."""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import UNet2DModel

from raydefense.config import ModelConfig


class EpsModel(Protocol):
    """A noise predictor: eps(x_t [B, C, H, W], t [B] long in [0, T)) -> [B, C, H, W]."""

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


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
    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t).sample
