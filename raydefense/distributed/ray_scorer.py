"""Evaluation on Ray: attack scoring and generation as one Ray Data `map_batches` over blocks of
one model's rows, with an actor pool (each actor loads a model once and keeps it; GPUs when
present), and learned-attack fits as Ray tasks. The work itself is `raydefense.audit.scoring`."""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from raydefense.audit.scoring import ScoreJob, ScoringWorker, merge_columns
from raydefense.config import ExperimentConfig
from raydefense.console import verbose
from raydefense.data.plan import Plan
from raydefense.data.pool import image_column
from raydefense.data.tables import decode_images
from raydefense.distributed.progress import report
from raydefense.distributed.runtime import cluster_task, torch_threads
from raydefense.storage import Storage

GENERATE, SCORE = "generate", "score"


class ScoringActor:
    """One actor of the scoring pool. Every block holds rows of a single model; the actor loads
    each model the first time it sees one (then keeps it) and returns one record per block: the
    model name and its pickled columns (column sets differ between models, e.g. shadows carry
    only GSA features, so they travel as one opaque value instead of a ragged Arrow schema)."""

    def __init__(
        self,
        cfg_dict: dict[str, Any],
        jobs: dict[str, tuple[str, list[str], bool]],
        teachers: list[str],
        image_shape: list[int],
    ) -> None:
        self.cfg = ExperimentConfig.model_validate(cfg_dict)
        torch.set_num_threads(torch_threads(self.cfg.resources, self.cfg.attacks.score_actors))
        self._cache = tempfile.mkdtemp(prefix="raydefense-score-")
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.storage = Storage(self.cfg.storage.root, self.cfg.experiment)
        self.jobs, self.teachers, self.shape = jobs, teachers, tuple(image_shape)
        self.workers: dict[str, ScoringWorker] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # `model` is a job's name (ScoreJob.name); generation blocks name the target itself.
        model, op = str(batch["model"][0]), str(batch["op"][0])
        if model not in self.workers:
            net, attacks, with_quality = self.jobs.get(model, (model, [], False))
            self.workers[model] = ScoringWorker(
                self.cfg,
                self.storage,
                net,
                attacks,
                self.teachers,
                self._cache,
                device=self.device,
                with_quality=with_quality,
            )
        if op == GENERATE:  # a one-row block whose row_id is the number of images
            out = {"generated": self.workers[model].generate(int(batch["row_id"][0]), self.shape)}
        else:
            out = self.workers[model](
                decode_images(list(batch["image"]), self.shape),
                np.array(batch["row_id"], dtype=np.int64),
            )
        return {
            "model": np.array([model]),
            "op": np.array([op]),
            "payload": np.array([pickle.dumps(out, protocol=5)], dtype=object),
        }

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_cache", ""), ignore_errors=True)


class RayScorer:
    """The scorer role on Ray (see raydefense.audit.scoring.Scorer)."""

    def score(
        self, cfg: ExperimentConfig, plan: Plan, jobs: list[ScoreJob], generate: dict[str, int]
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """All jobs and generations through one Ray Data pipeline and one actor pool (actors
        start once and keep the models they load)."""
        res = cfg.resources
        bs = cfg.attacks.batch_size
        width = int(np.prod(plan.images.shape[1:]))

        def block(model: str, op: str, ids: np.ndarray, flat: np.ndarray) -> pa.Table:
            return pa.table(
                {
                    "model": pa.array([model] * len(ids), pa.string()),
                    "op": pa.array([op] * len(ids), pa.string()),
                    "row_id": pa.array(ids, pa.int64()),
                    "image": image_column(flat),
                }
            )

        # Generation first (long blocks), then one block per batch of one model's rows.
        blocks = [
            block(t, GENERATE, np.array([n]), np.zeros((1, width), np.uint8))
            for t, n in generate.items()
        ]
        for job in jobs:
            ids = plan.row_id[job.mask]
            table = block(job.name, SCORE, ids, plan.images[job.mask].reshape(len(ids), -1))
            blocks += [table.slice(s, bs) for s in range(0, len(ids), bs)]
        ds = ray.data.from_arrow(blocks).map_batches(
            ScoringActor,
            fn_constructor_kwargs={
                "cfg_dict": cfg.model_dump(mode="json"),
                "jobs": {j.name: (j.model, j.attacks, j.with_quality) for j in jobs},
                "teachers": plan.teachers,
                "image_shape": list(plan.images.shape[1:]),
            },
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.attacks.score_actors),
            num_cpus=res.cpus_per_worker,
            num_gpus=res.gpus_per_worker,
        )
        parts: dict[str, list[dict[str, np.ndarray]]] = {j.name: [] for j in jobs}
        generated: dict[str, np.ndarray] = {}
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for model, op, payload in zip(batch["model"], batch["op"], batch["payload"]):
                out = pickle.loads(payload)
                if op == GENERATE:
                    generated[str(model)] = out["generated"]
                else:
                    parts[str(model)].append(out)
                done += 1
                report("score and generate", done, len(blocks), "batches")
                if verbose() and (done == len(blocks) or done % max(1, len(blocks) // 10) == 0):
                    print(f"[raydefense] scoring: {done}/{len(blocks)} batches", flush=True)
        return [merge_columns(parts[j.name], plan.row_id[j.mask]) for j in jobs], generated

    def map(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        remote = cluster_task(_call)
        return ray.get([remote.remote(fn, *it) for it in items])


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    torch.set_num_threads(1)
    return fn(*args)
