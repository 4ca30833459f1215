"""A tiny, random, Stable-Diffusion-shaped pipeline built offline (`model.pipeline: tiny`).

Nothing can be downloaded, so the text-to-image path is exercised on a pipeline with the real
layout (what `StableDiffusionPipeline.save_pretrained` writes: model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/) and SD's component classes at toy sizes: a 2-block
UNet2DConditionModel with cross-attention, a 2-block AutoencoderKL (downsampling by 2: 32 x 32
images -> 4 x 16 x 16 latents), a 2-layer CLIPTextModel and a CLIPTokenizer over a byte-level
vocabulary (every byte, with and without `</w>`, no merges). Its weights are random (seeded), so
it tests plumbing, not image quality: fine-tuning it on digits is training from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import torch

TINY = "tiny"
TINY_VERSION = 2  # bump when the architecture below changes: the cache key includes it
TOKEN_LENGTH = 16  # the tokenizer's (and text encoder's) sequence length
TINY_LOGVAR = -12.0  # posterior log-variance (std 0.0025) of the tiny VAE
# Latents of the random encoder on digits have std ~0.19; SD scales its latents to unit variance
# (0.18215 for its trained VAE), this one by 5.
TINY_SCALING_FACTOR = 5.0


def tiny_pipeline_dir() -> str:
    """Where `model.pipeline: tiny` lives, built on first use: $RAYDEFENSE_CACHE (default
    ~/.cache/raydefense)/tiny-sd-v<N>. Every node builds the same weights (seeded)."""
    root = os.environ.get("RAYDEFENSE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "raydefense"
    )
    path = os.path.join(root, f"tiny-sd-v{TINY_VERSION}")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        write_tiny_pipeline(path)
    return path


def byte_level_tokenizer(directory: str) -> Any:
    """A CLIPTokenizer whose vocabulary is the 256 byte symbols (with and without the
    end-of-word mark) plus the start/end tokens, and no merges: every character is a token.
    Writes its vocab.json and merges.txt into `directory` (created)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    os.makedirs(directory, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(s, len(vocab))
    vocab_file, merges_file = (
        os.path.join(directory, "vocab.json"),
        os.path.join(directory, "merges.txt"),
    )
    with open(vocab_file, "w") as f:
        json.dump(vocab, f)
    with open(merges_file, "w") as f:
        f.write("#version: 0.2\n")
    return CLIPTokenizer(vocab_file, merges_file, model_max_length=TOKEN_LENGTH)


def write_tiny_pipeline(directory: str, seed: int = 0) -> None:
    """Build the tiny pipeline (module docstring) and save it to `directory` atomically (a
    temporary sibling renamed into place, so a crash never leaves a half-written pipeline)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-sd-", dir=parent)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(
                sample_size=16,
                in_channels=4,
                out_channels=4,
                block_out_channels=(16, 32),
                layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
                norm_num_groups=8,
            )
            vae = AutoencoderKL(
                block_out_channels=(8, 16),
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                latent_channels=4,
                norm_num_groups=4,
                sample_size=32,
                scaling_factor=TINY_SCALING_FACTOR,
            )
            # A trained VAE's posterior is nearly deterministic; a random one's is not (its
            # log-variance starts near 0, burying the image under posterior noise). Pin the
            # log-variance half of quant_conv to a trained-VAE-like constant.
            with torch.no_grad():
                quant: Any = vae.quant_conv  # type: ignore[attr-defined]  # diffusers stubs
                assert quant is not None
                quant.weight[4:] = 0.0
                quant.bias[4:] = TINY_LOGVAR
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    bos_token_id=0,
                    eos_token_id=2,
                    hidden_size=32,
                    intermediate_size=37,
                    layer_norm_eps=1e-05,
                    num_attention_heads=4,
                    num_hidden_layers=2,
                    pad_token_id=1,
                    vocab_size=1000,
                    max_position_embeddings=TOKEN_LENGTH,
                )
            )
        tok_dir = tempfile.mkdtemp(prefix="tok-", dir=tmp)
        tokenizer = byte_level_tokenizer(tok_dir)
        scheduler = DDPMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            steps_offset=1,
            clip_sample=False,
        )
        pipe = StableDiffusionPipeline(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(tmp)  # type: ignore[attr-defined]  # diffusers stubs
        shutil.rmtree(tok_dir)
        if os.path.isdir(directory):  # another process won the race: keep its copy
            shutil.rmtree(tmp)
            return
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
