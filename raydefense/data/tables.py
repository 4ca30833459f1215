"""The Parquet tables of an experiment (paths in `raydefense.layout`) and their typed readers.

rows: row_id, hash, split, shard, part, label, image (uint8 bytes), and captions (list<string>,
index 0 = the original caption) only when the source has captions. membership: row_id + one bool
column per trained model. shadow_draws: row_id + shadow_j:train, shadow_j:heldout per draw.
soft targets: row_id, draw, shard, t, teachers, x_t and target (float32 bytes). scores: target,
attack, params, row_id, is_member, part, score.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydefense.data.encoded import EncodedRows
from raydefense.data.examples import ImageData, SoftTargetData
from raydefense.data.plan import Plan, plan_from_tables
from raydefense.data.pool import to_model_range
from raydefense.errors import DataError
from raydefense.layout import (
    MEMBERSHIP,
    PLAN_JSON,
    ROWS,
    SHADOW_DRAWS,
    soft_targets_dir,
)
from raydefense.roster import STUDENT
from raydefense.storage import Storage


def write_plan(storage: Storage, plan: Plan) -> None:
    storage.write_table(ROWS, plan.to_table())
    storage.write_table(MEMBERSHIP, plan.membership_table())
    storage.write_table(SHADOW_DRAWS, plan.shadow_draws_table())
    storage.write_json(PLAN_JSON, plan.summary())


def read_plan(storage: Storage) -> Plan:
    shape = storage.read_json(PLAN_JSON)["image_shape"]
    draws = storage.read_table(SHADOW_DRAWS) if storage.exists(SHADOW_DRAWS) else None
    return plan_from_tables(storage.read_table(ROWS), storage.read_table(MEMBERSHIP), shape, draws)


def image_shape(storage: Storage) -> tuple[int, int, int]:
    c, h, w = storage.read_json(PLAN_JSON)["image_shape"]
    return int(c), int(h), int(w)


def decode_images(column: list[bytes] | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 bytes per row -> float32 [N, *shape] in [-1, 1]."""
    raw = np.frombuffer(b"".join(column), dtype=np.uint8).reshape(-1, *shape)
    return to_model_range(raw)


def model_training_images(storage: Storage, model: str, plan: Optional[Plan] = None) -> ImageData:
    """Exactly the rows the membership matrix assigns to `model` (invariant 2); `plan`: the
    already-read plan of this storage, else it is read."""
    plan = plan if plan is not None else read_plan(storage)
    if model not in plan.models:
        raise KeyError(f"{model!r} is not in the membership matrix ({plan.models})")
    mask = plan.membership[plan.models.index(model)]
    return ImageData(images=torch.from_numpy(to_model_range(plan.images[mask])))


def encode_float_rows(arr: np.ndarray) -> list[bytes]:
    """float32 [N, ...] -> one bytes value per row (portable: plain pyarrow reads it)."""
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(len(arr), -1)
    return [r.tobytes() for r in flat]


def encode_target_rows(arr: np.ndarray, dtype: str = "float32") -> list[bytes]:
    """Soft targets [N, ...] float32 -> one bytes value per row, as float32 or as bfloat16
    (the upper 16 bits of each float32, rounded to nearest even by torch)."""
    if dtype == "float32":
        return encode_float_rows(arr)
    half = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(torch.bfloat16)
    flat = half.view(torch.int16).numpy().reshape(len(arr), -1)
    return [r.tobytes() for r in flat]


