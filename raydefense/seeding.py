"""All randomness derives from one base seed (invariant 4).

Per-row draws use numpy's SeedSequence over (base seed, row id, stream[, draw]), so a row's noise is
the same whatever batch, actor or retry it is computed in.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream ids keep independent uses of the same row apart.
STREAM_LOSS_ATTACK = 1
STREAM_SOFT_TARGET = 2
STREAM_QUALITY = 3
STREAM_SPLIT = 4
STREAM_TRAIN = 5
STREAM_SHADOW = 7
STREAM_GSA = 6
STREAM_ASSIGNMENT = 8  # distill.teacher_assignment = one_other: the teacher chosen per row
STREAM_DOMAIN = 9  # the spare pool rows the domain feature extractor trains on
STREAM_AUDIT_LATENT = 10  # latent models: the VAE posterior draw of a row an attack queries
STREAM_PROMPTS = 11  # text-to-image: which captions prompt the generated images
STREAM_CLID = 12  # CLiD: the noise of a row's (t, draw) queries, shared by its conditions
STREAM_PANG_WANG = 13  # Pang & Wang: the seeds of a row's generations
STREAM_REDIFFUSE = 14  # ReDiffuse: the seeds of a row's variations
STREAM_SYNTHETIC = 16  # distill.synthetic_per_teacher: a teacher's synthetic samples
STREAM_CAPTION = 15  # data.captioner: the sampling seed of a row's generated captions
STREAM_PROFILE = 17  # `raydefense profile`: the noise of a row's draws, shared by every t and model
STREAM_ONLINE = 18  # online LiRA: which audited rows each online draw trains on, and its shards


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts; stable across processes and platforms."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2)
    return int((int(state[0]) << 31) ^ int(state[1])) & 0x7FFFFFFFFFFFFFFF


def row_generator(seed: int, row_id: int, *stream: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, row_id, *stream))
    return g


def per_row_normal(
    shape_per_row: tuple[int, ...], row_ids: torch.Tensor | list[int], seed: int, *stream: int
) -> torch.Tensor:
    """[B, *shape_per_row] float32 standard normals, row i from its own generator."""
    ids = row_ids.tolist() if isinstance(row_ids, torch.Tensor) else list(row_ids)
    out = torch.empty((len(ids), *shape_per_row))
    for i, r in enumerate(ids):
        out[i] = torch.randn(shape_per_row, generator=row_generator(seed, r, *stream))
    return out
