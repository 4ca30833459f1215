"""Evaluation core: which targets are audited on which rows by which attacks, the scoring worker,
generation, learned-attack fits, utility/memorization, and the metric rows of results.json.

Targets and their access: `baseline`, `teacher_k` and the `student` are white-box; `dualmd` is
gray-box (eps queries through its step router, an extension beyond the paper) or black-box
(`attacks.dualmd_access`). `baseline`, `student` and `dualmd` are audited on all members vs the
non-members, each `teacher_k` on its own shard vs the non-members. Thresholds are chosen on the
calibration part and reported on the test part (invariant 5); an attack that learns on the
calibration part (secmi_nn) gives out-of-fold calibration scores.

Nothing here imports Ray: an `EvalExecutor` places the work (Ray Data actor pools and Ray tasks in
`raydefense.distributed.scoring`, `SerialExecutor` below in-process).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np
import pyarrow as pa
import torch

from raydefense.attacks import ATTACKS
from raydefense.attacks.adaptive import (ROUTER_TARGET, DualMDAdaptive, check_router,
                                         settings_by_teacher)
from raydefense.attacks.base import AccessError, check_access
from raydefense.attacks.metrics import attack_metrics, auc, roc
from raydefense.config import ExperimentConfig
from raydefense.data.plan import (CALIBRATION, MEMBER, NONMEMBER, SHADOW_ROLES, STUDENT, TEST,
                                   Plan, parse_shadow, shadow_name)
from raydefense.data.sources import to_model_range
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.unet import EpsModel
from raydefense.errors import ConfigError
from raydefense.seeding import STREAM_DOMAIN, STREAM_QUALITY, derive_seed
from raydefense.storage import Storage

log = logging.getLogger("raydefense")

DUALMD = ROUTER_TARGET  # the one target with a step router
ADAPTIVE = DualMDAdaptive.name
GRAYBOX_NOTE = "gray-box via DualMD's step router (an extension beyond the paper)"
ADAPTIVE_NOTE = ("gray-box, router-aware: one timestep served by each teacher, scores "
                 "standardised on calibration non-members and combined (beyond the paper, "
                 "whose threat model is black-box)")


# ----------------------------------------------------------------------------- attacks, targets


def build_attacks(cfg: ExperimentConfig) -> list[Any]:
    """Instantiate the enabled attacks from their config sections.

    Raises:
        UnknownComponentError: an unknown attack name (the message lists the valid ones).
        ConfigError: an attack without a config section, or shadow models missing.
    """
    out = []
    for name in cfg.attacks.enabled:
        cls = ATTACKS.get(name)
        section = getattr(cfg.attacks, name, None)
        if section is None:
            raise ConfigError(f"attack {name!r} has no config section attacks.{name}")
        attack = cls(section, cfg.model.num_train_timesteps)
        if getattr(attack, "trains_on", None) == "shadow" and cfg.attacks.shadow.num_models < 1:
            raise ConfigError(f"attack {name!r} learns from shadow models; set "
                              "attacks.shadow.num_models >= 1 or drop it from attacks.enabled")
        out.append(attack)
    return out


def shadows_needed(cfg: ExperimentConfig) -> int:
    """Number of shadow draws prepare must plan (0 unless an enabled attack learns from them)."""
    uses = any(getattr(ATTACKS.get(n), "trains_on", None) == "shadow" for n in cfg.attacks.enabled)
    return cfg.attacks.shadow.num_models if uses else 0


def shadow_role(target: str) -> str:
    """The training regime a target's regime-matched shadows imitate (SHADOW_ROLES): DualMD's
    eps queries reach its teachers, so its shadows are teacher-like."""
    if target in ("baseline", STUDENT):
        return target
    return "teacher"


def shadow_roles(cfg: ExperimentConfig) -> tuple[str, ...]:
    """The shadow regimes prepare must plan: with `attacks.shadow.regime` "baseline" only the
    baseline-like shadow; with "matched" the roles of the targets a shadow-trained attack audits
    (every target unless `attacks.targets` is set). () when no shadow is needed."""
    if not shadows_needed(cfg):
        return ()
    if cfg.attacks.shadow.regime == "baseline":
        return ("baseline",)
    shadow_attacks = [a for a in build_attacks(cfg) if getattr(a, "trains_on", None) == "shadow"]
    targets = cfg.attacks.targets or all_targets(cfg.data.num_shards)
    roles = set()
    for t in targets:
        for a in shadow_attacks:
            try:
                check_access(a, t, target_access(cfg, t))
            except AccessError:
                continue
            roles.add(shadow_role(t))
    return tuple(r for r in SHADOW_ROLES if r in roles)


def shadow_students(cfg: ExperimentConfig, plan: Plan) -> list[str]:
    """The shadow students the distill stage must distil (one per draw with the student role)."""
    if "student" not in shadow_roles(cfg):
        return []
    return [shadow_name(j, "student") for j in range(plan.num_shadow_draws)]


def shadows_for(cfg: ExperimentConfig, plan: Plan, target: str) -> list[str]:
    """The shadow models a shadow-trained attack on `target` learns from: per draw, the shadows
    of the target's regime (`shadow_role`; every teacher-like shadow of the draw for a teacher,
    whose K shards are all that regime) or, with regime "baseline", the baseline-like one.

    Raises:
        ConfigError: the plan lacks them (prepared for other targets or another regime).
    """
    role = "baseline" if cfg.attacks.shadow.regime == "baseline" else shadow_role(target)
    out = []
    for j in range(plan.num_shadow_draws):
        if role == "teacher":
            out += [shadow_name(j, "teacher", k) for k in range(plan.num_shards)]
        else:
            out.append(shadow_name(j, role))
    available = set(plan.shadows) | set(shadow_students(cfg, plan))
    missing = [m for m in out if m not in available]
    if missing or not out:
        raise ConfigError(f"the plan has no {role}-like shadow models for target {target!r} "
                          f"(missing: {', '.join(missing) or 'all'}); rerun prepare with this "
                          "config (raydefense run --force prepare)")
    return out


def shadow_rows(plan: Plan, model: str) -> np.ndarray:
    """Bool [R]: the rows a shadow-trained attack learns on from `model`: its members and its
    draw's held-out rows."""
    return plan.members_of(model) | plan.shadow_nonmembers(model)


