"""The evaluate stage's computation: every target scored by its attacks, generation, utility,
learned fits; long-format raw scores.

Thresholds are chosen on the calibration part and reported on the test part (invariant 5); an
attack that learns on the calibration part (secmi_nn) gives out-of-fold calibration scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from raydefense.attacks.adaptive import DualMDAdaptive
from raydefense.attacks.base import ColumnAttack, GeneratedAttack, LearnedAttack
from raydefense.attacks.combined import CombinedAttack
from raydefense.attacks.lira_rmia import LiRA, ReferenceAttack
from raydefense.audit.learned import (
    adaptive_scores,
    fit_learned,
    learned_fit_args,
    learned_scores,
)
from raydefense.audit.reference import (
    online_membership,
    reference_inputs,
    reference_jobs,
    reference_members,
    reference_rows,
    references_for,
    score_reference_attack,
)
from raydefense.audit.scoring import (
    QUALITY_COL,
    ScoreJob,
    Scorer,
    generation_prompts,
    long_rows,
    query_col,
    shadow_jobs,
)
from raydefense.audit.targets import (
    AttackPlan,
    audited_rows,
    online_references,
    plan_attacks,
    shadows_for,
)
from raydefense.audit.utility import quality_rows, train_domain_features
from raydefense.config import ExperimentConfig
from raydefense.data.plan import CALIBRATION, MEMBER, NONMEMBER, TEST, Plan
from raydefense.data.pool import to_model_range
from raydefense.roster import parse_shadow, target_access
from raydefense.seeding import STREAM_QUALITY, derive_seed
from raydefense.storage import Storage

# Attack kinds a scoring job computes per row (the rest: generated-set and adaptive attacks).
SCORED_KINDS = ("query", "learned", "text", "interface")

log = logging.getLogger("raydefense")


@dataclass
class EvaluationResult:
    scores: pa.Table
    quality: list[dict[str, Any]]
    samples: dict[str, np.ndarray]
    skipped: list[dict[str, str]]
    shadows: dict[str, dict[str, Any]] = field(default_factory=dict)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)


class ScoreRows:
    """The long-format scores table being built (SCORES_COLUMNS but the plan's labels): one row
    per (target, attack, setting, audited row), in the order added."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.cols: dict[str, list[Any]] = {
            k: [] for k in ("target", "attack", "params", "row_id", "is_member", "part", "score")
        }

    def add(self, target: str, attack: str, params: dict[str, Any], score: np.ndarray) -> None:
        """score: [N] over the target's audited rows (`audited_rows`), in plan order."""
        plan, mask = self.plan, audited_rows(self.plan, target)
        member = plan.split[mask] == MEMBER
        long_rows(self.cols, target, attack, params, plan.row_id[mask], member, plan.part[mask],
                  score)  # fmt: skip


@dataclass
class _Deferred:
    """Work that needs every target's scores first: learned-attack fits and reference fits (one
    task each, placed by the scorer), keyed by what they score."""

    fits: list[tuple[Any, ...]] = field(default_factory=list)
    fit_keys: list[tuple[str, str]] = field(default_factory=list)
    ref_fits: list[tuple[Any, ...]] = field(default_factory=list)
    ref_keys: list[tuple[str, ReferenceAttack, list[dict[str, Any]], int, int]] = field(
        default_factory=list
    )


def scoring_jobs(
    cfg: ExperimentConfig, plan: Plan, ap: AttackPlan
) -> tuple[list[ScoreJob], dict[str, list[str]], dict[str, list[ReferenceAttack]]]:
    """Per target one scoring job (its eps-query attacks, and the attacks that query its public
    interface row by row: a black-box DualMD has only those, and no eps-MSE), one per shadow
    model of the shadow-trained attacks, and the reference-calibrated attacks' jobs (the targets
    on population rows, the references on the audited rows and the population, each checked OUT
    for every audited row first). Returns (jobs, served: target -> its shadow-trained attacks,
    referenced: target -> its reference attacks)."""
    jobs = [
        ScoreJob(t, audited_rows(plan, t), names, with_quality=target_access(cfg, t) != "black-box")
        for t in ap.targets
        for names in [[a.name for a in ap.attacks[t] if a.kind in SCORED_KINDS]]
        if target_access(cfg, t) != "black-box" or names
    ]
    served = {t: [a.name for a in ap.attacks[t] if a.trains_on == "shadow"] for t in ap.targets}
    jobs += shadow_jobs(cfg, plan, served)
    referenced = {
        t: [a for a in ap.attacks[t] if isinstance(a, ReferenceAttack)] for t in ap.targets
    }
    jobs += reference_jobs(cfg, plan, referenced)
    return jobs, served, referenced


def generated_per_target(cfg: ExperimentConfig, ap: AttackPlan) -> int:
    """Images each target's public sampler draws: for the grids, quality and blackbox_nn."""
    needs_bb = any(a.kind == "generated" for t in ap.targets for a in ap.attacks[t])
    return max(
        cfg.sampling.num_images,
        cfg.quality.num_generated,
        cfg.attacks.blackbox_nn.num_generated if needs_bb else 0,
    )


