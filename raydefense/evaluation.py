"""Evaluation core: which rows each target is audited on, scoring them with the registered attacks,
held-out utility, and the per-(target, attack) metric rows of results.json.

Targets: `baseline` and the `student` are audited on all members vs the non-members; each
`teacher_k` on its own shard vs the non-members. Thresholds are chosen on the calibration part and
reported on the test part (invariant 5).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raydefense.attacks import ATTACKS
from raydefense.attacks.metrics import attack_metrics, roc
from raydefense.config import ExperimentConfig
from raydefense.data.plan import MEMBER, NONMEMBER, TEST, Plan
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.unet import EpsModel
from raydefense.errors import ConfigError
from raydefense.seeding import STREAM_QUALITY
from raydefense.storage import Storage

STUDENT = "student"
DUALMD = "dualmd"


def build_attacks(cfg: ExperimentConfig) -> list[Any]:
    """Instantiate the enabled attacks from their config sections.

    Raises:
        ConfigError: an unknown attack name (lists the valid ones) or one without a config section.
    """
    out = []
    for name in cfg.attacks.enabled:
        cls = ATTACKS.get(name)
        section = getattr(cfg.attacks, name, None)
        if section is None:
            raise ConfigError(f"attack {name!r} has no config section attacks.{name}")
        out.append(cls(section))
    return out


def audited_rows(plan: Plan, target: str) -> np.ndarray:
    """Bool [R]: the member rows of `target`'s training set plus every non-member row."""
    nonmember = plan.split == NONMEMBER
    if target == STUDENT:
        return (plan.split == MEMBER) | nonmember
    if target not in plan.models:
        raise KeyError(f"unknown target {target!r}")
    return plan.membership[plan.models.index(target)] | nonmember


def setting_key(attack: Any) -> str:
    return f"{attack.name}:{json.dumps(attack.params(), sort_keys=True)}"


