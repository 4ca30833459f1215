"""The `sd` family's schema: Stable Diffusion's latent, text-conditioned UNet2DConditionModel,
fine-tuned from a local pipeline (its backbone: raydefense.diffusion.backbones.sd)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from raydefense.families.schema import MODEL_FAMILIES, ModelConfig


@MODEL_FAMILIES.register("sd")
class SDConfig(ModelConfig):
    """`model.kind: sd`: only the UNet trains; the VAE and the CLIP text encoder of
    `model.pipeline` are frozen, and the diffusion runs on latents under caption embeddings."""

    kind: Literal["sd"] = "sd"
    pipeline: Optional[str] = Field(
        None,
        description="a local diffusers Stable Diffusion pipeline directory (unet/, vae/, "
        "text_encoder/, tokenizer/, scheduler/), or 'tiny' for a small random one built offline",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute UNet activations in the backward pass (less GPU memory, about a "
        "third more compute; what SD fine-tuning at 512 px on one GPU uses)",
    )

    latent: ClassVar[bool] = True
    conditional: ClassVar[bool] = True
    diffusers_class: ClassVar[str] = "UNet2DConditionModel"
    sampler: ClassVar[Optional[str]] = "stable-diffusion"
    encoder_fields: ClassVar[tuple[str, ...]] = ("pipeline",)

    @model_validator(mode="after")
    def _check_pipeline(self) -> SDConfig:
        if not self.pipeline:
            raise ValueError(
                "model.kind=sd fine-tunes a Stable Diffusion pipeline: set model.pipeline to its "
                "local directory (or 'tiny' for a small random one)"
            )
        return self
