"""The `sd` backbone: Stable Diffusion's latent, text-conditioned UNet2DConditionModel, fine-tuned
from a local diffusers pipeline directory (`model.pipeline`), as diffusers' `train_text_to_image`
example does (the paper's SD v1.5 setting): only the UNet trains; the VAE and the CLIP text
encoder are frozen and live in `SDCodec`.

The diffusion runs on latents: x0 = scaling_factor * (VAE posterior sample), so every consumer
(training, soft targets, attacks, samplers) sees [B, 4, H/f, W/f] tensors and the caption's CLIP
embedding [B, L, D] as `cond`. Saved weights are plain diffusers directories:
`UNet2DConditionModel.from_pretrained(<model dir>/ema)` loads a fine-tuned UNet, which drops into
the original pipeline in place of its `unet/`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from raydefense.config import ModelConfig, as_family
from raydefense.diffusion.backbones.backbone import BACKBONES
from raydefense.diffusion.eps import EpsNet
from raydefense.diffusion.tiny_sd import TINY, tiny_pipeline_dir
from raydefense.errors import ConfigError
from raydefense.families.sd_schema import SDConfig

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"


def pipeline_dir(model: ModelConfig) -> str:
    """The local pipeline directory `model.pipeline` names ('tiny': built on first use), checked
    to hold every component; ConfigError (one line) otherwise."""
    cfg = as_family(model, SDConfig)
    if not cfg.pipeline:
        raise ConfigError("model.kind=sd needs model.pipeline: a local diffusers pipeline dir")
    path = tiny_pipeline_dir() if cfg.pipeline == TINY else os.path.expanduser(cfg.pipeline)
    if not os.path.isdir(path):
        raise ConfigError(
            f"model.pipeline {cfg.pipeline!r} is not a directory: point it at a local diffusers "
            "Stable Diffusion pipeline (nothing is downloaded; see docs/text-to-image.md)"
        )
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
    if missing:
        raise ConfigError(
            f"model.pipeline {cfg.pipeline!r} has no {', '.join(c + '/' for c in missing)}: a "
            f"Stable Diffusion pipeline directory holds {', '.join(COMPONENTS)}; save the whole "
            "pipeline (StableDiffusionPipeline.save_pretrained)"
        )
    return path


def check_scheduler(cfg: ModelConfig, path: str) -> None:
    """The pipeline's noise schedule must be the one `model.*` configures (attacks and
    samplers use the config's), and it must predict eps."""
    with open(os.path.join(path, SCHEDULER_CONFIG)) as f:
        sched = json.load(f)
    pred = sched.get("prediction_type", "epsilon")
    if pred != "epsilon":
        raise ConfigError(
            f"model.pipeline {as_family(cfg, SDConfig).pipeline!r} predicts {pred!r}; "
            "raydefense trains and attacks eps-prediction models only: use an epsilon pipeline "
            "(SD v1.x)"
        )
    want = {
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "beta_schedule": cfg.beta_schedule,
    }
    for key, value in want.items():
        got = sched.get(key)
        if got != value and not (isinstance(value, float) and abs(float(got) - value) < 1e-12):
            raise ConfigError(
                f"model.{key}={value!r} but the pipeline's scheduler has {got!r}: set "
                f"model.{key}={got!r} (the presets for SD set all four schedule fields)"
            )


def _load_unet(directory: str) -> UNet2DConditionModel:
    # low_cpu_mem_usage=False: the default path wants `accelerate` and warns without it.
    unet = UNet2DConditionModel.from_pretrained(directory, low_cpu_mem_usage=False)
    return unet


