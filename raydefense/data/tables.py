"""The Parquet tables of an experiment (paths in `raydefense.layout`) and their typed readers.

rows: row_id, hash, split, shard, part, label, image (uint8 bytes), and captions (list<string>,
index 0 = the original caption) only when the source has captions. membership: row_id + one bool
column per trained model. shadow_draws: row_id + shadow_j:train, shadow_j:heldout per draw.
soft targets: row_id, draw, shard, t, teachers, target (float32 or bfloat16 bytes), caption
(text-to-image) and, with distill.store_x_t, x_t (float32 bytes). scores: target,
attack, params, row_id, is_member, part, score.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from math import prod
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydefense.data.encoded import EncodedRows
from raydefense.data.examples import ImageData, SoftTargetData
from raydefense.data.plan import Plan, plan_from_tables
from raydefense.data.pool import to_model_range
from raydefense.diffusion.noising import RegeneratedInputs
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import DataError, ResourceError
from raydefense.layout import (
    MEMBERSHIP,
    PLAN_JSON,
    ROWS,
    SHADOW_DRAWS,
    public_rows,
    soft_targets_dir,
    synthetic_dir,
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
    noising: Optional[tuple[int, NoiseSchedule, bool]] = None,
    disk_dir: Optional[str] = None,
) -> SoftTargetData:
    """A student's soft targets (all files of soft_targets_dir(student)), ordered by (row, draw).
    shape: (C, H, W) of x_t (a latent family's latent shape). encoded: a latent family's encoded
    rows, whence each target's condition (the embedding of its `caption`, gathered per batch).
    target_dtype: how distill stored the targets (`distill.target_dtype`); they are held so.
    noising: (seed, schedule, prompt diversification) of the run, which regenerate x_t per batch
    when distill did not store them (distill.store_x_t=false); the source rows are then read
    once per row (`student_input_images`, or the encoded latents). disk_dir: hold the targets
    in a memory-mapped file there (`targets_buffer`, distill.disk_dir) instead of
    RAM: a paper-scale student's targets outgrow any host, and its batches read them at random.

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
    parquets = [pq.ParquetFile(f, filesystem=storage.fs) for f in files]  # each opened once
    keys = [p.read(columns=["row_id", "draw"]) for p in parquets]
    names = [set(p.schema_arrow.names) for p in parquets]
    stored = {"x_t" in present for present in names}
    if len(stored) > 1:
        raise DataError(
            f"{storage.path(rel)} mixes files with and without x_t; rerun with --force distill"
        )
    store_x_t = stored.pop()
    if not store_x_t and noising is None:
        raise ValueError("these soft targets store no x_t: pass noising=(seed, schedule, ...)")
    row_id = np.concatenate([k.column("row_id").to_numpy() for k in keys]).astype(np.int64)
    draw = np.concatenate([k.column("draw").to_numpy() for k in keys]).astype(np.int64)
    n = len(row_id)
    # A stable order makes student batches independent of how Ray Data split the files.
    order = np.lexsort((draw, row_id))  # order[k]: the file-order index of example k
    dest = np.empty(n, dtype=np.int64)
    dest[order] = np.arange(n)
    x_t = torch.empty((n, *shape), dtype=torch.float32) if store_x_t else None
    bf16 = target_dtype == "bfloat16"
    target = targets_buffer((n, *shape), torch.bfloat16 if bf16 else torch.float32, disk_dir)
    t = np.empty(n, dtype=np.int64)
    group = np.empty(n, dtype=np.int64)
    caption = np.zeros(n, dtype=np.int64)
    has_caption = all("caption" in present for present in names)
    columns = ["target", "t", "shard"] + (["x_t"] if store_x_t else [])
    offset = 0
    for parquet, present in zip(parquets, names):
        cols = columns + (["caption"] if "caption" in present else [])
        for batch in parquet.iter_batches(batch_size=4096, columns=cols):
            pos = torch.from_numpy(dest[offset : offset + batch.num_rows])
            if x_t is not None:
                x_t[pos] = torch.from_numpy(fixed_floats(batch.column("x_t"), shape))
            values = torch.from_numpy(fixed_floats(batch.column("target"), shape, bf16))
            target[pos] = values.view(torch.bfloat16) if bf16 else values
            where = pos.numpy()
            t[where] = batch.column("t").to_numpy()
            group[where] = batch.column("shard").to_numpy()
            if "caption" in cols:
                caption[where] = batch.column("caption").to_numpy()
            offset += batch.num_rows
    sorted_rows, sorted_draws = row_id[order], draw[order]
    at = encoded.positions(sorted_rows) if encoded is not None else None  # rows in `encoded`
    regenerate = None
    if x_t is None:
        assert noising is not None  # checked above
        seed, schedule, diversify = noising
        if encoded is not None:
            assert at is not None
            regenerate = RegeneratedInputs(
                seed, schedule, encoded.mean, at, sorted_rows, sorted_draws, t,
                std=encoded.std, n_captions=encoded.n_captions.numpy(), caption=caption,
                diversify=diversify,
            )  # fmt: skip
        else:
            ids, x0 = student_input_images(storage, student, sorted_rows, shape)
            row_pos = np.searchsorted(ids, sorted_rows)
            regenerate = RegeneratedInputs(
                seed, schedule, x0, row_pos, sorted_rows, sorted_draws, t
            )
    data = SoftTargetData(
        x_t=x_t,
        t=torch.from_numpy(t),
        target=target,
        group=torch.from_numpy(group),
        regenerate=regenerate,
    )
    if encoded is not None and at is not None:
        if not has_caption:
            raise DataError(
                "the soft targets carry no caption column (written for an unconditional "
                "model); rerun distill with --force distill"
            )
        data.cond_table = encoded.emb
        data.cond_index = torch.from_numpy(np.stack([at, caption], axis=1))
    return data


def targets_buffer(
    shape: tuple[int, ...], dtype: torch.dtype, disk_dir: Optional[str] = None
) -> torch.Tensor:
    """An uninitialised tensor of `shape` and `dtype`: in RAM, or (disk_dir) backed by a file
    there, mapped shared, so the kernel pages it to disk and back as batches touch it and the
    host never has to hold it all. The file is unlinked as soon as it is mapped: the mapping
    keeps it alive while the tensor lives, and nothing is left behind, even by a killed
    worker. Its blocks are reserved first, so a full disk is one error here, not a bus error
    mid-fit.

    Raises:
        ResourceError: disk_dir has not the space (or is not a writable directory).
    """
    nbytes = prod(shape) * torch.empty((), dtype=dtype).element_size()
    if disk_dir is None or nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    try:
        fd, path = tempfile.mkstemp(prefix="raydefense-targets-", dir=disk_dir)
    except OSError as e:
        raise ResourceError(
            f"distill.disk_dir={disk_dir} is not a writable directory ({e.strerror}); "
            "point it at local disk with room for the student's soft targets"
        ) from None
    try:
        os.unlink(path)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as e:
            free = shutil.disk_usage(disk_dir).free
            raise ResourceError(
                f"distill.disk_dir={disk_dir} has {free / 2**30:.1f} GiB free but the student's "
                f"soft targets need {nbytes / 2**30:.1f} GiB ({e.strerror}); free space there, "
                "point distill.disk_dir at a larger disk, or set distill.target_dtype=bfloat16"
            ) from None
        buffer = mmap.mmap(fd, nbytes)  # shared and writable: dirty pages go back to the file
    finally:
        os.close(fd)
    raw = np.frombuffer(buffer, dtype=np.int16 if dtype == torch.bfloat16 else np.float32)
    tensor = torch.from_numpy(raw.reshape(shape))  # holds the mapping alive
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


def student_input_images(
    storage: Storage, student: str, row_ids: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, torch.Tensor]:
    """The source images of a student's soft-target rows, once per row: (ids [R] int64 sorted,
    images [R, C, H, W] float32 in [-1, 1]), read from the rows table and the student's extra
    input tables (synthetic and public rows), the tables the labeller read them from.

    Raises:
        DataError: a row is in none of them (its source was deleted or rewritten).
    """
    wanted = np.unique(np.asarray(row_ids, dtype=np.int64))
    sources = [ROWS]
    synthetic = synthetic_dir(student)
    sources += [f"{synthetic}/{f}" for f in storage.listdir(synthetic) if f.endswith(".parquet")]
    if storage.exists(public_rows(student)):
        sources.append(public_rows(student))
    ids: list[np.ndarray] = []
    images: list[np.ndarray] = []
    for rel in sources:
        table = pq.read_table(
            storage.path(rel),
            columns=["row_id", "image"],
            filters=[("row_id", "in", wanted.tolist())],
            filesystem=storage.fs,
        )
        if table.num_rows:
            ids.append(table.column("row_id").to_numpy().astype(np.int64))
            images.append(decode_images(table.column("image").to_pylist(), shape))
    found = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    order = np.argsort(found, kind="stable")
    found = found[order]
    if len(np.unique(found)) != len(found):
        raise DataError(f"a row id of {student}'s inputs is in two input tables; rerun distill")
    if not np.array_equal(found, wanted):
        missing = np.setdiff1d(wanted, found)
        raise DataError(
            f"{len(missing)} soft-target rows of {student} (row {int(missing[0])} first) are in "
            "no input table of the experiment; rerun with --force distill"
        )
    return found, torch.from_numpy(np.concatenate(images)[order])


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
