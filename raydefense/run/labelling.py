"""DistillMD's labelling work, for any executor: what a labelling worker computes for a batch of
rows (`LabellingWorker`: every teacher loaded once, soft targets from the teachers that never saw
each row), which rows are labelled and from where, and a teacher's synthetic rows. `PoolLabeller`
is the Labeller role on any `WorkerPool`: Ray Data's actor pool in production
(`raydefense.distributed.ray_pool`), the in-process pool in tests and a debugging session.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from functools import partial
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from raydefense.config import ExperimentConfig
from raydefense.data.encoded import read_encoded
from raydefense.data.pool import image_column
from raydefense.data.tables import decode_images, encode_float_rows, encode_target_rows
from raydefense.defense.distillmd import SoftTargetLabeller, synthetic_images, synthetic_row_ids
from raydefense.diffusion.backbones import load_eps
from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import DataError
from raydefense.layout import PLAN_JSON, ROWS, SOFT_TARGETS, model_dir
from raydefense.placement import ParquetRows, Placement, Report, WorkerPool, torch_threads
from raydefense.storage import Storage


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class LabellingWorker:
    """Labels batches of rows (what one worker of the pool runs): loads every teacher once.

    A batch: `row_id` [B] int64 and, for pixel families, `image` [B] encoded uint8 images (latent
    families read each row's encoded latents and caption embeddings themselves). Output: `draws`
    soft targets per row (`SoftTargetLabeller`'s columns), the batch group in `shard`, targets
    encoded as `distill.target_dtype`, x_t kept only with `distill.store_x_t`.
    """

    def __init__(
        self,
        cfg_dict: dict[str, Any],
        teachers: list[str],
        owners: dict[int, list[str]],
        draws: int,
        image_shape: list[int],
        groups: dict[int, int],
    ) -> None:
        cfg = ExperimentConfig.model_validate(cfg_dict)
        torch.set_num_threads(torch_threads(cfg.resources, cfg.resources.label_actors))
        storage = Storage(cfg.storage.root, cfg.experiment)
        cache = tempfile.mkdtemp(prefix="raydefense-teachers-")
        device = _device()
        models: dict[str, EpsModel] = {
            t: load_eps(
                cfg.model,
                storage.local_dir(model_dir(t), cache),
                cfg.distill.teacher_weights,
                device,
            )
            for t in teachers
        }
        # Latent families label encoded rows (latents + caption embeddings), not pixels.
        self.encoded = read_encoded(storage) if cfg.model.latent else None
        self.shape = tuple(image_shape)
        self.target_dtype = cfg.distill.target_dtype
        self.store_x_t = cfg.distill.store_x_t
        self.groups = {int(r): int(g) for r, g in groups.items()}
        self.labeller = SoftTargetLabeller(
            models,
            {int(r): frozenset(o) for r, o in owners.items()},
            NoiseSchedule.of(cfg.model),
            draws,
            cfg.seed,
            device=device,
            teacher_assignment=cfg.distill.teacher_assignment,
            diversify=cfg.data.prompt_diversification,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard = np.array([self.groups[int(r)] for r in batch["row_id"]], dtype=np.int64)
        rows: dict[str, np.ndarray] = {"row_id": batch["row_id"], "shard": shard}
        if self.encoded is None:
            rows["image"] = decode_images(list(batch["image"]), self.shape)
        else:
            enc = self.encoded.take(np.asarray(batch["row_id"], dtype=np.int64))
            rows.update(
                latent_mean=enc.mean.numpy(),
                latent_std=enc.std.numpy(),
                emb=enc.emb.numpy(),
                n_captions=enc.n_captions.numpy(),
            )
        out = self.labeller(rows)
        if self.store_x_t:
            out["x_t"] = np.array(encode_float_rows(out["x_t"]), dtype=object)
        else:  # the student regenerates them from (row, draw) (distill.store_x_t)
            del out["x_t"]
        out["target"] = np.array(encode_target_rows(out["target"], self.target_dtype), dtype=object)
        return out


def rows_to_label(
    cfg: ExperimentConfig,
    storage: Storage,
    owners: dict[int, list[str]],
    extra_rows: Sequence[str],
    out_dir: str,
) -> list[ParquetRows]:
    """Where the rows of `owners` are read from: plan rows from the rows table, the others
    (synthetic, public) from the `extra_rows` tables; with distill.member_inputs=false no plan
    row is labelled and the rows table is not read. Latent families read only the row ids (each
    worker reads their encoded rows): no pixels to ship.

    Raises:
        DataError: there is no row to label.
    """
    columns = ["row_id"] if cfg.model.latent else ["row_id", "image"]
    extra_ids = {
        int(r)
        for rel in extra_rows
        for r in storage.read_table(rel, ["row_id"])["row_id"].to_pylist()
    }
    in_plan = sorted(int(r) for r in owners if int(r) not in extra_ids)
    sources = []
    if in_plan:
        sources.append(ParquetRows([storage.path(ROWS)], columns, in_plan))
    if extra_rows:
        sources.append(ParquetRows([storage.path(rel) for rel in extra_rows], columns))
    if not sources:
        raise DataError(f"{out_dir}: no rows to label (no member rows and no extra rows)")
    return sources


def synthesize_rows(
    cfg_dict: dict[str, Any], teacher: str, k: int, n: int, rel: str, report: Report
) -> list[int]:
    """Teacher k's n synthetic rows (defense.distillmd.synthetic_images) written to `rel` as a
    rows-like table (row_id, image); returns their row ids."""
    cfg = ExperimentConfig.model_validate(cfg_dict)
    torch.set_num_threads(torch_threads(cfg.resources, 1))
    storage = Storage(cfg.storage.root, cfg.experiment)
    device = _device()
    with tempfile.TemporaryDirectory(prefix="raydefense-teacher-") as cache:
        eps = load_eps(
            cfg.model,
            storage.local_dir(model_dir(teacher), cache),
            cfg.distill.teacher_weights,
            device,
        )
        shape = tuple(storage.read_json(PLAN_JSON)["image_shape"])
        images = synthetic_images(
            eps,
            NoiseSchedule.of(cfg.model),
            n,
            (int(shape[0]), int(shape[1]), int(shape[2])),
            cfg.seed,
            k,
            cfg.distill.synthetic_steps,
            device=device,
            on_batch=lambda done: report(f"sample {teacher}", done, n, "synthetic rows"),
        )
    ids = synthetic_row_ids(k, n)
    storage.write_table(
        rel, pa.table({"row_id": pa.array(ids, pa.int64()), "image": image_column(images)})
    )
    return [int(i) for i in ids]


class PoolLabeller:
    """The Labeller role (`raydefense.run.context.Labeller`) on any WorkerPool."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def synthesize(
        self, cfg: ExperimentConfig, teachers: list[str], n: int, out_dir: str
    ) -> dict[str, list[int]]:
        """Each teacher's n synthetic rows, drawn concurrently (one task per teacher, with a fit
        worker's CPUs and GPUs), written to out_dir/<teacher>.parquet; returns teacher -> its
        rows' ids."""
        res, report = cfg.resources, self.pool.reporter()
        cfg_dict = cfg.model_dump(mode="json")
        items = [
            (cfg_dict, t, k, n, f"{out_dir}/{t}.parquet", report) for k, t in enumerate(teachers)
        ]
        drawn = self.pool.map_tasks(
            synthesize_rows, items, cpus=res.cpus_per_worker, gpus=res.gpus_per_worker
        )
        return dict(zip(teachers, drawn))

    def label_soft_targets(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        teachers: list[str],
        owners: dict[int, list[str]],
        draws: int,
        out_dir: str = SOFT_TARGETS,
        groups: Optional[dict[int, int]] = None,
        extra_rows: Sequence[str] = (),
    ) -> int:
        """Write `draws` soft targets for every row of `owners` (row_id -> the teachers that
        trained on it) to out_dir, published only once complete; returns the rows written.
        groups: row_id -> the batch group written as "shard" (default: the index in `teachers`
        of the row's first owner). extra_rows: tables (row_id, image) of rows outside the plan
        (synthetic rows), labelled like its rows."""
        if groups is None:
            groups = {r: teachers.index(o[0]) for r, o in owners.items()}
        storage.delete(out_dir)
        sources = rows_to_label(cfg, storage, owners, extra_rows, out_dir)
        make_worker = partial(
            LabellingWorker,
            cfg.model_dump(mode="json"),
            teachers,
            owners,
            draws,
            list(storage.read_json(PLAN_JSON)["image_shape"]),
            groups,
        )
        res = cfg.resources
        job = "label " + ("student" if out_dir == SOFT_TARGETS else out_dir.split("/")[1])
        placement = Placement(res.label_actors, res.cpus_per_worker, res.gpus_per_worker, job)
        with storage.staging(out_dir) as staging:
            self.pool.stream_to_parquet(
                sources,
                storage.fs,
                make_worker,
                storage.path(staging),
                batch_rows=max(1, cfg.distill.label_batch_size // draws),
                placement=placement,
                total=len(owners) * draws,
                unit="soft targets",
            )
            storage.publish_dir(staging, out_dir)
        files = [f for f in storage.listdir(out_dir) if f.endswith(".parquet")]
        return sum(
            pq.read_metadata(storage.path(f"{out_dir}/{f}"), filesystem=storage.fs).num_rows
            for f in files
        )
