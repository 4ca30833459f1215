"""How domain code asks for work to be placed, without knowing on what: a pool of long-lived
workers that row blocks are streamed through, and parallel tasks. The audit layer's scorer
builds the blocks and the worker; an executor places them (`raydefense.distributed.ray_pool`:
a Ray Data actor pool; `InProcessPool`: this process, one block after another).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from raydefense.config import ResourcesConfig

# A worker factory: called once per worker (on the worker, so it and what it returns need not
# pickle; the factory itself must), its result called on each block's columns.
BlockWorker = Callable[[dict[str, np.ndarray]], Any]


class WorkerPool(Protocol):
    """Places row blocks on long-lived workers and functions on parallel tasks."""

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
        """Each block's columns through a worker (each worker built once by `make_worker()`,
        with `cpus` and `gpus` each, `workers` of them at most); yields every block's result,
        in any order. `label` names the job in progress reports."""
        ...

    def map_tasks(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        """[fn(*item) for item in items], possibly in parallel, in order."""
        ...


class InProcessPool:
    """The WorkerPool in this process: one worker, the blocks one after another."""

    def map_blocks(
        self,
        blocks: list[pa.Table],
        make_worker: Callable[[], BlockWorker],
        *,
        workers: int = 1,
        cpus: float = 1,
        gpus: float = 0,
        label: str = "",
    ) -> Iterator[Any]:
        worker = make_worker()
        for block in blocks:
            yield worker({name: block.column(name).to_numpy(zero_copy_only=False)
                          for name in block.column_names})  # fmt: skip

    def map_tasks(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        return [fn(*it) for it in items]


def torch_threads(res: ResourcesConfig, sharing: int) -> int:
    """Torch threads of one fit worker, labelling actor or scoring actor (evaluated on its node):
    resources.torch_threads, or the node's cores shared among the `sharing` workers or actors
    that run at once (at least cpus_per_worker; a fit running alone gets the whole machine)."""
    if res.torch_threads:
        return res.torch_threads
    return max(1, int(res.cpus_per_worker), (os.cpu_count() or 1) // max(1, sharing))