def _direct_scores(
    cfg: ExperimentConfig,
    plan: Plan,
    target: str,
    attacks: list[Any],
    res: dict[str, np.ndarray],
    generated: np.ndarray,
    domain: Any,
    rows: ScoreRows,
    deferred: _Deferred,
    scored: dict[str, dict[str, np.ndarray]],
) -> None:
    """One target's rows that need nothing from the other targets (column, router-aware and
    generated-image attacks); its learned and reference attacks are queued in `deferred`;
    combined attacks wait for every other column."""
    mask = audited_rows(plan, target)
    for a in attacks:
        if isinstance(a, ColumnAttack):
            for i, params in enumerate(a.settings()):
                rows.add(target, a.name, params, res[query_col(a.name, i)])
        elif isinstance(a, DualMDAdaptive):
            for params, score in adaptive_scores(cfg, plan, a, res, mask):
                rows.add(target, a.name, params, score)
        elif isinstance(a, GeneratedAttack):
            s = a.score_generated(
                torch.tensor(generated[: a.cfg.num_generated]),
                torch.from_numpy(to_model_range(plan.images[mask])),
                domain.feature_fn if domain is not None else None,
            ).numpy()
            for i, params in enumerate(a.settings(with_features=domain is not None)):
                rows.add(target, a.name, params, s[:, i])
        elif isinstance(a, LearnedAttack):
            deferred.fits.append(learned_fit_args(cfg, plan, target, a.name, a, scored))
            deferred.fit_keys.append((target, a.name))
        elif isinstance(a, ReferenceAttack):
            settings, data = reference_inputs(cfg, plan, target, a, scored)
            deferred.ref_fits.append((a.name, cfg.model_dump(mode="json"), data))
            n_online = len(online_references(cfg, plan, target)) if isinstance(a, LiRA) else 0
            n_refs = len(references_for(cfg, plan, target))
            deferred.ref_keys.append((target, a, settings, n_refs, n_online))
        elif isinstance(a, CombinedAttack):
            continue  # combines the other columns once they all exist
        else:
            raise TypeError(f"attack {a.name!r} subclasses none of raydefense.attacks.base's")


def _target_quality(
    cfg: ExperimentConfig,
    plan: Plan,
    target: str,
    res: dict[str, np.ndarray],
    generated: np.ndarray,
    domain: Any,
) -> list[dict[str, Any]]:
    """A target's utility rows: its held-out eps-MSE (reported on the test non-members; what
    choices read, on the calibration ones) and its generated images' quality."""
    out = []
    if QUALITY_COL in res:
        mask = audited_rows(plan, target)
        part = plan.part[mask]
        for metric, rows in (
            ("heldout_eps_mse", TEST),
            ("heldout_eps_mse_calibration", CALIBRATION),
        ):
            held = (plan.split[mask] == NONMEMBER) & (part == rows)
            value = float(res[QUALITY_COL][held].mean())
            out.append({"target": target, "metric": metric, "value": value})
    n_gen = cfg.quality.num_generated
    prompts = generation_prompts(plan, len(generated), cfg.seed)
    out += quality_rows(
        cfg, plan, target, generated[:n_gen], domain, None if prompts is None else prompts[:n_gen]
    )
    return out


