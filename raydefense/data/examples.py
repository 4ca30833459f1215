"""The training example types: what a fit reads, whatever produced it.

A DDPM fit reads images; a DistillMD fit reads precomputed soft-target examples. Both are plain
tensors, so the loop in `raydefense.diffusion.training` does not know where they came from.
"""

from __future__ import annotations

from collections.abc import Callable
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

    x_t: [N, C, H, W] float32 as stored (distill.store_x_t), or None, and then `regenerate`
    (idx [B] -> x_t [B, C, H, W]) remakes them per batch from the examples' seeded (row, draw)
    keys (`raydefense.diffusion.noising.RegeneratedInputs`); `inputs(idx)` gives either.
    target: [N, C, H, W], float32 or bfloat16 (`distill.target_dtype`). t: [N] int64. group:
    [N] int64, the shard of the source row (batches alternate between groups under
    batching='alternate'). The text embedding each target was computed with (text-to-image) is
    either `cond` [N, L, D] float32, or, without repeating it per example, `cond_table`
    [R, K, L, D] (each source row's caption embeddings) indexed by `cond_index` [N, 2] int64
    (row position, caption): at SD's 77 x 768 that is 236 KB per example saved, 76 GB over
    `sd15_pokemon`'s 320k examples. Both None: unconditional.
    """

    x_t: Optional[torch.Tensor]
    t: torch.Tensor
    target: torch.Tensor
    group: torch.Tensor
    cond: Optional[torch.Tensor] = None
    cond_table: Optional[torch.Tensor] = None
    cond_index: Optional[torch.Tensor] = None
    regenerate: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def __post_init__(self) -> None:
        if (self.x_t is None) == (self.regenerate is None):
            raise ValueError("SoftTargetData needs exactly one of x_t and regenerate")

    def __len__(self) -> int:
        return len(self.t)

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] float32: x_t of examples `idx` [B] (stored, or regenerated)."""
        if self.x_t is not None:
            return self.x_t[idx]
        assert self.regenerate is not None  # __post_init__
        return self.regenerate(idx)

    def conditions(self, idx: torch.Tensor) -> Optional[torch.Tensor]:
        """[B, L, D] the conditions of examples `idx` [B] (gathered per batch), or None."""
        if self.cond is not None:
            return self.cond[idx]
        if self.cond_table is not None and self.cond_index is not None:
            pos, caption = self.cond_index[idx].unbind(1)
            return self.cond_table[pos, caption]
        return None


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
