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


def read_soft_targets(
    storage: Storage,
    shape: tuple[int, int, int],
    student: str = STUDENT,
    encoded: Optional[EncodedRows] = None,
) -> SoftTargetData:
    """A student's soft targets (all files of soft_targets_dir(student)), ordered by (row, draw).
    shape: (C, H, W) of x_t (a latent family's latent shape). encoded: a latent family's encoded
    rows, whence each target's condition (the embedding of its `caption`)."""
    rel = soft_targets_dir(student)
    files = [f for f in storage.listdir(rel) if f.endswith(".parquet")]
    table = pa.concat_tables(
        [pq.read_table(storage.path(f"{rel}/{f}"), filesystem=storage.fs) for f in files]
    )
    # A stable order makes student batches independent of how Ray Data split the files.
    table = table.sort_by([("row_id", "ascending"), ("draw", "ascending")])

    def floats(col: str) -> torch.Tensor:
        raw = b"".join(table.column(col).to_pylist())
        return torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(-1, *shape).copy())

    return SoftTargetData(
        x_t=floats("x_t"),
        t=torch.from_numpy(table.column("t").to_numpy().astype(np.int64)),
        target=floats("target"),
        group=torch.from_numpy(table.column("shard").to_numpy().astype(np.int64)),
        cond=None if encoded is None else _conditions(table, encoded),
    )


def _conditions(table: pa.Table, encoded: EncodedRows) -> torch.Tensor:
    """[N, L, D]: the embedding of each soft target's (row, caption)."""
    if "caption" not in table.column_names:
        raise DataError(
            "the soft targets carry no caption column (written for an unconditional model); "
            "rerun distill with --force distill"
        )
    pos = torch.from_numpy(encoded.positions(table.column("row_id").to_numpy()))
    caption = torch.from_numpy(table.column("caption").to_numpy().astype(np.int64))
    return encoded.emb[pos, caption]
