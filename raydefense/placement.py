"""How domain code asks for work to be placed, without knowing on what: a pool of long-lived
workers that row blocks are streamed through (results back to the caller, or Parquet tables
through to Parquet files, never through the caller), and parallel tasks. The scorer
(`audit.scoring.PoolScorer`) and the labeller (`run.labelling.PoolLabeller`) build the work and
the worker; an executor places them (`raydefense.distributed.ray_pool`: a Ray Data actor pool and
Ray tasks; `InProcessPool`: this process, one block after another).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raydefense.config import ResourcesConfig

# A worker factory: called once per worker (on the worker, so it and what it returns need not
# pickle; the factory itself must), its result called on each block's columns.
BlockWorker = Callable[[dict[str, np.ndarray]], Any]
# Progress of a job, from wherever it runs: (job name, done, total, unit). Picklable.
Report = Callable[[str, float, float, str], None]


@dataclass(frozen=True)
class ParquetRows:
    """Rows to stream from Parquet: the files (paths on the pool's filesystem), the columns
    read, and (when given) only the rows whose `row_id` is listed."""

    paths: list[str]
    columns: list[str]
    row_ids: Optional[list[int]] = None


@dataclass(frozen=True)
class Placement:
    """What each worker of a pool holds: `workers` of them at most, `cpus` and `gpus` each;
    `label` names the job in progress reports."""

    workers: int = 1
    cpus: float = 1
    gpus: float = 0
    label: str = ""


def no_report(name: str, done: float, total: float, unit: str) -> None:
    """A Report that shows nothing."""


class WorkerPool(Protocol):
    """Places row blocks on long-lived workers and functions on parallel tasks."""

    def map_blocks(
        self,
        blocks: list[pa.Table],
        make_worker: Callable[[], BlockWorker],
        *,
        placement: Placement,
    ) -> Iterator[Any]:
        """Each block's columns through a worker (each worker built once by `make_worker()`,
        placed as `placement` says); yields every block's result, in any order."""
        ...

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
        """Every source row through a worker (built once per worker by `make_worker()`), in
        batches of at most `batch_rows`; each batch's output columns ({name: [N] array}) are
        written as Parquet files under `out_dir` on `fs`, never passing through the caller.
        `total`: output rows expected, for progress reports (in `unit`)."""
        ...

    def map_tasks(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        *,
        cpus: float = 1,
        gpus: float = 0,
    ) -> list[Any]:
        """[fn(*item) for item in items], possibly in parallel (`cpus` and `gpus` each), in
        order."""
        ...

    def reporter(self) -> Report:
        """A picklable Report that reaches this pool's progress display from any task."""
        ...


class InProcessPool:
    """The WorkerPool in this process: one worker, the blocks one after another."""

    def map_blocks(
        self,
        blocks: list[pa.Table],
        make_worker: Callable[[], BlockWorker],
        *,
        placement: Placement = Placement(),
    ) -> Iterator[Any]:
        worker = make_worker()
        for block in blocks:
            yield worker({name: block.column(name).to_numpy(zero_copy_only=False)
                          for name in block.column_names})  # fmt: skip

    def stream_to_parquet(
        self,
        sources: list[ParquetRows],
        fs: pafs.FileSystem,
        make_worker: Callable[[], BlockWorker],
        out_dir: str,
        *,
        batch_rows: int,
        placement: Placement = Placement(),
        total: int = 0,
        unit: str = "rows",
    ) -> None:
        worker = make_worker()
        fs.create_dir(out_dir, recursive=True)
        part = 0
        for source in sources:
            table = pq.ParquetDataset(source.paths, filesystem=fs).read(columns=source.columns)
            if source.row_ids is not None:
                table = table.filter(pc.is_in(table["row_id"], pa.array(source.row_ids)))
            for batch in table.to_batches(max_chunksize=batch_rows):
                cols = {name: batch.column(name).to_numpy(zero_copy_only=False)
                        for name in batch.schema.names}  # fmt: skip
                out = pa.table({k: pa.array(v) for k, v in worker(cols).items()})
                pq.write_table(out, f"{out_dir}/part-{part:05d}.parquet", filesystem=fs)
                part += 1

    def map_tasks(
        self,
        fn: Callable[..., Any],
        items: list[tuple[Any, ...]],
        *,
        cpus: float = 1,
        gpus: float = 0,
    ) -> list[Any]:
        return [fn(*it) for it in items]

    def reporter(self) -> Report:
        return no_report


def torch_threads(res: ResourcesConfig, sharing: int) -> int:
    """Torch threads of one fit worker, labelling actor or scoring actor (evaluated on its node):
    resources.torch_threads, or the node's cores shared among the `sharing` workers or actors
    that run at once (at least cpus_per_worker; a fit running alone gets the whole machine)."""
    if res.torch_threads:
        return res.torch_threads
    return max(1, int(res.cpus_per_worker), (os.cpu_count() or 1) // max(1, sharing))
