"""The `unet2d` backbone: a pixel-space diffusers UNet2DModel, unconditional.

Its saved weights are plain diffusers directories: `UNet2DModel.from_pretrained(<model dir>/ema)`
loads a trained model with no raydefense installed.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers import UNet2DModel

from raydefense.config import ModelConfig, as_family
from raydefense.diffusion.backbones.backbone import BACKBONES
from raydefense.diffusion.checkpoint import weights_dir
from raydefense.diffusion.eps import EpsNet, check_unconditional
from raydefense.families.unet2d_schema import UNet2DConfig


def build_unet(cfg: UNet2DConfig, image_size: int, channels: int) -> UNet2DModel:
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
        downsample_padding=cfg.downsample_padding,
        freq_shift=cfg.freq_shift,
        dropout=cfg.dropout,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
    )


def load_unet(directory: str, weights: str = "ema") -> UNet2DModel:
    """The bare UNet2DModel of a model/checkpoint directory's `ema` or `raw` (`unet/`) weights,
    in eval mode, frozen."""
    return _load_pretrained(weights_dir(directory, weights))


def _load_pretrained(directory: str) -> UNet2DModel:
    # low_cpu_mem_usage=False: the default path wants `accelerate` and warns without it.
    unet = UNet2DModel.from_pretrained(directory, low_cpu_mem_usage=False)
    return unet.eval().requires_grad_(False)


class UNet2DNet(EpsNet):
    """A UNet2DModel as an EpsNet: eps = unet(x_t, t).sample; refuses conditioning."""

    def __init__(self, unet: UNet2DModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        check_unconditional("UNet2DModel", cond)
        out: torch.Tensor = self.unet(x_t, t).sample  # type: ignore[operator]  # diffusers stubs
        return out

    def save(self, directory: str) -> None:
        self.unet.save_pretrained(directory)  # type: ignore[attr-defined]  # diffusers stubs


class UNet2D:
    """The `unet2d` backbone (see the module docstring)."""

    def build(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> EpsNet:
        c, h, w = image_shape
        if h != w:
            raise ValueError(f"unet2d needs square images, got {h}x{w}; set data.resolution")
        return UNet2DNet(build_unet(as_family(cfg, UNet2DConfig), image_size=h, channels=c))

    def load(self, directory: str) -> EpsNet:
        return UNet2DNet(_load_pretrained(directory)).eval().requires_grad_(False)

    def data_shape(
        self, cfg: ModelConfig, image_shape: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        return image_shape


BACKBONES.register("unet2d")(UNet2D())
