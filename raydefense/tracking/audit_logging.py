"""What MLflow records of an audit: the evaluation metrics by name (`<target>.<attack>.<metric>`
on the pipeline's run, one child run per target) and the Model Registry tags of each audited
version (its worst case, TPR at 1% FPR, utility, the report's run)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from raydefense import layout
from raydefense.config import ExperimentConfig
from raydefense.storage import Storage
from raydefense.tracking.tracker import Tracker

log = logging.getLogger("raydefense")

# The attack metrics logged per (target, attack), as `<target>.<attack>.<key>`.
EVALUATION_KEYS = (
    "auc",
    "tpr_at_1pct_fpr",
    "tpr_at_0.1pct_fpr",
    "tpr_at_1pct_fpr_calibrated",
    "fpr_at_1pct_fpr_calibrated",
    "asr_calibrated",
    "asr_oracle",
)


def evaluation_metrics(
    rows: list[dict[str, Any]], quality: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """Per target, its metrics by MLflow name: `<attack>.<key>` for every attack row's
    EVALUATION_KEYS that has a value, and each quality metric by its own name."""
    by_target: dict[str, dict[str, float]] = {}
    for r in rows:
        for k in EVALUATION_KEYS:
            if r.get(k) is not None:
                by_target.setdefault(r["target"], {})[f"{r['attack']}.{k}"] = r[k]
    for q in quality:
        by_target.setdefault(q["target"], {})[q["metric"]] = q["value"]
    return by_target


def log_evaluations(
    tracker: Tracker,
    parent_run: Optional[str],
    rows: list[dict[str, Any]],
    quality: list[dict[str, Any]],
    scores_path: str,
) -> None:
    """Metrics on the parent (`<target>.<attack>.auc`, ...) and one child run per evaluated
    target (`evaluate/<target>`), plus the raw scores (a local file) as an artifact."""
    for target, metrics in evaluation_metrics(rows, quality).items():
        tracker.log_metrics(parent_run, {f"{target}.{k}": v for k, v in metrics.items()})
        child = tracker.start_run(
            f"evaluate/{target}", parent_run, tags={"raydefense.target": target}
        )
        tracker.log_metrics(child, metrics)
        tracker.end_run(child)
    tracker.log_artifact(parent_run, scores_path, "evaluate")


def tag_value(value: object) -> str:
    """A metric as a registry tag: 4 decimals, "n/a" for none."""
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def tag_registered(
    tracker: Tracker,
    cfg: ExperimentConfig,
    storage: Storage,
    parent_run: Optional[str],
    results: Mapping[str, Any],
    report_dir: str,
) -> None:
    """Tag each audited target's Model Registry version with its audit (worst-case AUC and
    attack, TPR@1%FPR, utility, the report's run) so a platform team can promote a model by
    it; a model this run trained also gets the report in its own run (`audit_report/`). An
    audit of `models:/<name>/<version>` tags that version."""
    if not cfg.tracking.register_models:
        return
    metric = (results.get("privacy_utility") or {}).get("utility_metric")
    sources = (results.get("audit") or {}).get("models", {})
    for target, worst in results.get("privacy", {}).items():
        version: Optional[tuple[str, str]] = None
        if target in sources:
            parts = str(sources[target]["source"]).split("/")
            if str(sources[target]["source"]).startswith("models:/") and len(parts) == 3:
                version = (parts[1], parts[2])
        elif storage.exists(layout.registered(target)):
            reg = storage.read_json(layout.registered(target))
            if reg.get("version"):
                version = (reg["name"], reg["version"])
                tracker.log_artifact(reg["run_id"], report_dir, "audit_report")
        if version is None:
            continue
        tags = {
            "raydefense.audit.worst_case_auc": f"{worst['auc']:.4f}",
            "raydefense.audit.worst_case_attack": worst["attack"],
            "raydefense.audit.tpr_at_1pct_fpr_calibrated": tag_value(
                worst.get("tpr_at_1pct_fpr_calibrated")
            ),
            "raydefense.audit.tpr_at_1pct_fpr": tag_value(worst.get("tpr_at_1pct_fpr")),
            "raydefense.audit.experiment": cfg.experiment,
            "raydefense.audit.report": f"runs:/{parent_run}/report/report.html",
        }
        utility = ""
        for q in results.get("quality", []):
            if q["target"] == target and q["metric"] == metric:
                tags[f"raydefense.audit.{metric}"] = tag_value(q["value"])
                utility = f"; {metric} {q['value']:.3g}"
        tpr = worst.get("tpr_at_1pct_fpr_calibrated")
        description = (
            f"raydefense audit ({cfg.experiment}): worst-case membership AUC "
            f"{worst['auc']:.3f} ({worst['attack']}, chosen on calibration, test AUC); "
            f"TPR at 1% FPR {'below the resolution' if tpr is None else f'{tpr:.3f}'}"
            f"{utility}. Report: {tags['raydefense.audit.report']}"
        )
        try:
            tracker.tag_model_version(version[0], version[1], tags, description)
        except Exception as e:  # a version on another tracking server: the report still stands
            log.warning("report: could not tag %s version %s: %s", *version, str(e)[:200])
