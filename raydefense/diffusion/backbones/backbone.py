"""The backbone seam: a model family's network behind one protocol and a registry.

A backbone builds a fresh `EpsNet` from `ModelConfig` (the `model.kind` names it) and loads one
that an `EpsNet.save` wrote. The training loop, the soft-target labeller, scoring and the
training sweep's validation reach networks only through it, so a new family (a latent,
text-conditioned UNet, say) registers a backbone here instead of bringing a second training loop.
"""

from __future__ import annotations

from typing import Protocol

from raydefense.config import ModelConfig
from raydefense.diffusion.eps import EpsNet
from raydefense.registry import Registry


class Backbone(Protocol):
    """How one model family's networks are built, saved (by the EpsNet) and loaded."""

    def build(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> EpsNet:
        """A freshly initialised network (seed torch first: initialisation draws from it).
        image_shape: (C, H, W) of the training images."""
        ...

    def load(self, directory: str) -> EpsNet:
        """The network `EpsNet.save(directory)` wrote, on CPU, in eval mode, frozen."""
        ...

    def data_shape(
        self, cfg: ModelConfig, image_shape: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        """The shape (C, H, W) the diffusion runs on for images of image_shape: the image
        shape itself for a pixel-space family, the latent shape for a latent one."""
        ...


BACKBONES: Registry[Backbone] = Registry("backbone")
