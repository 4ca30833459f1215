"""Model families' schemas: `ModelConfig` subclasses registered in `MODEL_FAMILIES` by `kind`.

A family is a schema (its `kind`, its own fields and checks, its capabilities `latent` and
`conditional`) plus a backbone (`raydefense.diffusion.backbones`: how its networks are built and
loaded). The schemas live here, apart from the backbones, so that loading a config imports no
torch; a new family registers both from its own module (tests/unit/test_new_family.py).
"""

from __future__ import annotations

from raydefense.families.schema import DEFAULT_FAMILY, MODEL_FAMILIES, ModelConfig, as_family
from raydefense.families.sd_schema import SDConfig
from raydefense.families.unet2d_schema import UNet2DConfig


def model_family(kind: str) -> type[ModelConfig]:
    """The schema registered for `kind`; UnknownComponentError (a ConfigError) names the
    registered ones otherwise."""
    return MODEL_FAMILIES.get(kind)


def model_families() -> dict[str, type[ModelConfig]]:
    """Every registered family's schema by kind."""
    return {k: MODEL_FAMILIES.get(k) for k in MODEL_FAMILIES.names()}


__all__ = [
    "DEFAULT_FAMILY",
    "MODEL_FAMILIES",
    "ModelConfig",
    "SDConfig",
    "UNet2DConfig",
    "as_family",
    "model_families",
    "model_family",
]