def shadow_jobs(cfg: ExperimentConfig, plan: Plan, served: dict[str, list[str]]
                ) -> list["ScoreJob"]:
    """One scoring job per shadow model some target's shadow-trained attacks learn from;
    `served`: target -> the names (attack or sweep point) of its shadow-trained attacks."""
    jobs: dict[str, set[str]] = {}
    for t, names in served.items():
        if names:
            for m in shadows_for(cfg, plan, t):
                jobs.setdefault(m, set()).update(names)
    return [ScoreJob(m, shadow_rows(plan, m), sorted(names), False) for m, names in jobs.items()]


def target_access(cfg: ExperimentConfig, target: str) -> str:
    return cfg.attacks.dualmd_access if target == DUALMD else "white-box"


def all_targets(num_shards: int) -> list[str]:
    return ["baseline", *[f"teacher_{k + 1}" for k in range(num_shards)], DUALMD, STUDENT]


@dataclass
class AttackPlan:
    """Per target, the attacks that run; and the (target, attack, reason) pairs refused."""

    targets: list[str]
    attacks: dict[str, list[Any]]
    skipped: list[dict[str, str]] = field(default_factory=list)


def plan_attacks(cfg: ExperimentConfig, plan: Plan) -> AttackPlan:
    """Match attacks to targets by access level.

    With `attacks.targets` unset every target is audited and pairs its access cannot serve are
    skipped (and reported); naming targets explicitly makes such a pair an error.

    Raises:
        AccessError: an explicitly requested target cannot serve an enabled attack.
        ConfigError: an unknown target name.
    """
    explicit = cfg.attacks.targets is not None
    check_explicit_targets(cfg)
    targets = list(cfg.attacks.targets) if explicit else all_targets(plan.num_shards)
    attacks = build_attacks(cfg)
    out = AttackPlan(targets=targets, attacks={})
    for t in targets:
        out.attacks[t] = []
        for a in attacks:
            try:
                check_access(a, t, target_access(cfg, t))
                check_router(a, t)
            except AccessError as e:  # explicit targets were checked above
                out.skipped.append({"target": t, "attack": a.name, "reason": str(e).split(";")[0]})
                continue
            out.attacks[t].append(a)
    return out


def check_explicit_targets(cfg: ExperimentConfig) -> None:
    """Fail fast (before any stage runs) on an explicit target that is unknown or cannot serve
    an enabled attack; the same rules as plan_attacks, without a plan."""
    if cfg.attacks.targets is None:
        return
    known = all_targets(cfg.data.num_shards)
    attacks = build_attacks(cfg)
    for t in cfg.attacks.targets:
        if t not in known:
            raise ConfigError(f"unknown target {t!r} in attacks.targets; choose from: "
                              f"{', '.join(known)}")
        for a in attacks:
            check_access(a, t, target_access(cfg, t))
            check_router(a, t)


