"""Scoring: the worker that turns one model's rows into attack scores and features, the
`Scorer` role that places scoring jobs, `PoolScorer` (the role on any `WorkerPool`: Ray Data's
actor pool in production, whose actors run `ScoringBlocks`) and an in-process `SerialScorer`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Protocol

import numpy as np
import pyarrow as pa
import torch

from raydefense.attacks.base import ColumnAttack, LearnedAttack, PublicQuery, Query, TextBatch
from raydefense.audit.grid import resolve_attack
from raydefense.audit.interface import SamplerInterface
from raydefense.audit.targets import (
    build_attacks,
    schedule_of,
    shadow_rows,
    shadows_for,
)
from raydefense.config import ExperimentConfig
from raydefense.data.encoded import EncodedRows, read_encoded
from raydefense.data.plan import Plan
from raydefense.data.pool import image_column, to_model_range
from raydefense.data.tables import decode_images, image_shape
from raydefense.defense.dualmd import DualMDPipeline, DualMDStepRouter
from raydefense.diffusion.backbones import data_shape, load_eps
from raydefense.diffusion.backbones.sd import SDCodec
from raydefense.diffusion.eps import EpsModel, EpsNet, FrozenEps
from raydefense.diffusion.sampling import sample
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.layout import model_dir
from raydefense.placement import Placement, WorkerPool, torch_threads
from raydefense.roster import router_teachers
from raydefense.seeding import STREAM_AUDIT_LATENT, STREAM_PROMPTS, STREAM_QUALITY
from raydefense.storage import Storage

SCORES_COLUMNS = ("target", "attack", "params", "row_id", "is_member", "part", "score")


def load_target(
    cfg: ExperimentConfig,
    storage: Storage,
    target: str,
    weights: str,
    cache_dir: str,
    teachers: list[str],
    device: str = "cpu",
) -> EpsModel:
    """A target's eps interface: its network, or a step router over its teachers (DualMD's, or a
    shadow draw's `shadow_j_dualmd` over that draw's shadow teachers)."""

    def load(model: str) -> EpsModel:
        return load_eps(cfg.model, storage.local_dir(model_dir(model), cache_dir), weights, device)

    routed = router_teachers(target, teachers)
    if routed is not None:  # DualMD, or a reference's router over a shadow draw's teachers
        return DualMDStepRouter(
            [load(m) for m in routed],
            schedule_of(cfg),
            cfg.sampling.num_steps,
        )
    return load(target)


QUALITY_COL = "heldout_eps_mse"


def query_col(attack: str, i: int) -> str:
    return f"q:{attack}:{i}"


def feature_col(attack: str) -> str:
    return f"f:{attack}"


def setting_label(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


class ScoringWorker:
    """Scores batches of one model's rows with a set of attacks (what one Ray Data actor runs).

    Output per batch: `row_id`, one float32 column per query-attack setting (`q:<attack>:<i>`),
    one [B, F] float32 feature column per learned attack (`f:<attack>`), and the per-row held-out
    eps-MSE (`heldout_eps_mse`, seeded t and noise; averaged later over non-member test rows).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        model: str,
        attacks: list[str],
        teachers: list[str],
        cache_dir: str,
        device: str = "cpu",
        with_quality: bool = True,
    ) -> None:
        self.cfg, self.schedule, self.device = cfg, schedule_of(cfg), device
        self.image_shape = image_shape(storage)
        # (output name, attack): the enabled attacks by name, and sweep grid points by their
        # key `<attack>@<index>` (raydefense.audit.grid), each its own attack object.
        self.attacks = [(a.name, a) for a in build_attacks(cfg) if a.name in attacks]
        if any("@" in name for name in attacks):
            self.attacks += [(k, resolve_attack(cfg, k)) for k in attacks if "@" in k]
        self.with_quality = with_quality
        w = cfg.attacks.weights
        # Latent families: attacks query latents (a seeded VAE posterior draw per row, as
        # SecMI-LDM does) conditioned on the row's original caption.
        self.encoded = read_encoded(storage) if cfg.model.latent else None
        self._codec: Optional[SDCodec] = None
        self.eps: dict[str, EpsModel] = {
            w: load_target(cfg, storage, model, w, cache_dir, teachers, device)
        }
        for _, a in self.attacks:  # GSA attacks the raw training weights by default
            aw = a.weights(w)
            if aw not in self.eps:
                self.eps[aw] = load_target(cfg, storage, model, aw, cache_dir, teachers, device)

    def __call__(self, images: np.ndarray, row_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Args: images [B, C, H, W] float32 in [-1, 1]; row_ids [B] int64.
        Returns: columns as described in the class docstring."""
        batch = _RowsBatch(self, images, row_ids)
        out: dict[str, np.ndarray] = {"row_id": np.asarray(row_ids, dtype=np.int64)}
        w = self.cfg.attacks.weights
        for name, a in self.attacks:
            eps = self.eps[a.weights(w)]
            if isinstance(a, ColumnAttack):
                s = a.columns(batch, eps).cpu().numpy()
                for i in range(s.shape[1]):
                    out[query_col(name, i)] = s[:, i].astype(np.float32)
            elif isinstance(a, LearnedAttack):
                feats = a.features(batch.query(eps))
                out[feature_col(name)] = feats.cpu().numpy().astype(np.float32)
        if self.with_quality:
            out[QUALITY_COL] = heldout_eps_mse_rows(
                self.eps[w],
                self.schedule,
                batch.x0,
                row_ids,
                self.cfg.seed,
                self.cfg.sampling.quality_draws,
                batch.cond,
            )
        return out

    def inputs(
        self, images: np.ndarray, row_ids: np.ndarray
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """What the attacks query with: (x0, cond). Pixel families: (images, None). Latent
        families: (a seeded posterior draw per row [B, C, h, w], the original caption's
        embedding [B, L, D])."""
        if self.encoded is None:
            return torch.from_numpy(np.ascontiguousarray(images)).to(self.device), None
        ids = np.asarray(row_ids, dtype=np.int64)
        x0 = self.encoded.sample_latents(ids, self.cfg.seed, STREAM_AUDIT_LATENT)
        cond = self.encoded.take(ids).emb[:, 0]
        return x0.to(self.device), cond.to(self.device)

    def text_batch(self, row_ids: np.ndarray) -> TextBatch:
        """The captions and text encoder of a latent family's rows (text attacks)."""
        if self.encoded is None or self.encoded.captions is None:
            raise ValueError("text attacks need a text-to-image model's encoded captions")
        enc = self.encoded.take(np.asarray(row_ids, dtype=np.int64))
        assert enc.captions is not None
        codec = self.codec()
        return TextBatch(
            captions=[c[0] for c in enc.captions],
            cond=enc.emb[:, 0].to(self.device),
            null=enc.null.to(self.device),
            token_ids=codec.token_ids,
            embed_ids=codec.embed_ids,
            end_id=codec.end_id,
        )

    def interface(self, eps: EpsModel) -> SamplerInterface:
        """The target's public black-box interface (DualMD: its alternating teachers)."""
        models = eps.teachers if isinstance(eps, DualMDStepRouter) else [eps]
        c, h, w = self.image_shape
        latent = self.encoded is not None
        return SamplerInterface(
            models,
            self.schedule,
            self.cfg.sampling,
            data_shape(self.cfg.model, (c, h, w)),
            self.codec() if latent else None,
            self.encoded.null if self.encoded is not None else None,
            self.device,
        )

    def codec(self) -> SDCodec:
        if self._codec is None:
            self._codec = SDCodec(self.cfg.model, self.device)
        return self._codec

    def generate(self, n: int, image_shape: tuple[int, ...]) -> np.ndarray:
        """n images from the model's public sampler (DualMD: the alternating pipeline, teacher 1
        first), seeded by the base seed. Text-to-image models are prompted with
        `generation_prompts` under sampling.guidance_scale and their latents decoded by the
        VAE. -> [n, C, H, W] float32 in [-1, 1]."""

        s, eps = self.cfg.sampling, self.eps[self.cfg.attacks.weights]
        shape: tuple[int, ...] = (n, *image_shape)
        cond = uncond = None
        if self.encoded is not None:
            c, h, w = (int(x) for x in image_shape)
            shape = (n, *data_shape(self.cfg.model, (c, h, w)))
            prompts = generation_prompt_rows(self.encoded.row_id, n, self.cfg.seed)
            cond = self.encoded.take(prompts).emb[:, 0]
            uncond = self.encoded.null.expand_as(cond)
        kwargs: dict[str, Any] = {
            "device": self.device,
            "cond": cond,
            "uncond": uncond,
            "guidance_scale": s.guidance_scale,
            "clip": self.encoded is None,
        }
        if isinstance(eps, DualMDStepRouter):
            pipe = DualMDPipeline(eps.teachers, self.schedule)
            out = pipe.generate(shape, s.sampler, s.num_steps, self.cfg.seed, **kwargs)
        else:
            out = sample(
                [eps], self.schedule, shape, s.sampler, s.num_steps, self.cfg.seed, **kwargs
            )
        if self.encoded is not None:
            out = self.codec().decode(out)
        return out.cpu().numpy()


class _RowsBatch:
    """One batch of a ScoringWorker's rows, as the attacks see it (attacks.base.AttackBatch):
    one Query per model with one cache for the whole batch, the captions and the public
    interface built only when an attack asks."""

    def __init__(self, worker: ScoringWorker, images: np.ndarray, row_ids: np.ndarray) -> None:
        self.worker, self.images = worker, images
        self.row_ids = np.asarray(row_ids, dtype=np.int64)
        self.x0, self.cond = worker.inputs(images, self.row_ids)
        self.ids = torch.from_numpy(self.row_ids.copy())
        self.cache: dict[tuple[Any, ...], Any] = {}  # work shared between attacks, per batch

    def query(self, eps: EpsModel) -> Query:
        w = self.worker
        return Query(eps, w.schedule, self.x0, self.ids, w.cfg.seed, self.cond, self.cache)

    def text(self) -> TextBatch:
        return self.worker.text_batch(self.row_ids)

    def public(self, eps: EpsModel) -> PublicQuery:
        pixels = torch.from_numpy(np.ascontiguousarray(self.images))
        interface = self.worker.interface(eps)
        return PublicQuery(interface, pixels, self.ids, self.worker.cfg.seed, self.cond)


def generation_prompt_rows(row_ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The rows whose original captions prompt n generated images: a seeded permutation of
    every plan row (`row_ids`, plan order), cycled (prompts carry no membership signal by
    their choice). -> [n]."""
    order = np.random.default_rng([seed, STREAM_PROMPTS]).permutation(np.asarray(row_ids))
    return np.resize(order, n)


def generation_prompts(plan: Plan, n: int, seed: int) -> Optional[list[str]]:
    """The prompts of a text-to-image target's n generated images (None without captions)."""
    if plan.captions is None:
        return None
    pos = {int(r): i for i, r in enumerate(plan.row_id)}
    rows = generation_prompt_rows(plan.row_id, n, seed)
    return [plan.captions[pos[int(r)]][0] for r in rows]


@torch.no_grad()
def heldout_eps_mse_rows(
    eps: EpsModel,
    schedule: NoiseSchedule,
    x0: torch.Tensor,
    row_ids: np.ndarray,
    seed: int,
    draws: int,
    cond: Optional[torch.Tensor] = None,
) -> np.ndarray:
    """Per-row eps-prediction MSE, t ~ U{0..T-1} and noise seeded per (row, draw): averaged over
    held-out rows it is a model's denoising utility on unseen data (lower is better). cond:
    [B, L, D] text embeddings (text-to-image), else None. -> [B]."""
    T = schedule.num_train_timesteps
    total = np.zeros(len(row_ids))
    for d in range(draws):
        ts, noise = [], []
        for r in np.asarray(row_ids).tolist():
            rng = np.random.default_rng([seed, r, STREAM_QUALITY, d])
            ts.append(int(rng.integers(T)))
            noise.append(rng.standard_normal(tuple(x0.shape[1:]), dtype=np.float32))
        t = torch.tensor(ts, dtype=torch.long, device=x0.device)
        n = torch.from_numpy(np.stack(noise)).to(x0.device)
        pred = eps(schedule.q_sample(x0.float(), t, n), t, cond).float()
        err = (pred - n).pow(2).flatten(1).mean(1)
        total += err.cpu().numpy()
    return (total / draws).astype(np.float32)


def heldout_validator(
    plan: Plan,
    schedule: NoiseSchedule,
    n: int,
    seed: int,
    model: str,
    encoded: Optional[EncodedRows] = None,
) -> Callable[[EpsNet], dict[str, float]]:
    """A training-loop hook: net (EMA weights) -> {"val_eps_mse": mean held-out eps-MSE on
    `plan.validation_rows(n, model)` (rows outside the audit that `model` does not train on)},
    one seeded (t, noise) draw per row, so successive reports
    of one fit (and fits of different trials) are measured on identical inputs. `encoded`:
    a latent family's encoded rows (latents and original captions are validated instead)."""

    mask, _ = plan.validation_rows(n, model)
    ids = plan.row_id[mask]
    cond: Optional[torch.Tensor] = None
    if encoded is None:
        x0 = torch.from_numpy(to_model_range(plan.images[mask]))
    else:
        x0 = encoded.sample_latents(ids, seed, STREAM_AUDIT_LATENT)
        cond = encoded.take(ids).emb[:, 0]

    def validate(net: EpsNet) -> dict[str, float]:
        dev = next(net.parameters()).device
        c = None if cond is None else cond.to(dev)
        mse = heldout_eps_mse_rows(FrozenEps(net), schedule, x0.to(dev), ids, seed, 1, c)
        return {"val_eps_mse": float(mse.mean())}

    return validate


@dataclass
class ScoreJob:
    """Score `row_ids` (all rows of the plan where `mask`) of `model` with `attacks`. `key`
    names the job's columns when one model has several jobs (a reference model's audited and
    population rows beside its shadow rows); default: the model's name."""

    model: str
    mask: np.ndarray
    attacks: list[str]
    with_quality: bool = True
    key: Optional[str] = None

    @property
    def name(self) -> str:
        return self.key or self.model


def shadow_jobs(cfg: ExperimentConfig, plan: Plan, served: dict[str, list[str]]) -> list[ScoreJob]:
    """One scoring job per shadow model some target's shadow-trained attacks learn from;
    `served`: target -> the names (attack or sweep point) of its shadow-trained attacks."""
    jobs: dict[str, set[str]] = {}
    for t, names in served.items():
        if names:
            for m in shadows_for(cfg, plan, t):
                jobs.setdefault(m, set()).update(names)
    return [ScoreJob(m, shadow_rows(plan, m), sorted(names), False) for m, names in jobs.items()]


class Scorer(Protocol):
    def score(
        self, cfg: ExperimentConfig, plan: Plan, jobs: list[ScoreJob], generate: dict[str, int]
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        """Per job, ScoringWorker's columns for all its rows (in plan row order); and per
        target in `generate`, that many generated images (ScoringWorker.generate)."""
        ...

    def map(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        """[fn(*item) for item in items], possibly in parallel."""
        ...


def merge_columns(parts: list[dict[str, np.ndarray]], row_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Concatenate ScoringWorker outputs and reorder them to `row_ids` (any batch order)."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    pos = {int(r): i for i, r in enumerate(cols["row_id"])}
    order = np.array([pos[int(r)] for r in row_ids])
    return {k: v[order] for k, v in cols.items()}


GENERATE, SCORE = "generate", "score"


class ScoringBlocks:
    """A pool worker of `PoolScorer`: every block holds rows of a single model (a job's name;
    generation blocks name the target itself). It builds each model's ScoringWorker the first
    time it sees one (then keeps it) and returns one record per block: the model name, the op
    and the worker's output (column sets differ between models, e.g. shadows carry only GSA
    features, so a record is an opaque value, not a ragged Arrow schema)."""

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

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[str, str, Any]:
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
            out: Any = self.workers[model].generate(int(batch["row_id"][0]), self.shape)
        else:
            out = self.workers[model](
                decode_images(list(batch["image"]), self.shape),
                np.array(batch["row_id"], dtype=np.int64),
            )
        return model, op, out

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "_cache", ""), ignore_errors=True)


class PoolScorer:
    """The Scorer role on any WorkerPool (Ray Data's actor pool in production): every job's
    rows in blocks of `attacks.batch_size` and every generation, through one pool whose
    workers start once and keep the models they load."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def score(
        self, cfg: ExperimentConfig, plan: Plan, jobs: list[ScoreJob], generate: dict[str, int]
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
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
        make_worker = partial(
            ScoringBlocks,
            cfg.model_dump(mode="json"),
            {j.name: (j.model, j.attacks, j.with_quality) for j in jobs},
            plan.teachers,
            list(plan.images.shape[1:]),
        )
        parts: dict[str, list[dict[str, np.ndarray]]] = {j.name: [] for j in jobs}
        generated: dict[str, np.ndarray] = {}
        res = cfg.resources
        placement = Placement(
            cfg.attacks.score_actors, res.cpus_per_worker, res.gpus_per_worker, "score and generate"
        )
        for model, op, out in self.pool.map_blocks(blocks, make_worker, placement=placement):
            if op == GENERATE:
                generated[model] = out
            else:
                parts[model].append(out)
        return [merge_columns(parts[j.name], plan.row_id[j.mask]) for j in jobs], generated

    def map(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        return self.pool.map_tasks(fn, items)


class SerialScorer:
    """In-process scorer (tests, debugging): the same workers, one batch after another."""

    def __init__(self, storage: Storage, cache_dir: str) -> None:
        self.storage, self.cache_dir = storage, cache_dir

    def score(
        self, cfg: ExperimentConfig, plan: Plan, jobs: list[ScoreJob], generate: dict[str, int]
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, np.ndarray]]:
        results = []
        for job in jobs:
            worker = ScoringWorker(
                cfg,
                self.storage,
                job.model,
                job.attacks,
                plan.teachers,
                self.cache_dir,
                with_quality=job.with_quality,
            )
            images = to_model_range(plan.images[job.mask])
            ids = plan.row_id[job.mask]
            bs = cfg.attacks.batch_size
            parts = [worker(images[s : s + bs], ids[s : s + bs]) for s in range(0, len(ids), bs)]
            results.append(merge_columns(parts, ids))
        generated = {
            t: ScoringWorker(cfg, self.storage, t, [], plan.teachers, self.cache_dir).generate(
                n, plan.images.shape[1:]
            )
            for t, n in generate.items()
        }
        return results, generated

    def map(self, fn: Callable[..., Any], items: list[tuple[Any, ...]]) -> list[Any]:
        return [fn(*it) for it in items]


def long_rows(
    cols: dict[str, list[Any]],
    target: str,
    attack: str,
    params: dict[str, Any],
    row_ids: np.ndarray,
    is_member: np.ndarray,
    part: np.ndarray,
    score: np.ndarray,
) -> None:
    n = len(row_ids)
    cols["target"] += [target] * n
    cols["attack"] += [attack] * n
    cols["params"] += [setting_label(params)] * n
    cols["row_id"] += row_ids.tolist()
    cols["is_member"] += is_member.tolist()
    cols["part"] += part.tolist()
    cols["score"] += np.asarray(score, dtype=float).tolist()
