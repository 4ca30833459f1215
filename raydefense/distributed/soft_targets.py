"""The soft-target actor pool: Ray Data map_batches over a student's rows (the target student's:
the members; a shadow student's: its draw's training rows) with a callable class that holds
every teacher (ActorPoolStrategy); output written as Parquet."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import torch
from ray.data.expressions import col

from raydefense.config import ExperimentConfig
from raydefense.data.encoded import read_encoded
from raydefense.data.pool import image_column
from raydefense.data.tables import decode_images, encode_float_rows, encode_target_rows
from raydefense.defense.distillmd import SoftTargetLabeller, synthetic_images, synthetic_row_ids
from raydefense.diffusion.backbones import load_eps
from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.distributed.progress import advance, report
from raydefense.distributed.runtime import cluster_task
from raydefense.errors import DataError
from raydefense.layout import PLAN_JSON, ROWS, SOFT_TARGETS, model_dir
from raydefense.placement import torch_threads
from raydefense.storage import Storage


class LabellerActor:
    """One actor of the pool: loads all teachers once, then labels batches of member rows."""

    def __init__(
        self,
        cfg_dict: dict[str, Any],
        teachers: list[str],
        owners: dict[int, list[str]],
        draws: int,
        image_shape: list[int],
        groups: dict[int, int],
        threads: int | None = None,
        progress: tuple[str, int] | None = None,
    ) -> None:
        cfg = ExperimentConfig.model_validate(cfg_dict)
        torch.set_num_threads(threads or torch_threads(cfg.resources, cfg.resources.label_actors))
        storage = Storage(cfg.storage.root, cfg.experiment)
        cache = tempfile.mkdtemp(prefix="raydefense-teachers-")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        models: dict[str, EpsModel] = {
            t: load_eps(
                cfg.model,
                storage.local_dir(model_dir(t), cache),
                cfg.distill.teacher_weights,
                device,
            )
            for t in teachers
        }
        schedule = NoiseSchedule.of(cfg.model)
        # Latent families label encoded rows (latents + caption embeddings), not pixels.
        self.encoded = read_encoded(storage) if cfg.model.latent else None
        self.shape = tuple(image_shape)
        self.target_dtype = cfg.distill.target_dtype
        self.store_x_t = cfg.distill.store_x_t
        self.groups = {int(r): int(g) for r, g in groups.items()}
        self.progress = progress  # (job name, total soft targets) for the console
        self.labeller = SoftTargetLabeller(
            models,
            {int(r): frozenset(o) for r, o in owners.items()},
            schedule,
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
        if self.progress is not None:
            advance(self.progress[0], len(out["t"]), self.progress[1], "soft targets")
        return out


def label_soft_targets(
    cfg: ExperimentConfig,
    storage: Storage,
    teachers: list[str],
    owners: dict[int, list[str]],
    draws: int,
    image_shape: list[int],
    out_dir: str = SOFT_TARGETS,
    groups: Optional[dict[int, int]] = None,
    extra_rows: Sequence[str] = (),
) -> int:
    """Write `draws` soft targets for every row of `owners` (row_id -> the teachers that trained
    on it) to out_dir; returns the row count. groups: row_id -> the batch group written as
    "shard" (default: the index in `teachers` of the row's first owner). extra_rows: Parquet
    tables (row_id, image) of rows outside the plan (synthetic rows), labelled like its rows."""
    if groups is None:
        groups = {r: teachers.index(o[0]) for r, o in owners.items()}
    storage.delete(out_dir)
    # Latent families label their encoded rows (read by each actor): no pixels to ship.
    columns = ["row_id"] if cfg.model.latent else ["row_id", "image"]
    # Plan rows come from the rows table, the others (synthetic, public) from extra_rows; with
    # distill.member_inputs=false no plan row is labelled and the rows table is not read.
    extra_ids = {
        int(r)
        for rel in extra_rows
        for r in storage.read_table(rel, ["row_id"])["row_id"].to_pylist()
    }
    in_plan = sorted(int(r) for r in owners if int(r) not in extra_ids)
    parts = []
    if in_plan:
        parts.append(
            ray.data.read_parquet(
                storage.path(ROWS), filesystem=storage.fs, columns=columns
            ).filter(expr=col("row_id").is_in(in_plan))
        )
    if extra_rows:
        parts.append(
            ray.data.read_parquet(
                [storage.path(rel) for rel in extra_rows], filesystem=storage.fs, columns=columns
            )
        )
    if not parts:
        raise DataError(f"{out_dir}: no rows to label (no member rows and no extra rows)")
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    rows_per_batch = max(1, cfg.distill.label_batch_size // draws)
    labelled = ds.map_batches(
        LabellerActor,
        fn_constructor_kwargs={
            "cfg_dict": cfg.model_dump(mode="json"),
            "teachers": teachers,
            "owners": owners,
            "draws": draws,
            "image_shape": image_shape,
            "groups": groups,
            "progress": (
                "label " + ("student" if out_dir == SOFT_TARGETS else out_dir.split("/")[1]),
                len(owners) * draws,
            ),
        },
        batch_size=rows_per_batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.resources.label_actors),
        num_cpus=cfg.resources.cpus_per_worker,
        num_gpus=cfg.resources.gpus_per_worker,
    )
    # Ray Data writes into a staging prefix; only complete files are then published.
    with storage.staging(out_dir) as staging:
        labelled.write_parquet(storage.path(staging), filesystem=storage.fs)
        storage.publish_dir(staging, out_dir)
    files = [f for f in storage.listdir(out_dir) if f.endswith(".parquet")]
    return sum(
        pq.read_metadata(storage.path(f"{out_dir}/{f}"), filesystem=storage.fs).num_rows
        for f in files
    )


def _synthesize(cfg_dict: dict[str, Any], teacher: str, k: int, n: int, rel: str) -> list[int]:
    """Teacher k's n synthetic rows (defense.distillmd.synthetic_images) written to `rel` as a
    rows-like table (row_id, image); returns their row ids."""
    cfg = ExperimentConfig.model_validate(cfg_dict)
    torch.set_num_threads(torch_threads(cfg.resources, 1))
    storage = Storage(cfg.storage.root, cfg.experiment)
    device = "cuda" if torch.cuda.is_available() else "cpu"
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


class RayLabeller:
    """The labeller role on a Ray Data actor pool (see raydefense.run.context.Labeller)."""

    def synthesize(
        self, cfg: ExperimentConfig, teachers: list[str], n: int, out_dir: str
    ) -> dict[str, list[int]]:
        """Each teacher's n synthetic rows, drawn concurrently (one Ray task per teacher, with
        a fit worker's CPUs and GPUs), written to out_dir/<teacher>.parquet; returns teacher ->
        its rows' ids."""
        res = cfg.resources
        task = cluster_task(_synthesize, res.cpus_per_worker, res.gpus_per_worker)
        refs = [
            task.remote(cfg.model_dump(mode="json"), t, k, n, f"{out_dir}/{t}.parquet")
            for k, t in enumerate(teachers)
        ]
        return dict(zip(teachers, ray.get(refs)))

    def label_soft_targets(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        teachers: list[str],
        owners: dict[int, list[str]],
        draws: int,
        out_dir: str,
        groups: dict[int, int],
        extra_rows: Sequence[str] = (),
    ) -> int:
        shape = storage.read_json(PLAN_JSON)["image_shape"]
        return label_soft_targets(
            cfg, storage, teachers, owners, draws, shape, out_dir, groups, extra_rows
        )
