"""The MLflow pyfunc of a raydefense model: generate images with diffusers' own DDIM sampler.

Logged as an MLflow "model from code": MLflow stores this file with the model and runs it on
load, so loading needs torch and diffusers only, not raydefense. Artifacts:
- `weights`: the model directory (`ema/` and `unet/` diffusers UNets; `ema/` generates);
- `model.json`: the noise schedule (num_train_timesteps, beta_start, beta_end, beta_schedule),
  the family's `sampler` (`ddim`: a pixel UNet2DModel under DDIMPipeline; `stable-diffusion`: a
  fine-tuned UNet2DConditionModel in the StableDiffusionPipeline whose VAE, text encoder and
  tokenizer it runs with, `pipeline`, a local path where loaded) and the family (`kind`).

Input: a DataFrame with one row per image: `seed` (int; the image's noise), and `prompt` (str)
for `stable-diffusion`. Params: `num_inference_steps` (default 50), `guidance_scale`
(`stable-diffusion`; default 7.5). Output: uint8 images [N, H, W, C].
"""

from __future__ import annotations

import json
import os
from typing import Any

import mlflow
import numpy as np

# The samplers of models logged before `sampler` was recorded, by their family.
SAMPLER_OF_KIND = {"unet2d": "ddim", "sd": "stable-diffusion"}


def sampler_of(meta: dict[str, Any]) -> str:
    """The logged model's sampler (`ddim` or `stable-diffusion`)."""
    return str(meta.get("sampler") or SAMPLER_OF_KIND[meta["kind"]])


class DiffusionSampler(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    def load_context(self, context: Any) -> None:
        import torch
        from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

        with open(context.artifacts["model.json"]) as f:
            self.meta = json.load(f)
        weights = os.path.join(context.artifacts["weights"], "ema")
        s = self.meta["schedule"]
        self.scheduler = DDIMScheduler(
            num_train_timesteps=s["num_train_timesteps"],
            beta_start=s["beta_start"],
            beta_end=s["beta_end"],
            beta_schedule=s["beta_schedule"],
            clip_sample=sampler_of(self.meta) == "ddim",
            set_alpha_to_one=False,
        )
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if sampler_of(self.meta) == "stable-diffusion":
            from diffusers import StableDiffusionPipeline

            unet = UNet2DConditionModel.from_pretrained(weights, low_cpu_mem_usage=False)
            self.pipe = StableDiffusionPipeline.from_pretrained(
                self.meta["pipeline"],
                unet=unet,
                scheduler=self.scheduler,
                safety_checker=None,
                requires_safety_checker=False,
            ).to(self.device)
        else:
            from diffusers import DDIMPipeline

            unet = UNet2DModel.from_pretrained(weights, low_cpu_mem_usage=False)
            pipe: Any = DDIMPipeline(unet=unet, scheduler=self.scheduler)
            self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    # No type hints: MLflow would read them as an input schema (the signature is logged).
    def predict(self, context, model_input, params=None):
        import torch

        params = params or {}
        steps = int(params.get("num_inference_steps", 50))
        seeds = [int(s) for s in model_input["seed"]]
        gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
        if sampler_of(self.meta) == "stable-diffusion":
            out = self.pipe(
                prompt=[str(p) for p in model_input["prompt"]],
                generator=gens,
                num_inference_steps=steps,
                guidance_scale=float(params.get("guidance_scale", 7.5)),
                output_type="np",
            ).images
        else:
            out = self.pipe(
                batch_size=len(seeds), generator=gens, num_inference_steps=steps, output_type="np"
            ).images
        images: np.ndarray = np.clip(np.rint(np.asarray(out) * 255.0), 0, 255).astype(np.uint8)
        return images


mlflow.models.set_model(DiffusionSampler())
