"""The memory model of a DistillMD student fit: what the soft targets and the model state cost,
from the config and the data's shapes, before anything runs.

The student reads its soft-target examples from host memory (`read_soft_targets`): per example
the target ([C, H, W], float32 or bfloat16), t, the batch group and, unless x_t is stored
(distill.store_x_t), the (row position, row, draw) keys its x_t is regenerated from per batch;
for text-to-image an index into the rows' caption embeddings (`SoftTargetData.cond_index`),
which are held once per row, not once per example. The regenerated x_t need each source row
once (`student_input_images`; a latent family's encoded mean and std). With distill.disk_dir
the targets live in a memory-mapped file there, paged in as batches read them, out of RAM.
`distill.draws_per_row: auto` gives every student step fresh (t, noise), so the example count
is the student's steps x batch size: at paper scale that is the number to watch. On the GPU a
fit holds fp32 weights, gradients, AdamW's two moments and the EMA copy (20 bytes per
parameter, whatever the autocast precision) plus activations, which depend on the batch and the
kernels and are measured by benchmarks/gpu_bench.py (`max_memory_gib`). docs/architecture.md
tabulates the figures for `cifar10_ddpm` and `sd15_pokemon`.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Optional

from raydefense.config import ExperimentConfig
from raydefense.defense.distillmd import auto_draws
from raydefense.roster import STUDENT, training_role

FLOAT32 = 4
INT64 = 8
# fp32 weights + gradients + AdamW exp_avg + exp_avg_sq + the EMA copy, per parameter.
STATE_BYTES_PER_PARAM = 5 * FLOAT32


@dataclass(frozen=True)
class Footprint:
    """Bytes of one student fit (all figures in bytes unless named otherwise)."""

    examples: int  # soft-target examples the student reads (members x draws)
    draws_per_row: int
    bytes_per_example: int  # as the student holds them now
    bytes_per_example_per_example_cond: int  # had each example carried x_t and its condition
    soft_targets: int  # examples x bytes_per_example
    conditions: int  # the caption-embedding table, once per row (text-to-image)
    sources: int  # the rows x_t is regenerated from, once per row (0 when x_t is stored)
    on_disk: int  # the targets, when distill.disk_dir maps them from a file (else 0)
    host_peak: int  # soft targets + conditions + sources - on_disk: what RAM must hold
    gpu_state: Optional[int]  # weights, grads, AdamW, EMA (None: no parameter count given)


def bytes_per_example(
    example_shape: tuple[int, ...],
    conditioned: bool,
    target_bytes: int = FLOAT32,
    store_x_t: bool = True,
) -> int:
    """Host bytes of one soft-target example as `read_soft_targets` holds it: the target
    (`target_bytes` per value: 4, or 2 for bfloat16), t and group (int64); x_t (float32) when
    stored, else the (position, row, draw) keys it is regenerated from (int64) and, for
    text-to-image, the caption drawn (checked on regeneration); for text-to-image its (row,
    caption) index into the condition table."""
    x_t = FLOAT32 * prod(example_shape) if store_x_t else 3 * INT64 + (INT64 if conditioned else 0)
    return target_bytes * prod(example_shape) + x_t + 2 * INT64 + (2 * INT64 if conditioned else 0)


def student_footprint(
    cfg: ExperimentConfig,
    example_shape: tuple[int, int, int],
    num_members: Optional[int] = None,
    cond_shape: Optional[tuple[int, int]] = None,
    captions_per_row: int = 1,
    params: Optional[int] = None,
) -> Footprint:
    """The student fit's memory from the config: example_shape (C, H, W) of x_t (a latent
    family's latent shape), num_members (default `data.num_members`; a split file's count
    otherwise), cond_shape (L, D) of a caption embedding (text-to-image), params (the network's
    parameter count, for the GPU state)."""
    members = num_members if num_members is not None else cfg.data.num_members
    if members is None:
        raise ValueError("data.num_members is unset (a split file decides it): pass num_members")
    steps = cfg.train.for_role(training_role(STUDENT)).steps
    draws = (
        auto_draws(steps, cfg.train.batch_size, members)
        if cfg.distill.draws_per_row == "auto"
        else int(cfg.distill.draws_per_row)
    )
    examples = members * draws
    conditioned = cond_shape is not None
    cond_row = FLOAT32 * prod(cond_shape) if cond_shape else 0
    target_bytes = 2 if cfg.distill.target_dtype == "bfloat16" else FLOAT32
    store = cfg.distill.store_x_t
    per_example = bytes_per_example(example_shape, conditioned, target_bytes, store)
    conditions = members * captions_per_row * cond_row
    # Regenerating x_t needs each source row once: an image, or a latent's mean and std.
    sources = 0 if store else members * FLOAT32 * prod(example_shape) * (2 if conditioned else 1)
    soft = examples * per_example
    on_disk = examples * target_bytes * prod(example_shape) if cfg.distill.disk_dir else 0
    return Footprint(
        examples=examples,
        draws_per_row=draws,
        bytes_per_example=per_example,
        bytes_per_example_per_example_cond=bytes_per_example(example_shape, False) + cond_row,
        soft_targets=soft,
        conditions=conditions,
        sources=sources,
        on_disk=on_disk,
        host_peak=soft + conditions + sources - on_disk,
        gpu_state=None if params is None else params * STATE_BYTES_PER_PARAM,
    )