def run_evaluation(
    cfg: ExperimentConfig, storage: Storage, plan: Plan, scorer: Scorer, cache_dir: str
) -> EvaluationResult:
    """Everything the evaluate stage computes. Steps:

    1. per target, one scoring job over its audited rows (query scores, learned features,
       held-out eps-MSE) and, for shadow-trained and reference attacks, their models' jobs;
    2. generation from every target's public sampler (sample grids, blackbox_nn, quality), by
       the same pool with the models it holds;
    3. the domain classifier; per target the rows that need no other target, and its quality;
    4. learned-attack and reference fits (one task each), then the combined attacks;
    5. long-format raw scores + quality rows.
    """
    ap = plan_attacks(cfg, plan)
    by_name = {a.name: a for t in ap.targets for a in ap.attacks[t]}
    jobs, served, referenced = scoring_jobs(cfg, plan, ap)
    n_gen = generated_per_target(cfg, ap)
    t0 = time.perf_counter()
    columns, gen = scorer.score(cfg, plan, jobs, {t: n_gen for t in ap.targets})
    scored = dict(zip([j.name for j in jobs], columns))
    log.info(
        "evaluate: scored %d models and generated %d images per target in %.1fs",
        len(jobs),
        n_gen,
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    domain = train_domain_features(cfg, plan)
    rows, deferred = ScoreRows(plan), _Deferred()
    quality: list[dict[str, Any]] = []
    for t in ap.targets:
        res = scored.get(t, {})
        _direct_scores(cfg, plan, t, ap.attacks[t], res, gen[t], domain, rows, deferred, scored)
        quality += _target_quality(cfg, plan, t, res, gen[t], domain)
    log.info(
        "evaluate: domain classifier, generated-image attacks and quality in %.1fs",
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    for (t, name), out in zip(deferred.fit_keys, scorer.map(fit_learned, deferred.fits)):
        params = by_name[name].settings()[0]
        rows.add(t, name, params, learned_scores(out, plan.part[audited_rows(plan, t)]))
    log.info(
        "evaluate: fitted %d learned attacks in %.1fs",
        len(deferred.fits),
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    ref_out = scorer.map(score_reference_attack, deferred.ref_fits)
    for (t, a, settings, n_refs, n_online), out in zip(deferred.ref_keys, ref_out):
        for params, score in reference_rows(a, settings, out, n_refs, n_online):
            rows.add(t, a.name, params, score)
    log.info(
        "evaluate: %d reference-calibrated attacks in %.1fs",
        len(deferred.ref_fits),
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    combined = [(t, c) for t in ap.targets for c in ap.attacks[t] if isinstance(c, CombinedAttack)]
    if combined:
        import pandas as pd

        table = pd.DataFrame(rows.cols)  # every column so far, built once for all targets
        for t, c in combined:
            params, score = combined_scores(cfg, plan, t, c, table)
            rows.add(t, c.name, params, score)
    log.info("evaluate: combined attacks in %.1fs", time.perf_counter() - t0)
    if domain is not None:
        quality += [
            {"target": "real", "metric": "domain_classifier_train_accuracy",
             "value": float(domain.train_accuracy)},
            {"target": "real", "metric": "domain_classifier_rows",
             "value": float(domain.train_rows)},
        ]  # fmt: skip
    samples = {t: g[: cfg.sampling.num_images] for t, g in gen.items()}
    return EvaluationResult(
        pa.table(rows.cols),
        quality,
        samples,
        ap.skipped,
        shadow_summary(cfg, plan, served),
        reference_summary(cfg, plan, referenced),
    )


def shadow_summary(
    cfg: ExperimentConfig, plan: Plan, served: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    """Per target audited by a shadow-trained attack: the attacks, the regime its shadows
    imitate and each shadow's member / held-out row counts (results.json `shadows`)."""
    out = {}
    for t, names in served.items():
        if not names:
            continue
        models = shadows_for(cfg, plan, t)
        first = parse_shadow(models[0])
        assert first is not None  # shadows_for names shadow models only
        out[t] = {
            "attacks": names,
            "regime": first[1],
            "models": {
                m: {
                    "members": int(plan.members_of(m).sum()),
                    "heldout": int(plan.shadow_nonmembers(m).sum()),
                }
                for m in models
            },
        }
    return out


def combined_scores(
    cfg: ExperimentConfig,
    plan: Plan,
    target: str,
    attack: CombinedAttack,
    table: Any,
) -> tuple[dict[str, Any], np.ndarray]:
    """The combined attack on `target` over every attack column scored on it so far (`table`:
    a pandas DataFrame of the long-format columns): (params, scores over its audited rows in
    plan order)."""
    df = table[(table.target == target) & (table.attack != attack.name)]
    wide = df.pivot_table(index="row_id", columns=["attack", "params"], values="score")
    mask = audited_rows(plan, target)
    ids = plan.row_id[mask]
    features = wide.reindex(ids).to_numpy(dtype=np.float64)
    member = plan.split[mask] == MEMBER
    calibration = plan.part[mask] != TEST
    seed = derive_seed(cfg.seed, STREAM_QUALITY, len(attack.name))
    score = attack.combine(features, member, calibration, seed)
    params = {
        **attack.settings()[0],
        "columns": int(features.shape[1]),
        "attacks": sorted({str(a) for a, _ in wide.columns}),
    }
    return params, score


def reference_summary(
    cfg: ExperimentConfig, plan: Plan, referenced: dict[str, list[ReferenceAttack]]
) -> dict[str, dict[str, Any]]:
    """Per target audited by reference-calibrated attacks: the attacks, the population size
    and each reference model's member count and its overlap with the audited rows (0 by
    `check_references`) (results.json `references`)."""
    out = {}
    population = int(plan.population().sum())
    for t, attacks in referenced.items():
        if not attacks:
            continue
        refs = references_for(cfg, plan, t) if any(a.uses_references for a in attacks) else []
        audited = audited_rows(plan, t)
        out[t] = {
            "attacks": [a.name for a in attacks],
            "population_rows": population,
            "models": {
                r: {
                    "members": int(reference_members(plan, r).sum()),
                    "audited_rows_trained_on": int((reference_members(plan, r) & audited).sum()),
                }
                for r in refs
            },
        }
        online = (
            online_references(cfg, plan, t) if any(isinstance(a, LiRA) for a in attacks) else []
        )
        if online:  # online LiRA: IN for the rows they trained on (membership matrix)
            inside = online_membership(plan, t, online)
            out[t]["online"] = {
                "models": {
                    r: {"members": int(reference_members(plan, r).sum()), "audited_rows_in": int(n)}
                    for r, n in zip(online, inside.sum(axis=1))
                },
                "in_per_row": [int(inside.sum(0).min()), int(inside.sum(0).max())],
            }
    return out