def adaptive_bases(cfg: ExperimentConfig, num_shards: Optional[int] = None
                   ) -> dict[str, list[dict[str, Any]]]:
    """The base attacks of `dualmd_adaptive` ({name: settings}): the configured
    `attacks.dualmd_adaptive.bases`, or (None) every enabled query attack with a single-timestep
    setting served by each of DualMD's teachers. Empty when the attack is not enabled or DualMD
    is audited black-box only.

    Raises:
        ConfigError: a named base is not an enabled query attack or misses a teacher, or no
            enabled query attack can serve as a base.
    """
    if ADAPTIVE not in cfg.attacks.enabled or cfg.attacks.dualmd_access == "black-box":
        return {}
    from raydefense.defense.dualmd import timestep_owners

    k = num_shards or cfg.data.num_shards
    owners = timestep_owners(schedule_of(cfg), cfg.sampling.num_steps, k).tolist()
    query = {a.name: a.settings() for a in build_attacks(cfg) if a.kind == "query"}

    def covers(settings: list[dict[str, Any]]) -> bool:
        return all(settings_by_teacher(settings, owners, k).values())

    named = cfg.attacks.dualmd_adaptive.bases
    if named is not None:
        for b in named:
            if b not in query:
                raise ConfigError(f"attacks.dualmd_adaptive.bases names {b!r}, which is not an "
                                  f"enabled query attack; enabled query attacks: "
                                  f"{', '.join(query) or 'none'}")
            if not covers(query[b]):
                raise ConfigError(f"attacks.dualmd_adaptive.bases: {b!r} has no timestep served "
                                  f"by every teacher under sampling.num_steps="
                                  f"{cfg.sampling.num_steps}; give it more timesteps")
        return {b: query[b] for b in named}
    out = {b: st for b, st in query.items() if covers(st)}
    if not out:
        raise ConfigError("attack 'dualmd_adaptive' needs a query attack that asks eps about one "
                          "timestep served by each teacher, and none of the enabled ones "
                          f"({', '.join(query) or 'none'}) does; enable sima or pia (their "
                          "timestep sweeps cover every teacher)")
    return out


def audited_rows(plan: Plan, target: str) -> np.ndarray:
    """Bool [R]: the member rows of `target`'s training set plus every non-member row."""
    nonmember = plan.split == NONMEMBER
    if target in (STUDENT, DUALMD, "baseline"):
        return (plan.split == MEMBER) | nonmember
    if target not in plan.models:
        raise KeyError(f"unknown target {target!r}")
    return plan.rows_of(target) | nonmember


def training_rows(plan: Plan, target: str) -> np.ndarray:
    """Bool [R]: the images a target learned from (dualmd: its teachers' shards; the student:
    the members its soft targets were computed on)."""
    if target in (STUDENT, DUALMD):
        return plan.split == MEMBER
    return plan.rows_of(target)