def read_soft_targets(
    storage: Storage,
    shape: tuple[int, int, int],
    student: str = STUDENT,
    encoded: Optional[EncodedRows] = None,
    target_dtype: str = "float32",
) -> SoftTargetData:
    """A student's soft targets (all files of soft_targets_dir(student)), ordered by (row, draw).
    shape: (C, H, W) of x_t (a latent family's latent shape). encoded: a latent family's encoded
    rows, whence each target's condition (the embedding of its `caption`, gathered per batch).
    target_dtype: how distill stored the targets (`distill.target_dtype`); they are held so.

    Streamed: the (row, draw) keys are read first to place every example, then each file is read
    batch by batch straight into preallocated tensors (no Python bytes per row, no concatenated
    or sorted copy of the table), so the peak is the output plus one batch.
    """
    rel = soft_targets_dir(student)
    files = sorted(
        storage.path(f"{rel}/{f}") for f in storage.listdir(rel) if f.endswith(".parquet")
    )
    if not files:
        raise DataError(f"no soft targets under {storage.path(rel)}: run the distill stage")
    keys = [pq.read_table(f, columns=["row_id", "draw"], filesystem=storage.fs) for f in files]
    row_id = np.concatenate([k.column("row_id").to_numpy() for k in keys]).astype(np.int64)
    draw = np.concatenate([k.column("draw").to_numpy() for k in keys]).astype(np.int64)
    n = len(row_id)
    # A stable order makes student batches independent of how Ray Data split the files.
    order = np.lexsort((draw, row_id))  # order[k]: the file-order index of example k
    dest = np.empty(n, dtype=np.int64)
    dest[order] = np.arange(n)
    x_t = torch.empty((n, *shape), dtype=torch.float32)
    bf16 = target_dtype == "bfloat16"
    target = torch.empty((n, *shape), dtype=torch.bfloat16 if bf16 else torch.float32)
    t = np.empty(n, dtype=np.int64)
    group = np.empty(n, dtype=np.int64)
    caption = np.zeros(n, dtype=np.int64)
    has_caption = True
    columns = ["x_t", "target", "t", "shard"]
    offset = 0
    for f in files:
        parquet = pq.ParquetFile(f, filesystem=storage.fs)  # opened once: schema, then batches
        names = parquet.schema_arrow.names
        has_caption &= "caption" in names
        cols = columns + (["caption"] if "caption" in names else [])
        for batch in parquet.iter_batches(batch_size=4096, columns=cols):
            pos = torch.from_numpy(dest[offset : offset + batch.num_rows])
            x_t[pos] = torch.from_numpy(fixed_floats(batch.column("x_t"), shape))
            values = torch.from_numpy(fixed_floats(batch.column("target"), shape, bf16))
            target[pos] = values.view(torch.bfloat16) if bf16 else values
            where = pos.numpy()
            t[where] = batch.column("t").to_numpy()
            group[where] = batch.column("shard").to_numpy()
            if "caption" in cols:
                caption[where] = batch.column("caption").to_numpy()
            offset += batch.num_rows
    data = SoftTargetData(
        x_t=x_t, t=torch.from_numpy(t), target=target, group=torch.from_numpy(group)
    )
    if encoded is not None:
        if not has_caption:
            raise DataError(
                "the soft targets carry no caption column (written for an unconditional "
                "model); rerun distill with --force distill"
            )
        at = encoded.positions(row_id[order])
        data.cond_table = encoded.emb
        data.cond_index = torch.from_numpy(np.stack([at, caption], axis=1))
    return data


def fixed_floats(column: pa.Array, shape: tuple[int, ...], bf16: bool = False) -> np.ndarray:
    """A binary column of equal-length float32 rows -> [N, *shape] float32, read from the
    column's value buffer (a view; the caller copies it where it belongs). bf16: the rows are
    bfloat16, returned as their int16 bit patterns (`torch.from_numpy(...).view(torch.bfloat16)`
    reads them back)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        raise DataError("a soft-target file has empty rows; rerun distill with --force distill")
    wide = pa.types.is_large_binary(arr.type)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if wide else np.int32)
    offsets = offsets[arr.offset : arr.offset + len(arr) + 1]
    per_row = (2 if bf16 else 4) * int(np.prod(shape))
    if len(arr) and not np.all(np.diff(offsets) == per_row):
        kind = "bfloat16" if bf16 else "float32"
        raise DataError(
            f"soft-target rows are not {shape} {kind} (distill.target_dtype changed since they "
            "were written?); rerun distill with --force distill"
        )
    raw = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return raw.view(np.int16 if bf16 else np.float32).reshape(len(arr), *shape)
