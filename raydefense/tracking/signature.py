"""The MLflow signature and pip requirements of a logged raydefense model (its pyfunc:
raydefense/tracking/sampler_model.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from raydefense.tracking.sampler_model import sampler_of


def sampler_signature(meta: dict[str, Any]) -> Any:
    """Input: one row per image, `seed` (long) and, for Stable Diffusion, `prompt` (string).
    Params: `num_inference_steps` (long, 50) and, for Stable Diffusion, `guidance_scale`
    (double, 7.5). Output: uint8 images [-1, H, W, C]."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    sd = sampler_of(meta) == "stable-diffusion"
    c, h, w = meta["image_shape"]
    inputs: list[ColSpec | TensorSpec] = [ColSpec("long", "seed")]
    if sd:
        inputs.append(ColSpec("string", "prompt"))
    params = [ParamSpec("num_inference_steps", "long", 50)]
    if sd:
        params.append(ParamSpec("guidance_scale", "double", 7.5))
    return ModelSignature(
        inputs=Schema(inputs),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, h, w, c))]),
        params=ParamSchema(params),
    )


def pip_requirements(meta: dict[str, Any]) -> list[str]:
    """What loading the pyfunc needs, pinned to the versions that trained the model."""
    import diffusers
    import mlflow
    import torch

    reqs = [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"diffusers=={diffusers.__version__}",
        f"numpy=={np.__version__}",
    ]
    if sampler_of(meta) == "stable-diffusion":
        import transformers

        reqs.append(f"transformers=={transformers.__version__}")
    return reqs
