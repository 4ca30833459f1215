"""Model families' backbones (`BACKBONES`, keyed by `model.kind`) and the calls the rest of the
code uses. A family's schema (fields, checks, capabilities `latent` / `conditional`) is its
`ModelConfig` subclass in `raydefense.config.MODEL_FAMILIES` (built in: `raydefense.families`).

Importing this package registers every built-in backbone.
"""

from __future__ import annotations

from raydefense.config import ModelConfig

# Registration side effects.
from raydefense.diffusion.backbones import sd, unet2d  # noqa: F401
from raydefense.diffusion.backbones.backbone import BACKBONES, Backbone
from raydefense.diffusion.checkpoint import weights_dir
from raydefense.diffusion.eps import EpsNet, FrozenEps


def backbone_of(cfg: ModelConfig) -> Backbone:
    return BACKBONES.get(cfg.kind)


def build_net(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> EpsNet:
    """A fresh network of cfg's family; image_shape (C, H, W)."""
    return backbone_of(cfg).build(cfg, image_shape)


def data_shape(cfg: ModelConfig, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(C, H, W) of what the diffusion runs on: images, or a latent family's latents."""
    return backbone_of(cfg).data_shape(cfg, image_shape)


def load_net(cfg: ModelConfig, directory: str, weights: str = "ema") -> EpsNet:
    """The `ema` or `raw` weights of a model/checkpoint directory, frozen, in eval mode."""
    return backbone_of(cfg).load(weights_dir(directory, weights))


def load_eps(
    cfg: ModelConfig, directory: str, weights: str = "ema", device: str = "cpu"
) -> FrozenEps:
    """load_net as an EpsModel on `device`."""
    return FrozenEps(load_net(cfg, directory, weights).to(device))


__all__ = [
    "BACKBONES",
    "Backbone",
    "backbone_of",
    "build_net",
    "data_shape",
    "load_eps",
    "load_net",
]
