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


def run_evaluation(
    cfg: ExperimentConfig, storage: Storage, plan: Plan, scorer: Scorer, cache_dir: str
) -> EvaluationResult:
    """Everything the evaluate stage computes. Steps:

    1. per target, one scoring job over its audited rows (query scores, learned features,
       held-out eps-MSE) and, for shadow-trained attacks, one job per shadow model;
    2. generation from every target's public sampler (sample grids, blackbox_nn, quality);
    3. the domain classifier; learned-attack fits (one task per target x attack);
    4. long-format raw scores + quality rows.
    """
    ap = plan_attacks(cfg, plan)
    by_name = {a.name: a for t in ap.targets for a in ap.attacks[t]}
    # Per target one scoring job: its eps-query attacks, and the attacks that query its public
    # interface row by row (a black-box DualMD has only those, and no eps-MSE).
    jobs = [
        ScoreJob(
            t,
            audited_rows(plan, t),
            names,
            with_quality=target_access(cfg, t) != "black-box",
        )
        for t in ap.targets
        for names in [[a.name for a in ap.attacks[t] if a.kind in SCORED_KINDS]]
        if target_access(cfg, t) != "black-box" or names
    ]
    served = {t: [a.name for a in ap.attacks[t] if a.trains_on == "shadow"] for t in ap.targets}
    jobs += shadow_jobs(cfg, plan, served)
    # Reference-calibrated attacks: the targets on population rows, the references on the
    # audited rows and the population (checked OUT for every audited row first).
    referenced = {
        t: [a for a in ap.attacks[t] if isinstance(a, ReferenceAttack)] for t in ap.targets
    }
    jobs += reference_jobs(cfg, plan, referenced)
    # The same pool generates images (grids, black-box attack, quality) with the models it holds.
    needs_bb = any(a.kind == "generated" for t in ap.targets for a in ap.attacks[t])
    n_gen = max(
        cfg.sampling.num_images,
        cfg.quality.num_generated,
        cfg.attacks.blackbox_nn.num_generated if needs_bb else 0,
    )
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

    cols: dict[str, list[Any]] = {
        k: [] for k in ("target", "attack", "params", "row_id", "is_member", "part", "score")
    }
    quality: list[dict[str, Any]] = []
    fits: list[tuple[Any, ...]] = []
    fit_keys: list[tuple[str, str]] = []
    ref_fits: list[tuple[Any, ...]] = []
    ref_keys: list[tuple[str, ReferenceAttack, list[dict[str, Any]], int, int]] = []
    for t in ap.targets:
        mask = audited_rows(plan, t)
        ids, member = plan.row_id[mask], plan.split[mask] == MEMBER
        part = plan.part[mask]
        res = scored.get(t, {})
        for a in ap.attacks[t]:
            if isinstance(a, ColumnAttack):
                for i, params in enumerate(a.settings()):
                    long_rows(cols, t, a.name, params, ids, member, part, res[query_col(a.name, i)])
            elif isinstance(a, DualMDAdaptive):
                for params, score in adaptive_scores(cfg, plan, a, res, mask):
                    long_rows(cols, t, a.name, params, ids, member, part, score)
            elif isinstance(a, GeneratedAttack):
                s = a.score_generated(
                    torch.tensor(gen[t][: a.cfg.num_generated]),
                    torch.from_numpy(to_model_range(plan.images[mask])),
                    domain.feature_fn if domain is not None else None,
                ).numpy()
                for i, params in enumerate(a.settings(with_features=domain is not None)):
                    long_rows(cols, t, a.name, params, ids, member, part, s[:, i])
            elif isinstance(a, LearnedAttack):
                fits.append(learned_fit_args(cfg, plan, t, a.name, a, scored))
                fit_keys.append((t, a.name))
            elif isinstance(a, ReferenceAttack):
                settings, data = reference_inputs(cfg, plan, t, a, scored)
                ref_fits.append((a.name, cfg.model_dump(mode="json"), data))
                n_online = len(online_references(cfg, plan, t)) if isinstance(a, LiRA) else 0
                ref_keys.append((t, a, settings, len(references_for(cfg, plan, t)), n_online))
            elif isinstance(a, CombinedAttack):
                continue  # combines the other columns once they all exist (below)
            else:
                raise TypeError(f"attack {a.name!r} subclasses none of raydefense.attacks.base's")
        if QUALITY_COL in res:
            # Reported on the test non-members; what choices read, on the calibration ones.
            for metric, rows in (
                ("heldout_eps_mse", TEST),
                ("heldout_eps_mse_calibration", CALIBRATION),
            ):
                held = (plan.split[mask] == NONMEMBER) & (part == rows)
                quality.append(
                    {"target": t, "metric": metric, "value": float(res[QUALITY_COL][held].mean())}
                )
        n_gen = cfg.quality.num_generated
        prompts = generation_prompts(plan, len(gen[t]), cfg.seed)
        quality += quality_rows(
            cfg, plan, t, gen[t][:n_gen], domain, None if prompts is None else prompts[:n_gen]
        )
    log.info(
        "evaluate: domain classifier, generated-image attacks and quality in %.1fs",
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    for (t, name), out in zip(fit_keys, scorer.map(fit_learned, fits)):
        mask = audited_rows(plan, t)
        ids, member, part = plan.row_id[mask], plan.split[mask] == MEMBER, plan.part[mask]
        params = by_name[name].settings()[0]
        long_rows(cols, t, name, params, ids, member, part, learned_scores(out, part))
    log.info("evaluate: fitted %d learned attacks in %.1fs", len(fits), time.perf_counter() - t0)
    t0 = time.perf_counter()
    for (t, a, settings, n_refs, n_online), out in zip(
        ref_keys, scorer.map(score_reference_attack, ref_fits)
    ):
        mask = audited_rows(plan, t)
        ids, member, part = plan.row_id[mask], plan.split[mask] == MEMBER, plan.part[mask]
        for params, score in reference_rows(a, settings, out, n_refs, n_online):
            long_rows(cols, t, a.name, params, ids, member, part, score)
    log.info(
        "evaluate: %d reference-calibrated attacks in %.1fs",
        len(ref_fits),
        time.perf_counter() - t0,
    )
    t0 = time.perf_counter()
    combined = [(t, a) for t in ap.targets for a in ap.attacks[t] if isinstance(a, CombinedAttack)]
    if combined:
        import pandas as pd

        table = pd.DataFrame(cols)  # every column so far, built once for all targets
        for t, a in combined:
            params, score = combined_scores(cfg, plan, t, a, table)
            mask = audited_rows(plan, t)
            ids, member, part = plan.row_id[mask], plan.split[mask] == MEMBER, plan.part[mask]
            long_rows(cols, t, a.name, params, ids, member, part, score)
    log.info("evaluate: combined attacks in %.1fs", time.perf_counter() - t0)
    if domain is not None:
        quality.append(
            {
                "target": "real",
                "metric": "domain_classifier_train_accuracy",
                "value": float(domain.train_accuracy),
            }
        )
        quality.append(
            {
                "target": "real",
                "metric": "domain_classifier_rows",
                "value": float(domain.train_rows),
            }
        )
    samples = {t: g[: cfg.sampling.num_images] for t, g in gen.items()}
    return EvaluationResult(
        pa.table(cols),
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
