"""A tiny Stable-Diffusion-shaped pipeline built offline (`model.pipeline: tiny`).

Nothing can be downloaded, so the text-to-image path is exercised on a pipeline with the real
layout (what `StableDiffusionPipeline.save_pretrained` writes: model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/) and SD's component classes at toy sizes: a 2-block
UNet2DConditionModel with cross-attention, a 2-block AutoencoderKL (downsampling by 2: 32 x 32
images -> 4 x 16 x 16 latents), a 2-layer CLIPTextModel and a CLIPTokenizer over a byte-level
vocabulary (every byte, with and without `</w>`, no merges).

The UNet and the text encoder are random (seeded): fine-tuning the UNet on digits is training
from scratch. The VAE is *trained*, as SD's is before any fine-tuning: briefly (VAE_STEPS, about
40 s on 2 CPU cores) as an autoencoder on random crops of scikit-learn's two sample photographs
(china.jpg, flower.jpg), which no dataset of this project contains. Like SD's VAE, it has never
seen the members, so its reconstructions do not leak membership, yet its decoder turns latents
into images (digits reconstruct at ~0.005 MSE on [-1, 1]), which the black-box attacks (Pang &
Wang, ReDiffuse) and image-space quality metrics need. Its latents are scaled to unit variance on
the training crops, as SD's 0.18215 was chosen on its own training data.

Built per node, from seeds, into a cache; CPU float32 training is reproducible on one machine but
may differ in the last bits between CPU types: on a cluster of mixed nodes, build it once and
point `model.pipeline` at the saved directory on shared storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TINY = "tiny"
TINY_VERSION = 4  # bump when the architecture or training below changes: the cache key has it
# The tokenizer's (and text encoder's) sequence length. Every character is a token, so this must
# hold a whole caption: the longest digits_captioned caption is 43 characters (+ start and end).
TOKEN_LENGTH = 48
TINY_LOGVAR = -12.0  # posterior log-variance (std 0.0025) of the tiny VAE
# The VAE's autoencoder training: Adam steps, batch, learning rate, and the crop bank's size.
VAE_STEPS, VAE_BATCH, VAE_LR, VAE_CROPS = 600, 16, 4e-3, 4096


def tiny_pipeline_dir() -> str:
    """Where `model.pipeline: tiny` lives, built on first use: $RAYDEFENSE_CACHE (default
    ~/.cache/raydefense)/tiny-sd-v<N>. Built once per node (a file lock), from seeds."""
    root = os.environ.get("RAYDEFENSE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "raydefense"
    )
    path = os.path.join(root, f"tiny-sd-v{TINY_VERSION}")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        # One builder per node: the other processes (Ray workers) wait for it, then reuse it.
        with _file_lock(path + ".lock"):
            if not os.path.isfile(os.path.join(path, "model_index.json")):
                write_tiny_pipeline(path)
    return path


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def photo_crops(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """n random crops of scikit-learn's two sample photographs (427 x 640 RGB each), as float
    [n, 3, size, size] in [-1, 1]: crop sides 32..128 px resized (antialiased) to `size`, half
    flipped, 30% made grey, half contrast-stretched by 1..4x (clamped), so that the VAE also sees
    flat backgrounds and saturated strokes."""
    from sklearn.datasets import load_sample_images

    photos = [
        torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1.0
        for img in load_sample_images().images
    ]
    g = torch.Generator().manual_seed(seed)

    def uniform() -> float:
        return float(torch.rand(1, generator=g))

    crops = []
    for _ in range(n):
        photo = photos[int(torch.randint(len(photos), (1,), generator=g))]
        side = int(torch.randint(32, 129, (1,), generator=g))
        y = int(torch.randint(photo.shape[1] - side + 1, (1,), generator=g))
        x = int(torch.randint(photo.shape[2] - side + 1, (1,), generator=g))
        crop = F.interpolate(
            photo[None, :, y : y + side, x : x + side],
            size=size,
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        if uniform() < 0.5:
            crop = crop.flip(-1)
        if uniform() < 0.3:
            crop = crop.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        if uniform() < 0.5:
            crop = ((crop - crop.mean()) * (1.0 + 3.0 * uniform())).clamp(-1.0, 1.0)
        crops.append(crop)
    return torch.cat(crops)


def train_tiny_vae(vae: Any, seed: int) -> float:
    """Train `vae` (AutoencoderKL, in place) as an autoencoder on `photo_crops`: reconstruction
    MSE of decode(posterior mean) plus a 1e-4 latent L2 (keeps the latent scale bounded), Adam.
    The log-variance half of quant_conv stays pinned (it gets no gradient from the mean). Returns
    the scaling factor that gives the crops' scaled latents unit variance (3 significant digits)."""
    crops = photo_crops(VAE_CROPS, seed)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(vae.parameters(), lr=VAE_LR)
    vae.train()
    for _ in range(VAE_STEPS):
        x = crops[torch.randint(len(crops), (VAE_BATCH,), generator=g)]
        z = vae.encode(x).latent_dist.mean
        loss = F.mse_loss(vae.decode(z).sample, x) + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vae.eval()
    with torch.no_grad():
        std = torch.cat([vae.encode(c).latent_dist.mean for c in crops[:1024].split(256)]).std()
    return float(f"{1.0 / float(std):.3g}")


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
            )
            # A trained VAE's posterior is nearly deterministic; pin the log-variance half of
            # quant_conv to a trained-VAE-like constant (a KL term would take far longer).
            with torch.no_grad():
                quant: Any = vae.quant_conv  # type: ignore[attr-defined]  # diffusers stubs
                assert quant is not None
                quant.weight[4:] = 0.0
                quant.bias[4:] = TINY_LOGVAR
            scaling_factor = train_tiny_vae(vae, seed)
            vae.register_to_config(scaling_factor=scaling_factor)  # type: ignore[attr-defined]
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
