"""The report stage: metrics from the stored scores, the worst case and the privacy-utility
trade-off chosen on calibration, the report files, and what MLflow records of them."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np

from raydefense import layout
from raydefense.attacks.base import variants_not_run
from raydefense.audit.defenses import defense_records
from raydefense.audit.report_results import DATA_KEYS, AuditResults, assemble_results
from raydefense.audit.results import metric_rows
from raydefense.report import write_report
from raydefense.report.markdown import headline_rows
from raydefense.report.text_to_image import DIVERSIFICATION_LABELS, t2i_table
from raydefense.roster import is_teacher
from raydefense.run.context import RunContext
from raydefense.run.fingerprints import (
    attack_sweep_fingerprint,
    training_sweep_fingerprint,
)
from raydefense.run.session import local_copy, versions
from raydefense.tracking.audit_logging import log_evaluations, tag_registered

log = logging.getLogger("raydefense")


def stage_report(ctx: RunContext) -> AuditResults:
    cfg, storage = ctx.cfg, ctx.storage
    scores = storage.read_table(layout.SCORES)
    rows, all_curves = metric_rows(scores, cfg.attacks.bootstrap, cfg.seed)
    curves: dict[str, dict[str, Any]] = {}  # ROC figures for the paper-table lines only
    for h in headline_rows(rows):
        key = f"{h['attack']} {json.dumps(h['params'], sort_keys=True)}"
        curves.setdefault(h["line"], {})[h["target"]] = all_curves[key][h["target"]]
    quality = storage.read_json(layout.QUALITY)
    skipped = storage.read_json(layout.SKIPPED) if storage.exists(layout.SKIPPED) else []
    grids = {}
    for f in storage.listdir(layout.SAMPLES):
        if f.endswith(".npy"):
            grids[f[:-4]] = np.load(io.BytesIO(storage.read_bytes(f"{layout.SAMPLES}/{f}")))
    timings = dict(storage.read_json(layout.TIMINGS)) if storage.exists(layout.TIMINGS) else {}
    timings.update(ctx.timings)
    plan = storage.read_json(layout.PLAN_JSON)
    base = AuditResults(
        experiment=cfg.experiment,
        seed=cfg.seed,
        dataset=cfg.data.source,
        data={k: v for k, v in plan.items() if k in DATA_KEYS},
        config_fingerprint=cfg.fingerprint(),
        versions=versions(),
        timings=timings,
        attacks=rows,
        quality=quality,
        skipped=skipped,
        shadows=storage.read_json(layout.SHADOWS) if storage.exists(layout.SHADOWS) else {},
        references=(
            storage.read_json(layout.REFERENCES) if storage.exists(layout.REFERENCES) else {}
        ),
    )
    if cfg.audit.models:
        base["audit"] = {
            "models": {
                role: {"source": uri, "sha256": cfg.audit.digests.get(role)}
                for role, uri in sorted(cfg.audit.models.items())
            }
        }
    results = assemble_results(
        base,
        scores,
        _sweep_results(ctx, "attacks"),
        _sweep_results(ctx, "training"),
        variants_not_run(cfg.attacks.lira.online_models, "lira" in cfg.attacks.enabled),
        cfg.attacks.bootstrap,
        cfg.seed,
    )
    teachers = [m for m in plan["models"] if is_teacher(m)]
    results["defenses"] = defense_records(storage, list(results["privacy"]), teachers)
    if cfg.model.latent:  # text-to-image: this run's table, or the study's when base
        results["text_to_image"] = _t2i_table(ctx, results)
    seeds = _seed_study(ctx)
    if seeds:
        results["seeds"] = seeds
        ctx.tracker.log_metrics(
            ctx.parent_run,
            {
                f"seeds.{t}.worst_case.auc_{k}": w["auc"][k]
                for t, w in seeds.get("privacy", {}).items()
                for k in ("mean", "sd")
                if isinstance(w.get("auc"), dict) and w["auc"].get(k) is not None
            },
        )
    with tempfile.TemporaryDirectory(prefix="raydefense-report-") as tmp:
        write_report(tmp, results, roc_curves=curves, sample_grids=grids)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as fh:
                storage.write_bytes(f"{layout.REPORT}/{name}", fh.read())
        ctx.tracker.log_artifact(ctx.parent_run, tmp, "report")
        tag_registered(ctx.tracker, ctx.cfg, storage, ctx.parent_run, results, tmp)
    storage.write_json(layout.TIMINGS, timings)
    log_evaluations(ctx.tracker, ctx.parent_run, rows, quality, local_copy(storage, layout.SCORES))
    worst = {
        **results["privacy"],
        **{
            f"{t}.black_box": w["black_box"]
            for t, w in results["privacy"].items()
            if "black_box" in w
        },
    }
    ctx.tracker.log_metrics(
        ctx.parent_run,
        {
            f"{t}.worst_case.{k}": w[k]
            for t, w in worst.items()
            for k in (
                "auc",
                "auc_calibration",
                "tpr_at_1pct_fpr",
                "tpr_at_1pct_fpr_calibrated",
                "fpr_at_1pct_fpr_calibrated",
            )
            if w.get(k) is not None
        }
        | {
            f"{t}.worst_case.empirical_epsilon": w["empirical_epsilon"]["lower"]
            for t, w in worst.items()
            if w.get("empirical_epsilon")
        }
        | defense_metrics(results["defenses"]),
    )
    return results


def _sweep_results(ctx: RunContext, kind: str) -> Optional[dict[str, Any]]:
    """The `sweep.name` sweep of this kind, if it ran over exactly these models / this config
    (its results.json's fingerprint matches); None otherwise."""
    if kind == "attacks":
        if not ctx.cfg.sweep.attacks:
            return None
        rel, key = layout.attack_sweep_dir(ctx.cfg.sweep.name), "attack_sweep_fingerprint"
        expected = attack_sweep_fingerprint(ctx.cfg, ctx.fingerprints)
    else:
        if not ctx.cfg.sweep.training:
            return None
        rel, key = layout.training_sweep_dir(ctx.cfg.sweep.name), "fingerprint"
        expected = training_sweep_fingerprint(ctx.cfg)
    if not ctx.storage.exists(f"{rel}/results.json"):
        return None
    res: dict[str, Any] = ctx.storage.read_json(f"{rel}/results.json")
    if res.get(key) != expected:
        log.info(
            "report: %s sweep %r is from other models or settings; not used",
            kind,
            ctx.cfg.sweep.name,
        )
        return None
    return res


def _t2i_table(ctx: RunContext, results: Mapping[str, Any]) -> dict[str, Any]:
    """The text-to-image table: `raydefense promptdiv`'s (both caption settings) when this
    experiment is its base, else this run's own column group."""
    rel = layout.PROMPTDIV_SUMMARY
    if ctx.storage.exists(rel):
        summary = ctx.storage.read_json(rel)
        if ctx.cfg.experiment in summary.get("experiments", {}).values():
            return dict(summary)
    label = DIVERSIFICATION_LABELS[ctx.cfg.data.prompt_diversification]
    return t2i_table({label: results})


def _seed_study(ctx: RunContext) -> Optional[dict[str, Any]]:
    """`raydefense seeds`' summary when this experiment is its base (its own seed ran under
    this experiment name); None otherwise."""
    rel = layout.SEEDS_SUMMARY
    if not ctx.storage.exists(rel):
        return None
    summary: dict[str, Any] = ctx.storage.read_json(rel)
    if summary.get("experiments", {}).get(str(ctx.cfg.seed)) != ctx.cfg.experiment:
        return None
    return summary


def defense_metrics(defenses: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """MLflow metrics of each target's defense record: `<target>.train_cpu_seconds` (and
    `train_gpu_seconds` when a GPU trained it) where every model has a record, and
    `<target>.dp_epsilon` / `dp_delta` for DP-SGD."""
    out: dict[str, float] = {}
    for t, d in defenses.items():
        if d.get("complete"):
            out[f"{t}.train_cpu_seconds"] = float(d["cpu_seconds"])
            if d.get("gpu_seconds"):
                out[f"{t}.train_gpu_seconds"] = float(d["gpu_seconds"])
        if d.get("dp"):
            out[f"{t}.dp_epsilon"] = float(d["dp"]["epsilon"])
            out[f"{t}.dp_delta"] = float(d["dp"]["delta"])
    return out
