"""What every model family's schema shares: `ModelConfig` (the family name and the DDPM noise
schedule, the capabilities as class attributes), the `MODEL_FAMILIES` registry and `as_family`.
It imports no torch and no other raydefense config, so the families' schemas can live beside
their backbones' code and still load with a config."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raydefense.errors import ConfigError
from raydefense.registry import Registry

DEFAULT_FAMILY = "unet2d"

# The fields every `model` section carried, with their defaults, before each family owned its
# schema: hashes of a config (its fingerprint, the stages' config tree) add the ones a family
# lacks, so configs and models from before keep their fingerprints.
FORMER_MODEL_FIELDS: dict[str, object] = {
    "pipeline": None,
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention": False,
    "downsample_padding": 1,
    "freq_shift": 0,
    "dropout": 0.0,
    "gradient_checkpointing": False,
}


class ModelConfig(BaseModel):
    """The network and its DDPM noise schedule. `kind` names the model family: a schema
    registered in `MODEL_FAMILIES` (built in: `raydefense.families`), whose own fields and
    capabilities (`latent`, `conditional`) the rest of the code reads instead of its name."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    kind: str = Field(
        DEFAULT_FAMILY,
        description="the model family: unet2d = a pixel-space diffusers UNet2DModel trained "
        "from scratch; sd = Stable Diffusion's latent, text-conditioned UNet2DConditionModel, "
        "fine-tuned from model.pipeline (VAE and text encoder frozen); a registered family's "
        "name (MODEL_FAMILIES)",
    )
    num_train_timesteps: int = Field(1000, ge=10)
    beta_start: float = Field(1e-4, gt=0)
    beta_end: float = Field(0.02, gt=0, lt=1)
    beta_schedule: Literal["linear", "scaled_linear"] = Field(
        "linear", description="scaled_linear: Stable Diffusion's (betas linear in sqrt(beta))"
    )

    # Capabilities of the family (class attributes of its schema, never config keys):
    # latent: the diffusion runs on latents encoded once in prepare (rows: latents + captions);
    # conditional: eps takes the caption's embedding, eps(x_t, t, cond).
    latent: ClassVar[bool] = False
    conditional: ClassVar[bool] = False
    # The diffusers class its saved weights are (what `audit.models` imports are matched on).
    diffusers_class: ClassVar[str] = ""
    # How its MLflow model generates (raydefense/tracking/sampler_model.py: "ddim" or
    # "stable-diffusion"); None: the family's models are not logged to the Model Registry.
    sampler: ClassVar[Optional[str]] = None
    # A latent family's fields that choose how `prepare` encodes its rows (hashed with them).
    encoder_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _check_schedule(self) -> ModelConfig:
        if self.beta_end <= self.beta_start:
            raise ValueError("model.beta_end must be larger than model.beta_start")
        return self


# Model families by `model.kind`: each family's schema (a ModelConfig subclass whose `kind` is a
# Literal of its name), registered beside its backbone; `model_family` resolves one.
MODEL_FAMILIES: Registry[type[ModelConfig]] = Registry("model family")


_Family = TypeVar("_Family", bound=ModelConfig)


def as_family(cfg: ModelConfig, schema: type[_Family]) -> _Family:
    """cfg as `schema`'s family (what its backbone reads); ConfigError when it is another's."""
    if not isinstance(cfg, schema):
        want = schema.model_fields["kind"].default
        raise ConfigError(f"this needs model.kind={want}, but model.kind={cfg.kind}")
    return cfg