def setting_label(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


# ----------------------------------------------------------------------------- models


def schedule_of(cfg: ExperimentConfig) -> NoiseSchedule:
    return NoiseSchedule(cfg.model.num_train_timesteps, cfg.model.beta_start, cfg.model.beta_end)


def load_eps(storage: Storage, model: str, weights: str, cache_dir: str,
             device: str = "cpu") -> EpsModel:
    from raydefense.diffusion.checkpoint import load_unet
    from raydefense.diffusion.unet import UNetEps

    return UNetEps(load_unet(storage.local_dir(f"models/{model}", cache_dir), weights).to(device))


def load_target(cfg: ExperimentConfig, storage: Storage, target: str, weights: str,
                cache_dir: str, teachers: list[str], device: str = "cpu") -> EpsModel:
    """A target's eps interface: its UNet, or DualMD's step router over its teachers."""
    if target == DUALMD:
        from raydefense.defense.dualmd import DualMDStepRouter

        return DualMDStepRouter([load_eps(storage, m, weights, cache_dir, device)
                                 for m in teachers], schedule_of(cfg), cfg.sampling.num_steps)
    return load_eps(storage, target, weights, cache_dir, device)


# ----------------------------------------------------------------------------- scoring worker


QUALITY_COL = "heldout_eps_mse"
MMD_ROWS = 2000  # per set in the distribution-level check


def query_col(attack: str, i: int) -> str:
    return f"q:{attack}:{i}"


def feature_col(attack: str) -> str:
    return f"f:{attack}"


class ScoringWorker:
    """Scores batches of one model's rows with a set of attacks (what one Ray Data actor runs).

    Output per batch: `row_id`, one float32 column per query-attack setting (`q:<attack>:<i>`),
    one [B, F] float32 feature column per learned attack (`f:<attack>`), and the per-row held-out
    eps-MSE (`heldout_eps_mse`, seeded t and noise; averaged later over non-member test rows).
    """

    def __init__(self, cfg: ExperimentConfig, storage: Storage, model: str, attacks: list[str],
                 teachers: list[str], cache_dir: str, device: str = "cpu",
                 with_quality: bool = True) -> None:
        self.cfg, self.schedule, self.device = cfg, schedule_of(cfg), device
        # (output name, attack): the enabled attacks by name, and sweep grid points by their
        # key `<attack>@<index>` (raydefense.sweep), each its own attack object.
        self.attacks = [(a.name, a) for a in build_attacks(cfg) if a.name in attacks]
        if any("@" in name for name in attacks):
            from raydefense.sweep import resolve_attack

            self.attacks += [(k, resolve_attack(cfg, k)) for k in attacks if "@" in k]
        self.with_quality = with_quality
        w = cfg.attacks.weights
        self.eps: dict[str, EpsModel] = {w: load_target(cfg, storage, model, w, cache_dir, teachers,
                                                        device)}
        for _, a in self.attacks:  # GSA attacks the raw training weights by default
            aw = getattr(a.cfg, "weights", w)
            if aw not in self.eps:
                self.eps[aw] = load_target(cfg, storage, model, aw, cache_dir, teachers, device)

    def __call__(self, images: np.ndarray, row_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Args: images [B, C, H, W] float32 in [-1, 1]; row_ids [B] int64.
        Returns: columns as described in the class docstring."""
        x0 = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        ids = torch.from_numpy(np.array(row_ids, dtype=np.int64))
        seed, cache = self.cfg.seed, {}
        out: dict[str, np.ndarray] = {"row_id": np.asarray(row_ids, dtype=np.int64)}
        w = self.cfg.attacks.weights
        for name, a in self.attacks:
            eps = self.eps[getattr(a.cfg, "weights", w)]
            if a.kind == "query":
                s = a.score(eps, self.schedule, x0, ids, seed, cache).cpu().numpy()
                for i in range(s.shape[1]):
                    out[query_col(name, i)] = s[:, i].astype(np.float32)
            elif a.kind == "learned":
                out[feature_col(name)] = (a.features(eps, self.schedule, x0, ids, seed, cache)
                                            .cpu().numpy().astype(np.float32))
        if self.with_quality:
            out[QUALITY_COL] = heldout_eps_mse_rows(self.eps[w], self.schedule, x0, row_ids, seed,
                                                    self.cfg.sampling.quality_draws)
        return out

    def generate(self, n: int, image_shape: tuple[int, ...]) -> np.ndarray:
        """n images from the model's public sampler (DualMD: the alternating pipeline, teacher 1
        first), seeded by the base seed. -> [n, C, H, W] float32 in [-1, 1]."""
        from raydefense.defense.dualmd import DualMDPipeline, DualMDStepRouter
        from raydefense.diffusion.sampling import sample

        s, eps = self.cfg.sampling, self.eps[self.cfg.attacks.weights]
        shape = (n, *image_shape)
        if isinstance(eps, DualMDStepRouter):
            return DualMDPipeline(eps.teachers, self.schedule).generate(
                shape, s.sampler, s.num_steps, self.cfg.seed).cpu().numpy()
        return sample([eps], self.schedule, shape, s.sampler, s.num_steps, self.cfg.seed,
                      device=self.device).cpu().numpy()


@torch.no_grad()
def heldout_eps_mse_rows(eps: EpsModel, schedule: NoiseSchedule, x0: torch.Tensor,
                         row_ids: np.ndarray, seed: int, draws: int) -> np.ndarray:
    """Per-row eps-prediction MSE, t ~ U{0..T-1} and noise seeded per (row, draw): averaged over
    held-out rows it is a model's denoising utility on unseen data (lower is better). -> [B]."""
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
        err = (eps(schedule.q_sample(x0.float(), t, n), t).float() - n).pow(2).flatten(1).mean(1)
        total += err.cpu().numpy()
    return (total / draws).astype(np.float32)


def validation_rows(plan: Plan, n: int) -> np.ndarray:
    """The first n calibration-part non-members (plan row order): rows no target trains on and
    whose test-part siblings alone decide the reported attack metrics. -> bool mask [R]."""
    mask = (plan.split == NONMEMBER) & (plan.part == CALIBRATION)
    keep = np.flatnonzero(mask)[:n]
    out = np.zeros(len(mask), dtype=bool)
    out[keep] = True
    return out


def heldout_validator(plan: Plan, schedule: NoiseSchedule, n: int, seed: int
                      ) -> Callable[[torch.nn.Module], dict[str, float]]:
    """A training-loop hook: unet (EMA weights) -> {"val_eps_mse": mean held-out eps-MSE on
    `validation_rows(plan, n)`}, one seeded (t, noise) draw per row, so successive reports
    of one fit (and fits of different trials) are measured on identical inputs."""
    from raydefense.diffusion.unet import UNetEps

    mask = validation_rows(plan, n)
    x0 = torch.from_numpy(to_model_range(plan.images[mask]))
    ids = plan.row_id[mask]

    def validate(unet: torch.nn.Module) -> dict[str, float]:
        dev = next(unet.parameters()).device
        mse = heldout_eps_mse_rows(UNetEps(unet), schedule, x0.to(dev), ids, seed, 1)
        return {"val_eps_mse": float(mse.mean())}

    return validate


# ----------------------------------------------------------------------------- executor protocol


@dataclass
class ScoreJob:
    """Score `row_ids` (all rows of the plan where `mask`) of `model` with `attacks`."""

    model: str
    mask: np.ndarray
    attacks: list[str]
    with_quality: bool = True


class EvalExecutor(Protocol):
    def score(self, cfg: ExperimentConfig, plan: Plan, jobs: list[ScoreJob],
              generate: dict[str, int]) -> tuple[list[dict[str, np.ndarray]],
                                                 dict[str, np.ndarray]]:
        """Per job, ScoringWorker's columns for all its rows (in plan row order); and per
        target in `generate`, that many generated images (ScoringWorker.generate)."""
        ...

    def map(self, fn: Callable[..., Any], items: list[tuple]) -> list[Any]:
        """[fn(*item) for item in items], possibly in parallel."""
        ...


def merge_columns(parts: list[dict[str, np.ndarray]], row_ids: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """Concatenate ScoringWorker outputs and reorder them to `row_ids` (any batch order)."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    pos = {int(r): i for i, r in enumerate(cols["row_id"])}
    order = np.array([pos[int(r)] for r in row_ids])
    return {k: v[order] for k, v in cols.items()}


class SerialExecutor:
    """In-process executor (tests, debugging): the same workers, one batch after another."""

    def __init__(self, storage: Storage, cache_dir: str) -> None:
        self.storage, self.cache_dir = storage, cache_dir

    def score(self, cfg: ExperimentConfig, plan: Plan, jobs: list[ScoreJob],
              generate: dict[str, int]) -> tuple[list[dict[str, np.ndarray]],
                                                 dict[str, np.ndarray]]:
        results = []
        for job in jobs:
            worker = ScoringWorker(cfg, self.storage, job.model, job.attacks, plan.teachers,
                                   self.cache_dir, with_quality=job.with_quality)
            images = to_model_range(plan.images[job.mask])
            ids = plan.row_id[job.mask]
            bs = cfg.attacks.batch_size
            parts = [worker(images[s:s + bs], ids[s:s + bs]) for s in range(0, len(ids), bs)]
            results.append(merge_columns(parts, ids))
        generated = {t: ScoringWorker(cfg, self.storage, t, [], plan.teachers, self.cache_dir)
                     .generate(n, plan.images.shape[1:]) for t, n in generate.items()}
        return results, generated

    def map(self, fn: Callable[..., Any], items: list[tuple]) -> list[Any]:
        return [fn(*it) for it in items]


# ----------------------------------------------------------------------------- generation, quality


@dataclass
class DomainFeatures:
    """The domain classifier (trained on spare pool rows) and the reference embedding."""

    model: Any
    reference: np.ndarray  # [N_ref, D] embeddings of the non-member images
    train_accuracy: float
    train_rows: int = 0

    def embed(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        from raydefense.quality.domain import embed

        x = images if isinstance(images, np.ndarray) else images.cpu().numpy()
        return embed(self.model, np.asarray(x, dtype=np.float32))

    def feature_fn(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.embed(images))


def spare_rows(cfg: ExperimentConfig, plan: Plan, pool: Any) -> np.ndarray:
    """Pool indices that no target, shadow or audit uses: not in the plan and no content
    duplicate of a plan row; a seeded draw of at most `quality.domain_rows`. -> [n] int64."""
    from raydefense.data.plan import content_hash

    used = set(plan.hash)
    free = np.setdiff1d(np.arange(len(pool.images)), plan.row_id)
    rng = np.random.default_rng(derive_seed(cfg.seed, STREAM_DOMAIN))
    out, seen = [], set()
    for i in rng.permutation(free):
        h = content_hash(pool.images[i])
        if h in used or h in seen:
            continue
        seen.add(h)
        out.append(int(i))
        if len(out) == cfg.quality.domain_rows:
            break
    return np.array(sorted(out), dtype=np.int64)


def train_domain_features(cfg: ExperimentConfig, plan: Plan) -> Optional[DomainFeatures]:
    """A small classifier trained on labelled spare pool rows (`spare_rows`), never on a row
    any target trains on or any attack audits, so its feature space is disjoint from the audit;
    None without labels or spare rows.

    Its penultimate features stand in for Inception's on datasets like digits ("domain FID");
    the FID reference is the non-member set."""
    from raydefense.data.sources import DATASETS
    from raydefense.quality.domain import embed, train_domain_classifier

    pool = DATASETS.get(cfg.data.source)(cfg.data)
    if pool.labels is None:
        return None
    rows = spare_rows(cfg, plan, pool)
    labels = pool.labels[rows]
    if len(rows) < 2 or (labels < 0).any() or len(np.unique(labels)) < 2:
        log.warning("evaluate: %d labelled spare pool rows: no domain feature extractor (domain "
                    "FID and the domain-space black-box attack are skipped); lower "
                    "data.num_members/num_nonmembers or attacks.shadow.members", len(rows))
        return None
    images = to_model_range(pool.images[rows])
    model, acc = train_domain_classifier(images, labels, int(pool.labels.max()) + 1,
                                         cfg.quality.domain_classifier_epochs,
                                         derive_seed(cfg.seed, STREAM_QUALITY))
    reference = to_model_range(plan.images[plan.split == NONMEMBER])
    return DomainFeatures(model, embed(model, reference), acc, len(rows))


def quality_rows(cfg: ExperimentConfig, plan: Plan, target: str, generated: np.ndarray,
                 domain: Optional[DomainFeatures]) -> list[dict[str, Any]]:
    """Utility and memorization of a target's generated images (results.json quality rows)."""
    from raydefense.quality.fid import fid_from_features, inception_score, precision_recall
    from raydefense.quality.memorization import memorization_summary, nearest_neighbour_ratio

    q = cfg.quality
    out: list[dict[str, Any]] = []

    def add(metric: str, value: float) -> None:
        out.append({"target": target, "metric": metric, "value": float(value)})

    if domain is not None:
        fake = domain.embed(generated)
        add("domain_fid", fid_from_features(domain.reference, fake))
        p, r = precision_recall(domain.reference, fake, q.precision_recall_k)
        add("domain_precision", p)
        add("domain_recall", r)
        with torch.no_grad():
            probs = torch.softmax(domain.model(torch.from_numpy(generated)), dim=1).numpy()
        add("domain_is", inception_score(probs)[0])
    if q.inception_weights:
        from raydefense.quality.inception import inception_fid_is

        real = torch.from_numpy(plan.images[plan.split == NONMEMBER])
        fake = torch.from_numpy(np.rint((generated + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
        for k, v in inception_fid_is(real, fake, q.inception_weights).items():
            add(k, v)
    train = to_model_range(plan.images[training_rows(plan, target)])
    if q.mmd_permutations:
        from raydefense.quality.mmd import membership_mmd_test

        # Distribution level (arXiv 2502.02970): are the samples closer to the members than to
        # the non-members? In the domain feature space when there is one, else pixels.
        # Capped at MMD_ROWS per set (seeded) so the kernel matrix stays small at any scale.
        embed = domain.embed if domain is not None else (lambda x: x.reshape(len(x), -1))
        rng = np.random.default_rng(derive_seed(cfg.seed, STREAM_QUALITY, 7))
        cap = [rng.permutation(len(x))[:MMD_ROWS] for x in (generated, train)]
        nonmembers = plan.images[plan.split == NONMEMBER]
        nonmembers = to_model_range(nonmembers[rng.permutation(len(nonmembers))[:MMD_ROWS]])
        res = membership_mmd_test(embed(generated[cap[0]]), embed(train[cap[1]]),
                                  embed(nonmembers), q.mmd_permutations,
                                  derive_seed(cfg.seed, STREAM_QUALITY, 8))
        add("mmd_member_gap", res["statistic"])
        add("mmd_p_value", res["p_value"])
    ratios = nearest_neighbour_ratio(generated, train, q.memorization_k)
    for k, v in memorization_summary(ratios, q.memorization_threshold).items():
        add(f"memorization_{k}" if not k.startswith("memor") else k, v)
    return out


# ----------------------------------------------------------------------------- learned attacks


def fit_learned(attack_name: str, cfg_dict: dict, train_x: np.ndarray, train_y: np.ndarray,
                eval_x: list[np.ndarray], image_shape: tuple[int, ...],
                cross_fit: bool = False) -> dict[str, Any]:
    """Fit one learned attack and score (a Ray task in production). Returns
    {"eval": [scores per eval matrix], "oof": out-of-fold scores of train_x (cross_fit) or
    None}."""
    cfg = ExperimentConfig.model_validate(cfg_dict)
    if "@" in attack_name:  # an attack sweep's grid point
        from raydefense.sweep import resolve_attack

        attack = resolve_attack(cfg, attack_name)
    else:
        attack = next(a for a in build_attacks(cfg) if a.name == attack_name)
    # A sweep point (`gsa1@3`) seeds like its attack, so the base setting reproduces evaluate.
    seed = derive_seed(cfg.seed, STREAM_QUALITY, len(attack_name.split("@")[0]))
    if cross_fit:
        oof, scores = attack.cross_fit_predict(train_x, train_y, eval_x, seed,
                                               image_shape=image_shape)
        return {"eval": scores, "oof": oof}
    return {"eval": attack.fit_predict(train_x, train_y, eval_x, seed, image_shape=image_shape),
            "oof": None}


def learned_fit_args(cfg: ExperimentConfig, plan: Plan, target: str, name: str, attack: Any,
                     scored: dict[str, dict[str, np.ndarray]]) -> tuple:
    """The `fit_learned` arguments of one (target, learned attack): calibration-trained attacks
    cross-fit on the target's calibration part and score its test part; shadow-trained ones
    learn the members vs held-out rows of every shadow of the target's regime (`shadows_for`)
    and score the target's audited rows.
    `name` is the feature column's attack name (a sweep point's `<attack>@<i>`)."""
    f = scored[target][feature_col(name)]
    shape = tuple(plan.images.shape[1:])
    if attack.trains_on == "calibration":
        mask = audited_rows(plan, target)
        cal = plan.part[mask] != TEST
        member = (plan.split[mask] == MEMBER).astype(np.int64)
        return (name, cfg.model_dump(mode="json"), f[cal], member[cal], [f[~cal]], shape, True)
    xs, ys = [], []
    for m in shadows_for(cfg, plan, target):
        xs.append(scored[m][feature_col(name)])
        ys.append(plan.members_of(m)[shadow_rows(plan, m)].astype(np.int64))
    return (name, cfg.model_dump(mode="json"), np.concatenate(xs), np.concatenate(ys), [f],
            shape, False)


def learned_scores(out: dict[str, Any], part: np.ndarray) -> np.ndarray:
    """A `fit_learned` result -> one score per audited row (calibration-trained: out-of-fold
    scores on the calibration part, held-out scores on the test part)."""
    if out["oof"] is None:
        return np.asarray(out["eval"][0])
    cal = part != TEST
    score = np.empty(len(part))
    score[cal], score[~cal] = out["oof"], out["eval"][0]
    return score


def adaptive_scores(cfg: ExperimentConfig, plan: Plan, attack: Any,
                    columns: dict[str, np.ndarray], mask: np.ndarray
                    ) -> list[tuple[dict[str, Any], np.ndarray]]:
    """`dualmd_adaptive` over DualMD's scored query columns (`q:<base>:<i>`), for every base
    attack and combine rule: [(params, scores over the audited rows `mask`)]."""
    from raydefense.defense.dualmd import timestep_owners

    owners = timestep_owners(schedule_of(cfg), cfg.sampling.num_steps, plan.num_shards).tolist()
    member = plan.split[mask] == MEMBER
    calibration = plan.part[mask] != TEST
    out = []
    for base, settings in adaptive_bases(cfg, plan.num_shards).items():
        cols = np.stack([columns[query_col(base, i)] for i in range(len(settings))], axis=1)
        out += attack.combine(base, settings, cols, owners, plan.num_shards, member, calibration,
                              derive_seed(cfg.seed, STREAM_QUALITY, len(attack.name)))
    return out


# ----------------------------------------------------------------------------- orchestration


@dataclass
class EvaluationResult:
    scores: pa.Table
    quality: list[dict[str, Any]]
    samples: dict[str, np.ndarray]
    skipped: list[dict[str, str]]
    shadows: dict[str, dict[str, Any]] = field(default_factory=dict)


def _long_rows(cols: dict[str, list], target: str, attack: str, params: dict, row_ids: np.ndarray,
               is_member: np.ndarray, part: np.ndarray, score: np.ndarray) -> None:
    n = len(row_ids)
    cols["target"] += [target] * n
    cols["attack"] += [attack] * n
    cols["params"] += [setting_label(params)] * n
    cols["row_id"] += row_ids.tolist()
    cols["is_member"] += is_member.tolist()
    cols["part"] += part.tolist()
    cols["score"] += np.asarray(score, dtype=float).tolist()


def run_evaluation(cfg: ExperimentConfig, storage: Storage, plan: Plan, executor: EvalExecutor,
                   cache_dir: str) -> EvaluationResult:
    """Everything the evaluate stage computes. Steps:

    1. per target, one scoring job over its audited rows (query scores, learned features,
       held-out eps-MSE) and, for shadow-trained attacks, one job per shadow model;
    2. generation from every target's public sampler (sample grids, blackbox_nn, quality);
    3. the domain classifier; learned-attack fits (one task per target x attack);
    4. long-format raw scores + quality rows.
    """
    ap = plan_attacks(cfg, plan)
    by_name = {a.name: a for t in ap.targets for a in ap.attacks[t]}
    jobs = [ScoreJob(t, audited_rows(plan, t),
                     [a.name for a in ap.attacks[t] if a.kind in ("query", "learned")])
            for t in ap.targets if target_access(cfg, t) != "black-box"]
    served = {t: [a.name for a in ap.attacks[t] if getattr(a, "trains_on", None) == "shadow"]
              for t in ap.targets}
    jobs += shadow_jobs(cfg, plan, served)
    # The same pool generates images (grids, black-box attack, quality) with the models it holds.
    needs_bb = any(a.kind == "generated" for t in ap.targets for a in ap.attacks[t])
    n_gen = max(cfg.sampling.num_images, cfg.quality.num_generated,
                cfg.attacks.blackbox_nn.num_generated if needs_bb else 0)
    t0 = time.perf_counter()
    columns, gen = executor.score(cfg, plan, jobs, {t: n_gen for t in ap.targets})
    scored = dict(zip([j.model for j in jobs], columns))
    log.info("evaluate: scored %d models and generated %d images per target in %.1fs",
             len(jobs), n_gen, time.perf_counter() - t0)
    t0 = time.perf_counter()
    domain = train_domain_features(cfg, plan)

    cols: dict[str, list] = {k: [] for k in
                             ("target", "attack", "params", "row_id", "is_member", "part", "score")}
    quality: list[dict[str, Any]] = []
    fits: list[tuple] = []
    fit_keys: list[tuple[str, str]] = []
    for t in ap.targets:
        mask = audited_rows(plan, t)
        ids, member = plan.row_id[mask], plan.split[mask] == MEMBER
        part = plan.part[mask]
        res = scored.get(t, {})
        for a in ap.attacks[t]:
            if a.kind == "query":
                for i, params in enumerate(a.settings()):
                    _long_rows(cols, t, a.name, params, ids, member, part,
                               res[query_col(a.name, i)])
            elif a.kind == "adaptive":
                for params, score in adaptive_scores(cfg, plan, a, res, mask):
                    _long_rows(cols, t, a.name, params, ids, member, part, score)
            elif a.kind == "generated":
                s = a.score_generated(torch.tensor(gen[t][:a.cfg.num_generated]),
                                      torch.from_numpy(to_model_range(plan.images[mask])),
                                      domain.feature_fn if domain is not None else None).numpy()
                for i, params in enumerate(a.settings(with_features=domain is not None)):
                    _long_rows(cols, t, a.name, params, ids, member, part, s[:, i])
            else:
                fits.append(learned_fit_args(cfg, plan, t, a.name, a, scored))
                fit_keys.append((t, a.name))
        if QUALITY_COL in res:
            held = (plan.split[mask] == NONMEMBER) & (part == TEST)
            quality.append({"target": t, "metric": "heldout_eps_mse",
                            "value": float(res[QUALITY_COL][held].mean())})
        quality += quality_rows(cfg, plan, t, gen[t][:cfg.quality.num_generated], domain)
    log.info("evaluate: domain classifier, generated-image attacks and quality in %.1fs",
             time.perf_counter() - t0)
    t0 = time.perf_counter()
    for (t, name), out in zip(fit_keys, executor.map(fit_learned, fits)):
        mask = audited_rows(plan, t)
        ids, member, part = plan.row_id[mask], plan.split[mask] == MEMBER, plan.part[mask]
        params = by_name[name].settings()[0]
        _long_rows(cols, t, name, params, ids, member, part, learned_scores(out, part))
    log.info("evaluate: fitted %d learned attacks in %.1fs", len(fits), time.perf_counter() - t0)
    if domain is not None:
        quality.append({"target": "real", "metric": "domain_classifier_train_accuracy",
                        "value": float(domain.train_accuracy)})
        quality.append({"target": "real", "metric": "domain_classifier_rows",
                        "value": float(domain.train_rows)})
    samples = {t: g[:cfg.sampling.num_images] for t, g in gen.items()}
    return EvaluationResult(pa.table(cols), quality, samples, ap.skipped,
                            shadow_summary(cfg, plan, served))


def shadow_summary(cfg: ExperimentConfig, plan: Plan, served: dict[str, list[str]]
                   ) -> dict[str, dict[str, Any]]:
    """Per target audited by a shadow-trained attack: the attacks, the regime its shadows
    imitate and each shadow's member / held-out row counts (results.json `shadows`)."""
    out = {}
    for t, names in served.items():
        if not names:
            continue
        models = shadows_for(cfg, plan, t)
        out[t] = {"attacks": names, "regime": parse_shadow(models[0])[1],
                  "models": {m: {"members": int(plan.members_of(m).sum()),
                                 "heldout": int(plan.shadow_nonmembers(m).sum())}
                             for m in models}}
    return out


# ----------------------------------------------------------------------------- metrics


def metric_rows(table: pa.Table, bootstrap: int, seed: int
                ) -> tuple[list[dict], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """results.json attack rows and ROC curves (test part) from a raw scores table.

    Each row also carries `auc_calibration` (the AUC on the calibration part, what a sweep may
    select on without touching the test part) and, for DualMD's gray-box rows, a `note`.
    Returns: (rows, roc_curves[attack label][target] = (fpr, tpr)).
    """
    df = table.to_pandas()
    rows, curves = [], {}
    for (target, attack, params), g in df.groupby(["target", "attack", "params"], sort=False):
        cal, test = g[g.part != TEST], g[g.part == TEST]
        cal_y = cal.is_member.to_numpy().astype(int)
        m = attack_metrics(cal.score.to_numpy(), cal_y, test.score.to_numpy(),
                           test.is_member.to_numpy().astype(int), bootstrap=bootstrap, seed=seed)
        row = {"target": target, "attack": attack, "params": json.loads(params), **m}
        if attack in ATTACKS:
            row["access"] = ATTACKS.get(attack).access
        if target == DUALMD and row.get("access") not in (None, "black-box"):
            row["note"] = ADAPTIVE_NOTE if attack == ADAPTIVE else GRAYBOX_NOTE
        rows.append(row)
        fpr, tpr, _ = roc(m["orientation"] * test.score.to_numpy(),
                          test.is_member.to_numpy().astype(int))
        curves.setdefault(f"{attack} {params}", {})[target] = (fpr, tpr)
    return rows, curves
