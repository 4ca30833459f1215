"""The WorkerPool on Ray (`raydefense.placement.WorkerPool`): row blocks streamed through one
Ray Data `map_batches` with an actor pool (each actor builds its worker once and keeps it, with
the CPUs and GPUs asked), and functions as Ray tasks. It knows nothing of what the workers do:
the scorer (`raydefense.audit.scoring.PoolScorer`) builds the blocks and the worker."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from raydefense.console import verbose
from raydefense.distributed.progress import report
from raydefense.distributed.runtime import cluster_task
from raydefense.placement import BlockWorker


class BlockActor:
    """One actor of the pool: builds its worker once, then returns one record per block, the
    worker's result pickled (results may differ in shape between blocks, so they travel as one
    opaque value, not a ragged Arrow schema)."""

    def __init__(self, make_worker: Callable[[], BlockWorker]) -> None:
        self.worker = make_worker()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.worker(batch)
        return {"payload": np.array([pickle.dumps(out, protocol=5)], dtype=object)}


class RayWorkerPool:
    """Ray Data's actor pool for blocks, Ray tasks for functions."""

    def map_blocks(
        self,
        blocks: list[pa.Table],
        make_worker: Callable[[], BlockWorker],
        *,
        workers: int,
        cpus: float,
        gpus: float,
        label: str,
    ) -> Iterator[Any]:
        ds = ray.data.from_arrow(blocks).map_batches(
            BlockActor,
            fn_constructor_kwargs={"make_worker": make_worker},
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for payload in batch["payload"]:
                yield pickle.loads(payload)
                done += 1
                report(label, done, len(blocks), "batches")
                if verbose() and (done == len(blocks) or done % max(1, len(blocks) // 10) == 0):
                    print(f"[raydefense] {label}: {done}/{len(blocks)} batches", flush=True)

    def map_tasks(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        remote = cluster_task(_call)
        return ray.get([remote.remote(fn, *it) for it in items])


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    torch.set_num_threads(1)
    return fn(*args)
