"""The training example types: what a fit reads, whatever produced it.

A DDPM fit reads images; a DistillMD fit reads precomputed soft-target examples. Both are plain
tensors, so the loop in `raydefense.diffusion.training` does not know where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


@dataclass
class ImageData:
    """DDPM training data: images [N, C, H, W] float32 in [-1, 1]."""

    images: torch.Tensor


@dataclass
class SoftTargetData:
    """DistillMD training data: precomputed (x_t, t, soft target) examples.

    x_t, target: [N, C, H, W] float32. t: [N] int64. group: [N] int64, the shard of the source row
    (batches alternate between groups under batching='alternate'). cond: [N, L, D] float32, the
    text embedding each target was computed with (text-to-image), else None.
    """

    x_t: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    group: torch.Tensor
    cond: Optional[torch.Tensor] = None


@dataclass
class LatentData:
    """Text-to-image training data for a latent backbone: per image the scaled VAE posterior and
    its captions' text embeddings.

    mean, std: [N, C, h, w] float32 (a latent x0 is mean + std * N(0, I), drawn per use). emb:
    [N, K, L, D] float32, n_captions: [N] int64 >= 1 (caption 0 = the original). diversify:
    each use draws one of the image's captions uniformly (prompt diversification, paper §3.1);
    otherwise caption 0 always.
    """

    mean: torch.Tensor
    std: torch.Tensor
    emb: torch.Tensor
    n_captions: torch.Tensor
    diversify: bool = False


TrainData = Union[ImageData, SoftTargetData, LatentData]
