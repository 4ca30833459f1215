"""The training example types: what a fit reads, whatever produced it.

A DDPM fit reads images; a DistillMD fit reads precomputed soft-target examples. Both are plain
tensors, so the loop in `raydefense.diffusion.training` does not know where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch


@dataclass
class ImageData:
    """DDPM training data: images [N, C, H, W] float32 in [-1, 1]."""

    images: torch.Tensor


@dataclass
class SoftTargetData:
    """DistillMD training data: precomputed (x_t, t, soft target) examples.

    x_t, target: [N, C, H, W] float32. t: [N] int64. group: [N] int64, the shard of the source row
    (batches alternate between groups under batching='alternate').
    """

    x_t: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    group: torch.Tensor


TrainData = Union[ImageData, SoftTargetData]
