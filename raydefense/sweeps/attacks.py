"""Attack-grid sweeps (`raydefense sweep`): the core, without Ray.

The search space is `sweep.attacks`, the attack grid (`raydefense.audit.grid`): per query or
learned attack, a grid over fields of its `attacks.<name>` section. Every grid point becomes an
attack object; one scoring pass through the audit's `Scorer` (the same Ray Data actor pool as
`evaluate`) scores all
of them for every target and writes `sweeps/<name>/scores.parquet` (long format, like
`evaluate/scores.parquet`) with a completion marker, so a rerun does not rescore.

A Tune trial is one (attack, setting): `trial_metrics` computes, per target, the whole ROC of the
stored scores in one vectorised call (`raydefense.attacks.metrics`), the accuracy-maximising
threshold on the calibration part, and test-part AUC / TPR@1%FPR / calibrated ASR. Thresholds are
never trials. Per target, the defender's worst case is the setting with the highest
**calibration** AUC (`worst_case`; test numbers are never used to choose).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydefense import layout
from raydefense.attacks.base import AccessError, Attack, LearnedAttack, check_access
from raydefense.attacks.metrics import attack_metrics
from raydefense.audit.grid import grid_points, point_attack
from raydefense.audit.learned import fit_learned, learned_fit_args, learned_scores
from raydefense.audit.scoring import (
    SCORES_COLUMNS,
    ScoreJob,
    Scorer,
    long_rows,
    query_col,
    setting_label,
    shadow_jobs,
)
from raydefense.audit.selection import strongest_per_target
from raydefense.audit.targets import audited_rows, check_explicit_targets
from raydefense.config import ExperimentConfig
from raydefense.data.plan import MEMBER, TEST, Plan
from raydefense.data.tables import read_plan
from raydefense.roster import all_targets, target_access, target_order_key
from raydefense.run.context import RunContext
from raydefense.run.fingerprints import attack_sweep_fingerprint
from raydefense.run.markers import is_complete, mark_complete, unpublish
from raydefense.run.session import local_copy

log = logging.getLogger("raydefense")

TRIAL_METRICS = (
    "auc",
    "tpr_at_1pct_fpr",
    "asr_calibrated",
    "auc_calibration",
    "orientation",
    "tpr_at_1pct_fpr_calibrated",
    "fpr_at_1pct_fpr_calibrated",
)
SELECTION_RULE = (
    "per target, the (attack, setting) with the highest calibration-part AUC "
    "(ties: the first in sweep order); its test-part metrics are reported"
)


def sweep_dir(cfg: ExperimentConfig) -> str:
    return layout.attack_sweep_dir(cfg.sweep.name)


def sweep_targets(cfg: ExperimentConfig, plan: Plan, attacks: list[Attack]) -> dict[str, list[int]]:
    """target -> indices of the swept attacks its access serves. `attacks.targets`, when set,
    must serve every swept attack; otherwise every target serving at least one is audited
    (say DualMD's gray-box access: the query attacks, not GSA)."""
    if cfg.attacks.targets is not None:
        check_explicit_targets(cfg)
        for t in cfg.attacks.targets:
            for a in attacks:
                check_access(a, t, target_access(cfg, t))
        return {t: list(range(len(attacks))) for t in cfg.attacks.targets}
    out: dict[str, list[int]] = {}
    for t in all_targets(plan.num_shards, cfg.train.variant_targets()):
        ok = []
        for i, a in enumerate(attacks):
            try:
                check_access(a, t, target_access(cfg, t))
                ok.append(i)
            except AccessError:
                pass
        if len(ok) < len(attacks):
            refused = sorted({attacks[i].name for i in range(len(attacks)) if i not in ok})
            log.info("sweep: target %s cannot serve %s (its access)", t, ", ".join(refused))
        if ok:
            out[t] = ok
    return out


def score_sweep(cfg: ExperimentConfig, plan: Plan, scorer: Scorer) -> pa.Table:
    """Score every grid point's attack for every target in ONE pass of `scorer.score` (one
    job per target with all points' attacks, plus one per shadow model for shadow-trained
    points; no generation, no held-out quality). Learned points then fit their classifier once
    per target (`scorer.map(fit_learned, ...)`, as evaluate does) and give per-row scores.

    Returns the long-format table (SCORES_COLUMNS); a setting produced by two grid points (say
    PIA's canonical t) appears once.
    """
    points = grid_points(cfg)
    attacks = [point_attack(cfg, p) for p in points]
    served = sweep_targets(cfg, plan, attacks)
    targets = list(served)
    jobs = [
        ScoreJob(t, audited_rows(plan, t), [points[i].key for i in served[t]], with_quality=False)
        for t in targets
    ]
    jobs += shadow_jobs(
        cfg,
        plan,
        {
            t: [points[i].key for i in served[t] if attacks[i].trains_on == "shadow"]
            for t in targets
        },
    )
    t0 = time.perf_counter()
    columns, _ = scorer.score(cfg, plan, jobs, {})
    scored = dict(zip([j.name for j in jobs], columns))
    log.info(
        "sweep: scored %d settings of %d attacks on %d targets in %.1fs",
        sum(len(a.settings()) for a in attacks),
        len(cfg.sweep.attacks),
        len(targets),
        time.perf_counter() - t0,
    )
    learned = [
        (t, points[i], a)
        for t in targets
        for i in served[t]
        if isinstance(a := attacks[i], LearnedAttack)
    ]
    fitted: dict[tuple[str, str], np.ndarray] = {}
    if learned:
        t0 = time.perf_counter()
        outs = scorer.map(
            fit_learned, [learned_fit_args(cfg, plan, t, p.key, a, scored) for t, p, a in learned]
        )
        for (t, p, _), out in zip(learned, outs):
            fitted[(t, p.key)] = learned_scores(out, plan.part[audited_rows(plan, t)])
        log.info(
            "sweep: fitted %d learned-attack classifiers in %.1fs",
            len(learned),
            time.perf_counter() - t0,
        )
    cols: dict[str, list[Any]] = {k: [] for k in SCORES_COLUMNS}
    for t in targets:
        res = scored[t]
        mask = audited_rows(plan, t)
        ids, member, part = plan.row_id[mask], plan.split[mask] == MEMBER, plan.part[mask]
        seen: set[tuple[str, str]] = set()
        for p, a in ((points[j], attacks[j]) for j in served[t]):
            for i, params in enumerate(a.settings()):
                # swept fields an attack's settings() omit (GSA's n_estimators) stay visible
                shown = {**dict(p.values), **params}
                if (p.attack, setting_label(shown)) in seen:
                    continue
                seen.add((p.attack, setting_label(shown)))
                score = fitted[(t, p.key)] if a.kind == "learned" else res[query_col(p.key, i)]
                long_rows(cols, t, p.attack, shown, ids, member, part, score)
    return pa.table(cols)


def trials_of(scores: pa.Table) -> list[dict[str, str]]:
    """The (attack, params) pairs of a scores table, in first-appearance order: one trial each."""
    seen: dict[tuple[str, str], None] = {}
    for a, p in zip(scores.column("attack").to_pylist(), scores.column("params").to_pylist()):
        seen.setdefault((a, p), None)
    return [{"attack": a, "params": p} for a, p in seen]


def trial_metrics(scores: pa.Table, attack: str, params: str) -> dict[str, dict[str, float]]:
    """One trial: per target, the ROC-derived metrics of one (attack, setting).

    The accuracy-maximising threshold is chosen on the calibration part and applied to the test
    part (asr_calibrated); auc and tpr_at_1pct_fpr (max TPR with FPR <= 1%) are on the test
    part; auc_calibration is what the worst case is selected by.
    Returns: {target: {auc, tpr_at_1pct_fpr, asr_calibrated, auc_calibration}}.
    """
    sel = scores.filter(
        pc.and_(pc.equal(scores["attack"], attack), pc.equal(scores["params"], params))
    )
    if sel.num_rows == 0:
        raise KeyError(f"no scores for attack {attack!r} with params {params}")
    target = np.asarray(sel.column("target").to_pylist())
    score = sel.column("score").to_numpy()
    member = sel.column("is_member").to_numpy(zero_copy_only=False).astype(np.int64)
    test = sel.column("part").to_numpy(zero_copy_only=False) == TEST
    out: dict[str, dict[str, float]] = {}
    for t in dict.fromkeys(target.tolist()):
        m = target == t
        cal, tst = m & ~test, m & test
        full = attack_metrics(score[cal], member[cal], score[tst], member[tst], bootstrap=0)
        out[t] = {k: full[k] for k in TRIAL_METRICS}
    return out


def evaluate(scores: pa.Table, setting: str) -> dict[str, float]:
    """One attack-sweep trial, as a trial runner calls it: `setting` is "<attack> <params>";
    its per-target metrics, flat (`flatten_metrics`)."""
    attack, params = setting.split(" ", 1)
    return flatten_metrics(trial_metrics(scores, attack, params))


def flatten_metrics(per_target: dict[str, dict[str, float]]) -> dict[str, float]:
    """{target: {metric: v}} -> {"<target>.<metric>": v} (what a trial reports to Tune)."""
    return {
        f"{t}.{k}": float(v) for t, m in per_target.items() for k, v in m.items() if v is not None
    }  # a resolution-limited metric has no value


def unflatten_metrics(flat: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, v in flat.items():
        t, _, k = key.rpartition(".")
        if t and k in TRIAL_METRICS:
            out.setdefault(t, {})[k] = float(v)
    return out


def worst_case(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per target, the row (one per trial x target) with the highest calibration AUC; ties go
    to the first row in sweep order. Test metrics never take part in the choice."""
    return dict(strongest_per_target(rows))


def sweep_rows(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tune results ({attack, params, metrics: {target: {...}}}) -> one row per (trial, target),
    in trial order (params parsed back into a dict)."""
    rows = []
    for tr in trials:
        for t, m in tr["metrics"].items():
            rows.append(
                {
                    "target": t,
                    "attack": tr["attack"],
                    "params": json.loads(tr["params"]),
                    **{k: m.get(k) for k in TRIAL_METRICS},
                }
            )
    return rows


def _num(v: Any) -> str:
    return "res.lim." if v is None else f"{v:.3f}"


def summary(results: Mapping[str, Any], where: str) -> str:
    """The table the CLI prints: per target, the worst-case setting and its metrics."""
    lines = [
        f"raydefense: sweep {results['sweep']!r}: {results['num_trials']} trials; results "
        f"in {where}/ (results.json, scores.parquet)",
        "  worst case per target (highest calibration AUC; metrics on the test part):",
        f"  {'target':<10} {'cal AUC':>7} {'AUC':>6} {'TPR@1%FPR':>9} {'ASR':>6}  attack setting",
    ]
    for t in sorted(results["worst_case"], key=target_order_key):
        r = results["worst_case"][t]
        setting = json.dumps(r["params"], sort_keys=True, separators=(",", ":"))
        lines.append(
            f"  {t:<10} {r['auc_calibration']:>7.3f} {r['auc']:>6.3f} "
            f"{_num(r.get('tpr_at_1pct_fpr')):>9} {r['asr_calibrated']:>6.3f}  "
            f"{r['attack']} {setting}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- orchestration


def run_sweep(ctx: RunContext) -> dict[str, Any]:
    """The sweep command after the pipeline is complete through distill (ctx: a RunContext with
    fingerprints set). Scores (skipped when the marker matches), Tune trials (resumed when
    their run storage exists), MLflow parent `sweep/<name>` with one child per trial, and
    `sweeps/<name>/results.json`. Returns the results dict."""
    cfg, storage = ctx.cfg, ctx.storage
    base = sweep_dir(cfg)
    points = grid_points(cfg)
    fp = attack_sweep_fingerprint(cfg, ctx.fingerprints)
    marker, scores_rel = layout.marker(base), f"{base}/scores.parquet"
    t0 = time.perf_counter()
    if "sweep" in ctx.force or not is_complete(storage, marker, fp):
        unpublish(storage, marker)
        table = score_sweep(cfg, read_plan(storage), ctx.scorer)
        storage.write_table(scores_rel, table)
        mark_complete(
            storage, marker, fp, {"rows": table.num_rows}, manifest=storage.manifest(scores_rel)
        )
        rescored = True
    else:
        log.info("sweep: scores complete (fingerprint %s), not rescored", fp[:12])
        table, rescored = storage.read_table(scores_rel), False
    score_s = time.perf_counter() - t0
    trials = trials_of(table)
    tracker = ctx.tracker
    parent = tracker.start_run(
        f"sweep/{cfg.sweep.name}",
        ctx.parent_run,
        params={
            "sweep.name": cfg.sweep.name,
            "sweep.attacks": json.dumps(cfg.sweep.attacks),
            "sweep.num_trials": str(len(trials)),
            "sweep.attack_sweep_fingerprint": fp,
        },
        tags={"raydefense.sweep": cfg.sweep.name},
    )
    status = "FAILED"
    try:
        t0 = time.perf_counter()
        settings = [f"{t['attack']} {t['params']}" for t in trials]
        ran = ctx.trials.attack_trials(
            cfg, storage, f"{base}/tune", f"trials-{fp[:12]}", settings, partial(evaluate, table)
        )
        done = [{**t, **r, "metrics": unflatten_metrics(r["metrics"])} for t, r in zip(trials, ran)]
        tune_s = time.perf_counter() - t0
        for tr in done:
            child = tracker.start_run(
                f"sweep/{cfg.sweep.name}/{tr['attack']}",
                parent,
                params={
                    "attack": tr["attack"],
                    "setting": tr["params"],
                    **{
                        f"setting.{k}": json.dumps(v) if isinstance(v, (list, dict)) else v
                        for k, v in json.loads(tr["params"]).items()
                    },
                },
                tags={
                    "raydefense.sweep": cfg.sweep.name,
                    "raydefense.trial_id": str(tr.get("trial_id", "")),
                },
            )
            tracker.log_metrics(child, flatten_metrics(tr["metrics"]))
            tracker.end_run(child)
        rows = sweep_rows(done)
        worst = worst_case(rows)
        results = {
            "experiment": cfg.experiment,
            "sweep": cfg.sweep.name,
            "attack_sweep_fingerprint": fp,
            "space": cfg.sweep.attacks,
            "grid_points": [{"attack": p.attack, **dict(p.values)} for p in points],
            "num_trials": len(done),
            "selection": SELECTION_RULE,
            "rescored": rescored,
            "timings": {"scores_s": round(score_s, 2), "tune_s": round(tune_s, 2)},
            "trials": rows,
            "worst_case": worst,
        }
        storage.write_json(f"{base}/results.json", results)
        for t, r in worst.items():
            tracker.log_metrics(
                parent, {f"{t}.worst.{k}": r[k] for k in TRIAL_METRICS if r.get(k) is not None}
            )
            tracker.set_tags(
                parent, {f"worst.{t}": f"{r['attack']} {json.dumps(r['params'], sort_keys=True)}"}
            )
        tracker.log_artifact(parent, local_copy(storage, f"{base}/results.json"), "sweep")
        status = "FINISHED"
        return results
    finally:
        tracker.end_run(parent, status)
