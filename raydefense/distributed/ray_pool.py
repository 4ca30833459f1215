"""The WorkerPool on Ray (`raydefense.placement.WorkerPool`): row blocks streamed through one
Ray Data `map_batches` with an actor pool (each actor builds its worker once and keeps it, with
the CPUs and GPUs asked), Parquet read and written by Ray Data around such a pool (the rows never
reach the driver), and functions as Ray tasks. It knows nothing of what the workers do: the
scorer (`raydefense.audit.scoring.PoolScorer`) and the labeller
(`raydefense.run.labelling.PoolLabeller`) build the work and the worker."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import ray.data
import torch
from ray.data.expressions import col

from raydefense.console import verbose
from raydefense.distributed.progress import advance, report
from raydefense.distributed.runtime import cluster_task
from raydefense.placement import BlockWorker, ParquetRows, Placement, Report


class BlockActor:
    """One actor of the pool: builds its worker once, then returns one record per block, the
    worker's result pickled (results may differ in shape between blocks, so they travel as one
    opaque value, not a ragged Arrow schema)."""

    def __init__(self, make_worker: Callable[[], BlockWorker]) -> None:
        self.worker = make_worker()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.worker(batch)
        return {"payload": np.array([pickle.dumps(out, protocol=5)], dtype=object)}


class StreamActor:
    """One actor of a Parquet-to-Parquet pool: builds its worker once, passes each batch through
    it and counts the output rows on the progress board."""

    def __init__(
        self, make_worker: Callable[[], BlockWorker], progress: Optional[tuple[str, int, str]]
    ) -> None:
        self.worker = make_worker()
        self.progress = progress  # (job name, total output rows, unit)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = self.worker(batch)
        if self.progress is not None and out:
            name, total, unit = self.progress
            advance(name, len(next(iter(out.values()))), total, unit)
        return out


class RayWorkerPool:
    """Ray Data's actor pool for blocks, Ray tasks for functions."""

    def map_blocks(
        self,
        blocks: list[pa.Table],
        make_worker: Callable[[], BlockWorker],
        *,
        placement: Placement,
    ) -> Iterator[Any]:
        label = placement.label
        ds = ray.data.from_arrow(blocks).map_batches(
            BlockActor,
            fn_constructor_kwargs={"make_worker": make_worker},
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=placement.workers),
            num_cpus=placement.cpus,
            num_gpus=placement.gpus,
        )
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for payload in batch["payload"]:
                yield pickle.loads(payload)
                done += 1
                report(label, done, len(blocks), "batches")
                if verbose() and (done == len(blocks) or done % max(1, len(blocks) // 10) == 0):
                    print(f"[raydefense] {label}: {done}/{len(blocks)} batches", flush=True)

    def stream_to_parquet(
        self,
        sources: list[ParquetRows],
        fs: pafs.FileSystem,
        make_worker: Callable[[], BlockWorker],
        out_dir: str,
        *,
        batch_rows: int,
        placement: Placement,
        total: int = 0,
        unit: str = "rows",
    ) -> None:
        parts = []
        for source in sources:
            ds = ray.data.read_parquet(source.paths, filesystem=fs, columns=source.columns)
            if source.row_ids is not None:
                ds = ds.filter(expr=col("row_id").is_in(source.row_ids))
            parts.append(ds)
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        progress = (placement.label, total, unit) if placement.label else None
        ds.map_batches(
            StreamActor,
            fn_constructor_kwargs={"make_worker": make_worker, "progress": progress},
            batch_size=batch_rows,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=placement.workers),
            num_cpus=placement.cpus,
            num_gpus=placement.gpus,
        ).write_parquet(out_dir, filesystem=fs)

    def map_tasks(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        *,
        cpus: float = 1,
        gpus: float = 0,
    ) -> list[Any]:
        remote = cluster_task(_call, cpus, gpus)
        return ray.get([remote.remote(fn, *it) for it in items])

    def reporter(self) -> Report:
        return report


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    torch.set_num_threads(1)
    return fn(*args)