@torch.no_grad()
def score_rows(eps: EpsModel, schedule: NoiseSchedule, attacks: list[Any], images: np.ndarray,
               row_ids: np.ndarray, seed: int, batch_size: int) -> dict[str, np.ndarray]:
    """Args: images [N, C, H, W] float32 in [-1, 1]; row_ids [N] int64.
    Returns: setting key -> [N] float32 scores (higher = member)."""
    out: dict[str, list[np.ndarray]] = {setting_key(a): [] for a in attacks}
    for s in range(0, len(images), batch_size):
        x0 = torch.from_numpy(images[s:s + batch_size])
        ids = torch.from_numpy(row_ids[s:s + batch_size])
        for a in attacks:
            out[setting_key(a)].append(a.score(eps, schedule, x0, ids, seed).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@torch.no_grad()
def heldout_eps_mse(eps: EpsModel, schedule: NoiseSchedule, images: np.ndarray,
                    row_ids: np.ndarray, seed: int, draws: int, batch_size: int = 512) -> float:
    """Mean eps-prediction MSE on held-out images, t ~ U{0..T-1} and noise seeded per row:
    the denoising utility of a model on data it never saw (lower is better)."""
    total, count = 0.0, 0
    T = schedule.num_train_timesteps
    for s in range(0, len(images), batch_size):
        x0 = torch.from_numpy(images[s:s + batch_size])
        for d in range(draws):
            ts, noise = [], []
            for r in row_ids[s:s + batch_size].tolist():
                rng = np.random.default_rng([seed, r, STREAM_QUALITY, d])
                ts.append(int(rng.integers(T)))
                noise.append(rng.standard_normal(x0.shape[1:], dtype=np.float32))
            t = torch.tensor(ts, dtype=torch.long)
            n = torch.from_numpy(np.stack(noise))
            err = (eps(schedule.q_sample(x0, t, n), t) - n).pow(2).flatten(1).mean(1)
            total += float(err.sum())
            count += len(err)
    return total / max(count, 1)


def scores_table(target: str, plan: Plan, mask: np.ndarray, scores: dict[str, np.ndarray]
                 ) -> pa.Table:
    """Long-format raw scores (one row per target x setting x image), saved so every metric can
    be recomputed without models."""
    n = int(mask.sum())
    cols: dict[str, list] = {k: [] for k in
                             ("target", "attack", "params", "row_id", "is_member", "part", "score")}
    for key, s in scores.items():
        name, params = key.split(":", 1)
        cols["target"] += [target] * n
        cols["attack"] += [name] * n
        cols["params"] += [params] * n
        cols["row_id"] += plan.row_id[mask].tolist()
        cols["is_member"] += (plan.split[mask] == MEMBER).tolist()
        cols["part"] += plan.part[mask].tolist()
        cols["score"] += s.astype(float).tolist()
    return pa.table(cols)


def metric_rows(table: pa.Table, bootstrap: int, seed: int
                ) -> tuple[list[dict], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """results.json attack rows and ROC curves (test part) from a raw scores table.

    Returns: (rows, roc_curves[attack_label][target] = (fpr, tpr)).
    """
    df = table.to_pandas()
    rows, curves = [], {}
    for (target, attack, params), g in df.groupby(["target", "attack", "params"], sort=False):
        cal, test = g[g.part != TEST], g[g.part == TEST]
        m = attack_metrics(cal.score.to_numpy(), cal.is_member.to_numpy().astype(int),
                           test.score.to_numpy(), test.is_member.to_numpy().astype(int),
                           bootstrap=bootstrap, seed=seed)
        rows.append({"target": target, "attack": attack, "params": json.loads(params), **m})
        fpr, tpr, _ = roc(test.score.to_numpy(), test.is_member.to_numpy().astype(int))
        curves.setdefault(attack, {})[target] = (fpr, tpr)
    return rows, curves


def load_eps(storage: Storage, model: str, weights: str, cache_dir: str) -> EpsModel:
    from raydefense.diffusion.checkpoint import load_unet
    from raydefense.diffusion.unet import UNetEps

    return UNetEps(load_unet(storage.local_dir(f"models/{model}", cache_dir), weights))


def evaluate_target(cfg: ExperimentConfig, storage: Storage, plan: Plan, target: str,
                    cache_dir: str) -> dict[str, Any]:
    """Everything evaluate computes for one target.

    White-box targets (baseline, teacher_k, student): attack scores on their audited rows, the
    held-out eps-MSE on the non-member test rows, and (baseline, student) a sample grid. `dualmd`
    is black-box: only its alternating sampler's grid (its teachers' white-box rows are their own).

    Returns: {"scores": pa.Table | None, "quality": [rows], "samples": [N, C, H, W] | None}.
    """
    from raydefense.data.sources import to_model_range
    from raydefense.defense.dualmd import DualMDPipeline
    from raydefense.diffusion.sampling import sample

    schedule = NoiseSchedule(cfg.model.num_train_timesteps, cfg.model.beta_start,
                             cfg.model.beta_end)
    s = cfg.sampling
    shape = (s.num_images, *plan.images.shape[1:])
    seed = cfg.seed
    if target == DUALMD:
        teachers = [load_eps(storage, m, cfg.attacks.weights, cache_dir) for m in plan.models[1:]]
        grid = DualMDPipeline(teachers, schedule).generate(shape, s.sampler, s.num_steps, seed)
        return {"scores": None, "quality": [], "samples": grid.numpy()}

    eps = load_eps(storage, target, cfg.attacks.weights, cache_dir)
    mask = audited_rows(plan, target)
    images = to_model_range(plan.images[mask])
    scores = score_rows(eps, schedule, build_attacks(cfg), images, plan.row_id[mask], seed,
                        cfg.attacks.batch_size)
    held = (plan.split == NONMEMBER) & (plan.part == TEST)
    quality = [{"target": target, "metric": "heldout_eps_mse",
                "value": heldout_eps_mse(eps, schedule, to_model_range(plan.images[held]),
                                         plan.row_id[held], seed, s.quality_draws)}]
    grid = None
    if not target.startswith("teacher_"):
        grid = sample([eps], schedule, shape, s.sampler, s.num_steps, seed).numpy()
    return {"scores": scores_table(target, plan, mask, scores), "quality": quality,
            "samples": grid}
