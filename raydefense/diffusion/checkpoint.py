"""Checkpoints: diffusers `save_pretrained` directories (raw `unet/` and `ema/`) + `state.pt`.

`UNet2DModel.from_pretrained(<dir>/ema)` loads a model with no raydefense installed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

import torch
from diffusers import UNet2DModel

if TYPE_CHECKING:
    from diffusers.models.modeling_utils import ModelMixin

STATE_FILE = "state.pt"


def save_checkpoint(
    directory: str, unet: torch.nn.Module, ema_unet: torch.nn.Module, state: dict
) -> None:
    """Writes <directory>/{unet,ema}/ (safetensors + config.json) and <directory>/state.pt."""
    os.makedirs(directory, exist_ok=True)
    # Both are diffusers models; torch types a Module's other attributes as Tensor | Module.
    cast("ModelMixin", unet).save_pretrained(os.path.join(directory, "unet"))
    cast("ModelMixin", ema_unet).save_pretrained(os.path.join(directory, "ema"))
    torch.save(state, os.path.join(directory, STATE_FILE))


def load_unet(directory: str, weights: str = "ema") -> UNet2DModel:
    """Load the `ema` or `raw` weights of a checkpoint/model directory, in eval mode."""
    sub = "ema" if weights == "ema" else "unet"
    # low_cpu_mem_usage=False: the default path wants `accelerate` and warns without it.
    unet = UNet2DModel.from_pretrained(os.path.join(directory, sub), low_cpu_mem_usage=False)
    return unet.eval().requires_grad_(False)


def load_state(directory: str) -> dict:
    return torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=False)
