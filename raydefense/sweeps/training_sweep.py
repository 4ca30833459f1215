"""Training sweeps (`raydefense sweep` with `sweep.kind=training`): the core, without Ray.

The search space is `sweep.training`: a grid over dotted config paths of what a model learns
(`train.*`, `distill.*`, `model.*`, `data.num_shards`, `seed`). Every grid point is a trial: a
small pipeline (prepare -> train -> distill -> evaluate) of its own, under
`<root>/<experiment>/training_sweeps/<name>/trials/<point key>/`, which audits one target
(`sweep.target`, default the DistillMD student) with `sweep.trial_attacks` (default: every
enabled attack, the full worst case). Its objectives:

- privacy: the worst-case attack AUC on the target (the (attack, setting) with the highest
  calibration-part AUC, its test-part AUC; the same rule as attack sweeps), lower is better;
- utility: `sweep.utility` of the target's generated images (domain FID by default), lower is
  better.

While the watched model trains, every report carries `val_eps_mse` (its EMA weights' eps-MSE on
held-out calibration non-members); ASHA stops trials whose curve falls behind. Completed trials
form a privacy-utility Pareto front (`pareto_front`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from raydefense import layout
from raydefense.attacks import ATTACKS
from raydefense.audit.scoring import heldout_validator
from raydefense.audit.selection import (
    best_trial,
    pareto_front,
    recommend,
    selection_utility,
    settings_over_seeds,
)
from raydefense.audit.targets import ADAPTIVE, schedule_of
from raydefense.config import TRAIN_ROLES, ExperimentConfig, first_error, set_path
from raydefense.data.encoded import read_encoded
from raydefense.data.tables import read_plan
from raydefense.diffusion.backbones import load_net
from raydefense.errors import ConfigError
from raydefense.hashing import stable_hash
from raydefense.pipeline import run_pipeline
from raydefense.roster import BASELINE, DUALMD, all_targets, teacher_name
from raydefense.run.context import Backend, RunContext, TrainingTrial
from raydefense.run.fingerprints import stage_fingerprints, training_sweep_fingerprint
from raydefense.run.markers import is_complete
from raydefense.run.session import local_copy
from raydefense.storage import Storage
from raydefense.sweeps.attacks import trial_metrics, trials_of, worst_case

log = logging.getLogger("raydefense")

# What a training grid may change: what a model learns (never tracking/storage/resources, and
# never the attacks: attack hyperparameters are kind=attacks sweeps).
SWEEPABLE_PREFIXES = ("train.", "distill.", "model.")
SWEEPABLE_PATHS = ("data.num_shards", "seed")
PRIVACY_METRIC, VAL_METRIC = "privacy_auc", "val_eps_mse"


def sweep_dir(cfg: ExperimentConfig) -> str:
    return layout.training_sweep_dir(cfg.sweep.name)


@dataclass(frozen=True)
class TrainingPoint:
    """One grid point: `values` sets dotted config paths."""

    index: int
    values: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        """Stable directory name: the index and a hash of the values (a changed grid never
        reuses another point's trial directory)."""
        h = stable_hash(self.values)[:8]
        return f"p{self.index:03d}-{h}"

    def label(self) -> str:
        return json.dumps(dict(self.values), sort_keys=True, separators=(",", ":"))


def apply_values(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """cfg with dotted config paths set (as `--set` sets them), validated."""
    tree = cfg.model_dump(mode="json")
    for path, v in values.items():
        set_path(tree, path, v)
    return ExperimentConfig.model_validate(tree)


def training_points(cfg: ExperimentConfig) -> list[TrainingPoint]:
    """Expand `sweep.training` (the Cartesian product, paths in the given order).

    Raises:
        ConfigError: one line naming an empty grid, a path outside what a model learns, an
            unknown path, an empty value list, or a point the config schema refuses.
    """
    grid = cfg.sweep.training
    if not grid:
        raise ConfigError(
            "sweep.training is empty; give a grid of dotted config paths, e.g. "
            "--set 'sweep.training={train.lr: [0.001, 0.002]}'"
        )
    for path, values in grid.items():
        if not (path.startswith(SWEEPABLE_PREFIXES) or path in SWEEPABLE_PATHS):
            raise ConfigError(
                f"sweep.training path {path!r} is not a training hyperparameter; "
                f"use {', '.join(p + '*' for p in SWEEPABLE_PREFIXES)} or "
                f"{', '.join(SWEEPABLE_PATHS)} (attack settings: sweep.kind=attacks)"
            )
        try:
            set_path(cfg.model_dump(mode="json"), path, None)
        except ConfigError as e:
            raise ConfigError(
                f"unknown config path {path!r} in sweep.training: {str(e).split(': ', 1)[1]}"
            ) from None
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"sweep.training.{path} must be a non-empty list of values (got {values!r})"
            )
    paths = list(grid)
    points = []
    for i, combo in enumerate(itertools.product(*(grid[p] for p in paths))):
        point = TrainingPoint(i, tuple(zip(paths, combo)))
        try:
            apply_values(cfg, dict(point.values))
        except ValidationError as e:
            loc, msg, _ = first_error(e)
            raise ConfigError(
                f"sweep.training point {dict(point.values)} is invalid: {loc}: {msg}"
            ) from None
        points.append(point)
    return points


def trial_attacks(cfg: ExperimentConfig) -> list[str]:
    """The attacks every trial runs: `sweep.trial_attacks`, or every attack of `attacks.enabled`
    (the full worst case: learned and shadow-trained attacks too; `dualmd_adaptive` only when
    the audited target is DualMD, the one router it attacks)."""

    chosen = cfg.sweep.trial_attacks
    if chosen is None:
        chosen = [a for a in cfg.attacks.enabled if a != ADAPTIVE or cfg.sweep.target == DUALMD]
    bad = [a for a in chosen if a not in ATTACKS]
    if bad:
        raise ConfigError(
            f"sweep.trial_attacks: {bad[0]!r} is not an attack; choose from: "
            f"{', '.join(ATTACKS.names())}"
        )
    if ADAPTIVE in chosen and cfg.sweep.target != DUALMD:
        raise ConfigError(
            f"sweep.trial_attacks: {ADAPTIVE!r} attacks DualMD's step router; "
            f"sweep.target is {cfg.sweep.target!r} (set sweep.target=dualmd or "
            f"drop it)"
        )
    if not [a for a in chosen if a != ADAPTIVE]:
        raise ConfigError(
            "a training sweep needs attacks: set sweep.trial_attacks, e.g. [loss, secmi_stat]"
        )
    return list(chosen)


def watched_model(target: str) -> str:
    """The fit whose curve drives ASHA: the target itself, or DualMD's first teacher."""
    return teacher_name(0) if target == DUALMD else target


def check_training_sweep(cfg: ExperimentConfig) -> list[TrainingPoint]:
    """Everything a training sweep can refuse before it starts."""
    points = training_points(cfg)
    trial_attacks(cfg)
    shards = {dict(p.values).get("data.num_shards", cfg.data.num_shards) for p in points}
    variants = cfg.train.variant_targets()
    valid = set.intersection(*(set(all_targets(k, variants)) for k in shards))
    if cfg.sweep.asha.enabled and not cfg.train.val_rows:
        raise ConfigError(
            "sweep.asha needs train.val_rows > 0 (its metric is val_eps_mse); "
            "set train.val_rows or sweep.asha.enabled=false"
        )
    if cfg.sweep.target not in valid:
        raise ConfigError(
            f"sweep.target {cfg.sweep.target!r} is not a target of every trial; "
            f"choose from: {', '.join(sorted(valid))}"
        )
    ref = cfg.sweep.reference
    if ref is not None and (ref not in valid or ref == cfg.sweep.target):
        raise ConfigError(
            f"sweep.reference {ref!r} must be another target of every trial than "
            f"sweep.target; choose from: {', '.join(sorted(valid - {cfg.sweep.target}))} "
            "(or null)"
        )
    return points


def trial_config(cfg: ExperimentConfig, point: TrainingPoint, trials_root: str) -> ExperimentConfig:
    """The config of one trial's pipeline: the point's values, its own storage
    (`<trials_root>/<key>`), one audited target with `trial_attacks`, no MLflow of its own (the
    sweep driver logs each trial as a child run). `sweep.reference` (say the baseline) is audited
    too: its utility is the trial's own reference."""
    t = apply_values(cfg, dict(point.values))
    t.experiment = point.key
    t.storage.root = trials_root
    t.tracking.enabled = False
    t.attacks.enabled = trial_attacks(cfg)
    t.attacks.targets = [cfg.sweep.target] + ([cfg.sweep.reference] if cfg.sweep.reference else [])
    return t


def trial_objectives(
    scores: pa.Table,
    quality: list[dict[str, Any]],
    target: str,
    utility: str,
    reference: Optional[str] = None,
) -> dict[str, Any]:
    """A finished trial's objectives from its evaluate outputs.

    Returns {privacy_auc, privacy_auc_calibration, privacy_tpr_at_1pct_fpr (None when 1% is
    below the test split's resolution), privacy_{tpr,fpr}_at_1pct_fpr_calibrated, privacy_attack,
    privacy_setting, utility, utility_metric, and with `reference` utility_reference and
    reference_privacy_auc}: privacy is the worst-case (attack, setting) by calibration AUC, its
    test-part metrics; utility is the target's `utility` quality row; the reference's are the
    same measures of the reference target in the same trial. `utility_calibration` (and
    `utility_reference_calibration`): the same utility on calibration non-members, what choices
    read, when the evaluation measured it.
    """
    out = _objectives(scores, quality, target, utility)
    if reference is not None:
        ref = _objectives(scores, quality, reference, utility)
        out["utility_reference"] = ref["utility"]
        if "utility_calibration" in ref:
            out["utility_reference_calibration"] = ref["utility_calibration"]
        out["reference_privacy_auc"] = ref["privacy_auc"]
    return out


def _objectives(
    scores: pa.Table, quality: list[dict[str, Any]], target: str, utility: str
) -> dict[str, Any]:
    scores = scores.filter(pc.equal(scores["target"], target))
    rows = []
    for tr in trials_of(scores):
        m = trial_metrics(scores, tr["attack"], tr["params"])[target]
        rows.append({"target": target, **tr, **m})
    if not rows:
        raise ValueError(f"no attack scores for target {target!r}")
    w = worst_case(rows)[target]
    values = [q["value"] for q in quality if q["target"] == target and q["metric"] == utility]
    if not values:
        raise ValueError(
            f"no {utility} quality row for target {target!r} (domain FID needs "
            "class labels; set sweep.utility=heldout_eps_mse)"
        )
    on_cal = [
        q["value"]
        for q in quality
        if q["target"] == target and q["metric"] == f"{utility}_calibration"
    ]
    return {
        **({"utility_calibration": float(on_cal[0])} if on_cal else {}),
        "privacy_auc": w["auc"],
        "privacy_auc_calibration": w["auc_calibration"],
        "privacy_tpr_at_1pct_fpr": w["tpr_at_1pct_fpr"],
        "privacy_tpr_at_1pct_fpr_calibrated": w.get("tpr_at_1pct_fpr_calibrated"),
        "privacy_fpr_at_1pct_fpr_calibrated": w.get("fpr_at_1pct_fpr_calibrated"),
        "privacy_attack": w["attack"],
        "privacy_setting": w["params"],
        "utility": float(values[0]),
        "utility_metric": utility,
    }


def run_trial(
    cfg: ExperimentConfig, point: TrainingPoint, trials_root: str, backend: Backend
) -> dict[str, Any]:
    """One trial's pipeline (resumes its complete stages) and its objectives. A model that
    another trial of this sweep (of this grid or an earlier one) has already trained with the
    same fingerprint (say the teachers, when the points differ only in student settings) is
    copied from it, not trained again."""
    tcfg = trial_config(cfg, point, trials_root)
    storage = Storage(tcfg.storage.root, tcfg.experiment)
    sources = tuple(Storage(tcfg.storage.root, k) for k in storage.experiments() if k != point.key)
    ctx = RunContext(cfg=tcfg, storage=storage, backend=backend, model_sources=sources)
    run_pipeline(ctx, until="evaluate")
    obj = trial_objectives(
        storage.read_table(layout.SCORES),
        storage.read_json(layout.QUALITY),
        cfg.sweep.target,
        cfg.sweep.utility,
        cfg.sweep.reference,
    )
    return {**obj, "timings": ctx.timings}


def reference_utility(ctx: RunContext) -> Optional[dict[str, Any]]:
    """The undefended baseline's `sweep.utility` from this experiment's own evaluate stage
    (complete, for this very config), or None: what a recommended setting's utility is
    budgeted against."""
    cfg, storage = ctx.cfg, ctx.storage
    fingerprint = (ctx.fingerprints or stage_fingerprints(cfg))["evaluate"]
    if not is_complete(storage, layout.marker("evaluate"), fingerprint):
        return None
    quality = storage.read_json(layout.QUALITY)
    values = [
        q["value"] for q in quality if q["target"] == BASELINE and q["metric"] == cfg.sweep.utility
    ]
    if not values:
        return None
    on_cal = [
        q["value"]
        for q in quality
        if q["target"] == BASELINE and q["metric"] == f"{cfg.sweep.utility}_calibration"
    ]
    return {
        "target": BASELINE,
        "utility": float(values[0]),
        **({"utility_calibration": float(on_cal[0])} if on_cal else {}),
        "source": layout.QUALITY,
    }


def with_recommendation(
    trials: list[dict[str, Any]], reference: Optional[dict[str, Any]], budget: float
) -> dict[str, Any]:
    """results.json's `settings` (completed trials averaged over seeds), `reference` and
    `recommended` (raydefense.audit.selection.recommend); marks the recommended trials."""
    settings = settings_over_seeds(trials)
    rec = recommend(settings, selection_utility(reference) if reference else None, budget)
    chosen = next((s for s in settings if s["setting"] == rec["key"]), None)
    for t in trials:
        t["recommended"] = bool(chosen and t["key"] in chosen["trials"])
    return {
        "settings": settings,
        "reference": reference,
        "utility_budget": budget,
        "recommended": {**rec, "setting": chosen},
    }


def training_trial(
    cfg: ExperimentConfig, points: list[TrainingPoint], trials_root: str
) -> TrainingTrial:
    """The sweep's trials as a trial runner places them: point i's pipeline (`run_trial`), the
    watched fit whose `val_eps_mse` curve early stopping reads, and its last rung (the longest
    fit's reports, plus the trial's objectives)."""
    max_t = max(
        apply_values(cfg, dict(p.values)).train.for_role(r).steps
        for p in points
        for r in TRAIN_ROLES
    )
    return TrainingTrial(
        points=len(points),
        watched=watched_model(cfg.sweep.target),
        metric=VAL_METRIC,
        max_t=max_t + 2,
        run=partial(_run_point, cfg, points, trials_root),
        final_value=partial(_final_value, cfg, points, trials_root),
        label=partial(_point_key, points),
    )


def _run_point(
    cfg: ExperimentConfig, points: list[TrainingPoint], trials_root: str, i: int, backend: Backend
) -> dict[str, Any]:
    return run_trial(cfg, points[i], trials_root, backend)


def _final_value(
    cfg: ExperimentConfig, points: list[TrainingPoint], trials_root: str, i: int
) -> float:
    return watched_value(cfg, points[i], trials_root)


def _point_key(points: list[TrainingPoint], i: int) -> str:
    return points[i].key


def watched_value(cfg: ExperimentConfig, point: TrainingPoint, trials_root: str) -> float:
    """The watched model's final val_eps_mse, measured on its stored EMA weights (the value
    the trial's last report carries)."""
    tcfg = trial_config(cfg, point, trials_root)
    storage = Storage(tcfg.storage.root, tcfg.experiment)
    with tempfile.TemporaryDirectory(prefix="raydefense-val-") as cache:
        net = load_net(
            tcfg.model,
            storage.local_dir(layout.model_dir(watched_model(cfg.sweep.target)), cache),
            "ema",
        )
    encoded = read_encoded(storage) if tcfg.model.latent else None
    validate = heldout_validator(
        read_plan(storage),
        schedule_of(tcfg),
        tcfg.train.val_rows,
        tcfg.seed,
        watched_model(cfg.sweep.target),
        encoded,
    )
    return validate(net)[VAL_METRIC]


# ----------------------------------------------------------------------------- orchestration


def summary(results: Mapping[str, Any], where: str) -> str:
    lines = [
        f"raydefense: training sweep {results['sweep']!r}: {results['num_trials']} trials "
        f"({results['num_completed']} completed, {results['num_stopped']} stopped by ASHA); "
        f"results in {where}/results.json",
        f"  target {results['target']}: worst-case attack AUC (lower = more private) vs "
        f"{results['utility_metric']} (lower = better); * = Pareto front (chosen on "
        "calibration AUC), R = recommended",
        f"  {'':2} {'trial':<14} {'AUC':>6} {'utility':>9} {'val_eps_mse':>11}  setting",
    ]
    for t in results["trials"]:
        auc_s = f"{t['privacy_auc']:.3f}" if t["status"] == "completed" else "-"
        util_s = f"{t['utility']:.3f}" if t["status"] == "completed" else "-"
        val = t.get("last_val_eps_mse")
        mark = ("*" if t.get("pareto") else " ") + ("R" if t.get("recommended") else " ")
        lines.append(
            f"  {mark} {t['key']:<14} {auc_s:>6} "
            f"{util_s:>9} {val if val is None else round(val, 4)!s:>11}  "
            f"{t['setting']}" + ("" if t["status"] == "completed" else f" ({t['status']})")
        )
    lines.append("  " + recommendation_line(results))
    return "\n".join(lines)


SWEEP_PNG = "privacy_utility.png"


def sweep_figure_section(results: dict[str, Any]) -> dict[str, Any]:
    """The sweep as the report's privacy-utility figure reads it: every completed trial (the
    recommended setting's marked), and each trial's reference target as a point of its own."""
    points: list[dict[str, Any]] = []
    refs: dict[tuple[float, float], list[str]] = {}  # trials sharing one baseline: one point
    for t in results["trials"]:
        if t["status"] != "completed":
            continue
        points.append(
            {
                "label": t["key"],
                "kind": "trial",
                "privacy_auc": t["privacy_auc"],
                "utility": t["utility"],
                "pareto": bool(t.get("pareto")),
                "recommended": bool(t.get("recommended")),
            }
        )
        if t.get("utility_reference") is not None and t.get("reference_privacy_auc") is not None:
            refs.setdefault((t["reference_privacy_auc"], t["utility_reference"]), []).append(
                t["key"][:4]
            )
    name = results.get("reference_target") or "reference"
    points += [
        {
            "label": f"{name} ({', '.join(keys)})",
            "kind": "reference",
            "privacy_auc": auc,
            "utility": utility,
            "pareto": False,
        }
        for (auc, utility), keys in refs.items()
    ]
    section: dict[str, Any] = {"utility_metric": results["utility_metric"], "points": points}
    budget = results.get("utility_budget")
    if len(refs) == 1 and budget:  # one baseline for every trial: its budget is one line
        section["budget_line"] = (budget, budget * next(iter(refs))[1])
    return section


def write_sweep_figure(storage: Storage, base: str, results: dict[str, Any]) -> Optional[str]:
    """`<base>/privacy_utility.png` (every trial, the references, the recommended setting);
    returns a local copy's path for MLflow, or None without completed trials."""
    from raydefense.report.tradeoff import plot_tradeoff

    section = sweep_figure_section(results)
    if not section["points"]:
        return None
    path = os.path.join(tempfile.mkdtemp(prefix="raydefense-sweep-"), SWEEP_PNG)
    plot_tradeoff(section, path)
    with open(path, "rb") as f:
        storage.write_bytes(f"{base}/{SWEEP_PNG}", f.read())
    return path


def recommendation_line(results: Mapping[str, Any]) -> str:
    """One line: the recommended setting (mean over its seeds) and the rule that chose it."""
    rec = results.get("recommended") or {}
    ref = results.get("reference")
    chosen = rec.get("setting")
    if chosen:
        seeds = f" over {len(chosen['trials'])} trials" if len(chosen["trials"]) > 1 else ""
        if chosen.get("utility_ratio") is not None:
            ratio = f", {chosen['utility_ratio']:.2f}x its trials' own baselines"
        else:
            ratio = f", {chosen['utility'] / ref['utility']:.2f}x the baseline's" if ref else ""
        return (
            f"recommended: {chosen['setting']}: worst-case AUC {chosen['privacy_auc']:.3f} "
            f"(test), {results['utility_metric']} {chosen['utility']:.3f}{ratio}{seeds}; "
            f"rule: {rec['rule']}"
        )
    if rec.get("closest"):
        return (
            f"no setting within the utility budget (rule: {rec['rule']}); the closest front "
            f"setting: {rec['closest']}"
        )
    return f"no recommendation: {rec.get('rule', 'no completed trial')}"


def run_training_sweep(ctx: RunContext) -> dict[str, Any]:
    """`raydefense sweep` with sweep.kind=training: Tune trials (resumed when their run
    storage exists), the MLflow parent `training-sweep/<name>` with one child per trial (its
    val_eps_mse curve by report and its objectives), the Pareto front, and
    `training_sweeps/<name>/results.json`."""
    cfg, storage, tracker = ctx.cfg, ctx.storage, ctx.tracker
    base = sweep_dir(cfg)
    points = check_training_sweep(cfg)
    fp = training_sweep_fingerprint(cfg)
    if "sweep" in ctx.force:  # start over: the Tune run and every trial's pipeline
        storage.delete(base)
    parent = tracker.start_run(
        f"training-sweep/{cfg.sweep.name}",
        ctx.parent_run,
        params={
            "sweep.name": cfg.sweep.name,
            "sweep.kind": "training",
            "sweep.training": json.dumps(cfg.sweep.training),
            "sweep.target": cfg.sweep.target,
            "sweep.utility": cfg.sweep.utility,
            "sweep.num_trials": str(len(points)),
            "sweep.fingerprint": fp,
        },
        tags={"raydefense.sweep": cfg.sweep.name},
    )
    status = "FAILED"
    try:
        done = ctx.trials.training_trials(
            cfg,
            storage,
            f"{base}/tune",
            f"training-{fp[:12]}",
            training_trial(cfg, points, storage.uri(f"{base}/trials")),
        )
        trials = []
        for p, tr in zip(points, done):
            row = {
                "key": p.key,
                "setting": p.label(),
                "values": dict(p.values),
                "status": tr["status"],
                "trial_id": tr.get("trial_id"),
                "history": tr["history"],
                "last_val_eps_mse": tr["history"][-1][VAL_METRIC] if tr["history"] else None,
            }
            row.update(
                {
                    k: v
                    for k, v in tr["metrics"].items()
                    if k.startswith(("privacy_", "utility", "reference_"))
                }
            )
            trials.append(row)
        completed = [t for t in trials if t["status"] == "completed"]
        # Chosen on calibration: the front and `best.*` never look at test AUCs.
        front = pareto_front(
            [(t["privacy_auc_calibration"], selection_utility(t)) for t in completed]
        )
        for i in front:
            completed[i]["pareto"] = True
        for t in trials:
            t.setdefault("pareto", False)
            child = tracker.start_run(
                f"training-sweep/{cfg.sweep.name}/{t['key']}",
                parent,
                params={"setting": t["setting"], **{k: str(v) for k, v in t["values"].items()}},
                tags={
                    "raydefense.sweep": cfg.sweep.name,
                    "raydefense.trial_status": t["status"],
                    "raydefense.pareto": str(t["pareto"]).lower(),
                },
            )
            for h in t["history"]:
                tracker.log_metrics(child, {VAL_METRIC: h[VAL_METRIC]}, step=h["iteration"])
            if t["status"] == "completed":
                tracker.log_metrics(
                    child,
                    {
                        k: t[k]
                        for k in (
                            "privacy_auc",
                            "privacy_auc_calibration",
                            "privacy_tpr_at_1pct_fpr",
                            "privacy_tpr_at_1pct_fpr_calibrated",
                            "privacy_fpr_at_1pct_fpr_calibrated",
                            "utility",
                            "utility_reference",
                            "reference_privacy_auc",
                        )
                        if t.get(k) is not None
                    },
                )
            tracker.end_run(child, "FINISHED" if t["status"] == "completed" else "KILLED")
        results = {
            "experiment": cfg.experiment,
            "sweep": cfg.sweep.name,
            "kind": "training",
            "fingerprint": fp,
            "space": cfg.sweep.training,
            "target": cfg.sweep.target,
            "utility_metric": cfg.sweep.utility,
            "reference_target": cfg.sweep.reference,
            "attacks": trial_attacks(cfg),
            "asha": cfg.sweep.asha.model_dump(),
            "num_trials": len(trials),
            "num_completed": len(completed),
            "num_stopped": sum(t["status"] == "stopped" for t in trials),
            "objectives": "minimise worst-case attack AUC (chosen by calibration AUC; test AUC "
            "reported) and utility; the Pareto front and best trial use the "
            "calibration AUC",
            "trials": trials,
            "pareto": [t["key"] for t in completed if t["pareto"]],
        }
        results.update(
            with_recommendation(trials, reference_utility(ctx), cfg.sweep.utility_budget)
        )
        storage.write_json(f"{base}/results.json", results)
        best = best_trial(completed)
        if best is not None:
            tracker.log_metrics(
                parent,
                {
                    "best.privacy_auc": best["privacy_auc"],
                    "best.privacy_auc_calibration": best["privacy_auc_calibration"],
                    "best.utility": best["utility"],
                    "pareto_size": len(front),
                },
            )
            tracker.set_tags(parent, {"best.setting": best["setting"]})
        if results["recommended"]["key"]:
            tracker.set_tags(parent, {"recommended.setting": results["recommended"]["key"]})
        tracker.log_artifact(parent, local_copy(storage, f"{base}/results.json"), "sweep")
        figure = write_sweep_figure(storage, base, results)
        if figure is not None:
            tracker.log_artifact(parent, figure, "sweep")
        status = "FINISHED"
        return results
    finally:
        tracker.end_run(parent, status)
