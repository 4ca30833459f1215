"""The `unet2d` family's schema: a pixel-space diffusers UNet2DModel, unconditional, trained from
scratch (its backbone: raydefense.diffusion.backbones.unet2d)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from raydefense.families.schema import MODEL_FAMILIES, ModelConfig


@MODEL_FAMILIES.register("unet2d")
class UNet2DConfig(ModelConfig):
    """`model.kind: unet2d`: the layout fields shape a diffusers UNet2DModel."""

    kind: Literal["unet2d"] = "unet2d"
    block_out_channels: list[int] = [32, 64]
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    attention: bool = False
    downsample_padding: int = Field(
        1, ge=0, description="padding of the strided downsampling convs (Ho et al.'s CIFAR UNet: 0)"
    )
    freq_shift: int = Field(
        0, ge=0, description="timestep-embedding frequency shift (Ho et al.'s CIFAR UNet: 1)"
    )
    dropout: float = Field(
        0.0, ge=0, lt=1, description="ResNet-block dropout (DDPM's CIFAR model uses 0.1)"
    )

    diffusers_class: ClassVar[str] = "UNet2DModel"
    sampler: ClassVar[Optional[str]] = "ddim"

    @model_validator(mode="after")
    def _check_layout(self) -> UNet2DConfig:
        if not self.block_out_channels:
            raise ValueError("model.block_out_channels must list at least one width")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"model.block_out_channels {bad} are not divisible by model.norm_num_groups="
                f"{self.norm_num_groups}; change one of them"
            )
        return self