class SDUNetNet(EpsNet):
    """A UNet2DConditionModel as an EpsNet: eps = unet(z_t, t, encoder_hidden_states=cond)."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        """x_t [B, 4, h, w] latents; t [B] long; cond [B, L, D] text embeddings (required)."""
        if cond is None:
            raise ValueError(
                "the sd backbone is text-conditioned: eps(x_t, t, cond) needs cond, the "
                "caption's text embeddings [B, L, D] (the empty prompt's for unconditional)"
            )
        out: torch.Tensor = self.unet(x_t, t, encoder_hidden_states=cond).sample  # type: ignore[operator]
        return out

    def save(self, directory: str) -> None:
        self.unet.save_pretrained(directory)  # type: ignore[attr-defined]  # diffusers stubs


class SD:
    """The `sd` backbone (see the module docstring)."""

    def build(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> EpsNet:
        """The pipeline's pretrained UNet, trainable (fine-tuning starts from it)."""
        path = pipeline_dir(cfg)
        check_scheduler(cfg, path)
        unet = _load_unet(os.path.join(path, "unet"))
        if as_family(cfg, SDConfig).gradient_checkpointing:
            unet.enable_gradient_checkpointing()  # type: ignore[attr-defined]  # diffusers stubs
        return SDUNetNet(unet).train()

    def load(self, directory: str) -> EpsNet:
        return SDUNetNet(_load_unet(directory)).eval().requires_grad_(False)

    def data_shape(
        self, cfg: ModelConfig, image_shape: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        """The latent shape of images of image_shape (C, H, W): (latent channels, H/f, W/f)."""
        path = pipeline_dir(cfg)
        with open(os.path.join(path, "vae", "config.json")) as f:
            vae = json.load(f)
        f_ = 2 ** (len(vae["block_out_channels"]) - 1)
        _, h, w = image_shape
        if h % f_ or w % f_:
            raise ConfigError(
                f"images of {h}x{w} do not divide by the VAE's downsampling factor {f_}: set "
                f"data.resolution to a multiple of {f_}"
            )
        return int(vae["latent_channels"]), h // f_, w // f_


BACKBONES.register("sd")(SD())


class SDCodec:
    """The frozen parts of a Stable Diffusion pipeline: images <-> latents (AutoencoderKL) and
    captions -> text embeddings (CLIP tokenizer + text encoder)."""

    def __init__(self, cfg: ModelConfig, device: str = "cpu") -> None:
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per load, in every worker's log

        path = pipeline_dir(cfg)
        self.device = device
        vae = AutoencoderKL.from_pretrained(os.path.join(path, "vae"), low_cpu_mem_usage=False)
        self.vae = vae.eval().requires_grad_(False).to(device)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
        text = CLIPTextModel.from_pretrained(os.path.join(path, "text_encoder"))
        self.text_encoder = text.eval().requires_grad_(False).to(device)

    @torch.no_grad()
    def latent_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] in [-1, 1] -> (mean, std) of the scaled latent posterior, each
        [B, 4, H/f, W/f]: a latent x0 is mean + std * N(0, I) (diffusers' training samples
        the posterior, not its mode; SecMI-LDM too)."""
        if images.shape[1] != 3:
            raise ValueError(f"the VAE encodes RGB images; got {images.shape[1]} channels")
        dist = self.vae.encode(images.to(self.device)).latent_dist
        return dist.mean * self.scaling_factor, dist.std * self.scaling_factor

    @property
    def end_id(self) -> int:
        """The end-of-text token id (CLIP pads with it too)."""
        return int(self.tokenizer.eos_token_id)

    def token_ids(self, captions: list[str]) -> torch.Tensor:
        """N captions -> [N, L] long token ids, padded/truncated to the tokenizer's
        model_max_length as SD's pipelines do (position 0: the start token)."""
        ids: torch.Tensor = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids

    @torch.no_grad()
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """[N, L] token ids -> [N, L, D] CLIP last hidden states (on the codec's device)."""
        out: torch.Tensor = self.text_encoder(ids.to(self.device))[0]
        return out

    @torch.no_grad()
    def embed(self, captions: list[str]) -> torch.Tensor:
        """N captions -> [N, L, D] CLIP last hidden states. The empty string is the
        unconditional prompt."""
        return self.embed_ids(self.token_ids(captions))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, 4, h, w] scaled latents -> [B, 3, H, W] images in [-1, 1]."""
        out = self.vae.decode(latents.to(self.device) / self.scaling_factor).sample
        return out.clamp(-1.0, 1.0)
