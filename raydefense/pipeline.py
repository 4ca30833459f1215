"""The stage graph: prepare -> train -> distill -> evaluate -> report.

Each stage has a fingerprint (its config sections + its inputs' fingerprints + the code version) and
publishes `<stage>/_COMPLETE.json` only after all its outputs are written (invariant 7). A rerun skips
complete stages with a matching fingerprint and resumes the rest (training resumes from the last
Ray Train checkpoint). Work that needs a cluster goes through an `Executor` (Ray lives in
`raydefense.distributed`); this module stays plain Python.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

import raydefense
from raydefense.config import ExperimentConfig
from raydefense.data.plan import STUDENT, make_plan, model_index, parse_shadow, shadow_name
from raydefense.data.sources import DATASETS
from raydefense.data.tables import (MEMBERSHIP, PLAN_JSON, SCORES, read_plan, soft_targets_dir,
                                    write_plan)
from raydefense.defense.distillmd import auto_draws
from raydefense.errors import ConfigError, DataError
from raydefense.evaluation import (adaptive_bases, build_attacks, check_explicit_targets,
                                   metric_rows, run_evaluation, shadow_roles, shadow_students,
                                   shadows_needed)
from raydefense.storage import Storage
from raydefense.tracking.base import NullTracker, Tracker

log = logging.getLogger("raydefense")

STAGES = ["prepare", "train", "distill", "evaluate", "report"]


class Executor(Protocol):
    """Places the heavy work (Ray in production: raydefense.distributed.executor.RayExecutor)."""

    def check_resources(self, cfg: ExperimentConfig) -> None: ...

    def fit(self, cfg: ExperimentConfig, storage: Storage, specs: list[dict]) -> None:
        """Train the models described by specs ({model, kind, model_index, run_name,
        mlflow_run_id}) and leave each final checkpoint under models/<model>."""
        ...

    def label_soft_targets(self, cfg: ExperimentConfig, storage: Storage, teachers: list[str],
                           owners: dict[int, list[str]], draws: int, out_dir: str,
                           groups: dict[int, int]) -> int:
        """Write `draws` soft targets for every row of `owners` (row_id -> the teachers that
        trained on it) under out_dir, labelled by the other `teachers`, `groups` (row_id ->
        shard index) in the "shard" column; returns the rows written."""
        ...

    def score(self, cfg: ExperimentConfig, plan: Any, jobs: list, generate: dict) -> Any:
        """See raydefense.evaluation.EvalExecutor."""
        ...

    def map(self, fn: Any, items: list[tuple]) -> list[Any]: ...

    def sweep_trials(self, cfg: ExperimentConfig, storage: Storage, rel_path: str,
                     run_name: str, trials: list[dict], scores: Any) -> list[dict]:
        """Attack-sweep trials (raydefense.sweep): one per {attack, params}, run or resumed
        under rel_path/run_name; returns them with `metrics` {target: {...}} and `trial_id`."""
        ...

    def training_trials(self, cfg: ExperimentConfig, storage: Storage, rel_path: str,
                        run_name: str, points: list, trials_root: str) -> list[dict]:
        """Training-sweep trials (raydefense.sweep_training): one pipeline per point under
        trials_root/<key>; returns per point {status, trial_id, metrics, history}."""
        ...


@dataclass
class RunContext:
    cfg: ExperimentConfig
    storage: Storage
    executor: Executor
    tracker: Tracker = field(default_factory=NullTracker)
    parent_run: Optional[str] = None
    force: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def stage_fingerprints(cfg: ExperimentConfig) -> dict[str, str]:
    """Fingerprint of each stage's inputs. Resources, tracking and sampling-only settings do not
    change what a model learns, so they are not part of the training fingerprints."""
    d = cfg.model_dump(mode="json")
    v = raydefense.__version__
    fp: dict[str, str] = {}
    shadows = shadows_needed(cfg)
    roles = shadow_roles(cfg)
    # The shadow rows (and a baseline-like shadow's fingerprint) do not depend on the regime;
    # the plan's models do: the roles join the prepare fingerprint only when they differ from
    # the one baseline-like shadow per draw that regime "baseline" plans.
    shadow = ({k: x for k, x in d["attacks"]["shadow"].items() if k != "regime"}
              if shadows else None)
    plan_shadows = shadow if roles in ((), ("baseline",)) else {**shadow, "roles": list(roles)}
    fp["prepare"] = _hash("prepare", v, cfg.seed, d["data"], plan_shadows)
    # How often a fit logs, checkpoints or validates does not change the model it produces.
    train = {k: x for k, x in d["train"].items()
             if k not in ("log_every", "checkpoint_every", "val_rows")}
    fp["train"] = _hash("train", v, fp["prepare"], d["model"], train)
    # The target models (and so the student) do not depend on the attacker's shadow models.
    fp["targets"] = _hash("targets", v, cfg.seed, d["data"], d["model"], train)
    fp["shadows"] = _hash("shadows", fp["targets"], shadow)
    fp["student"] = _hash("distill", v, fp["targets"], d["distill"])
    fp["shadow_students"] = _hash("shadow_students", fp["shadows"], d["distill"])
    fp["distill"] = (_hash("distill", fp["student"], fp["shadow_students"])
                     if "student" in roles else fp["student"])
    fp["evaluate"] = _hash("evaluate", v, fp["train"], fp["distill"], d["attacks"], d["sampling"],
                           d["quality"])
    fp["report"] = _hash("report", v, fp["evaluate"])
    return fp


def model_fingerprint(fps: dict[str, str], model: str) -> str:
    """Per-model fingerprint of a fit (its run name and completion marker)."""
    if model == STUDENT:
        return fps["student"]
    shadow = parse_shadow(model)
    if shadow is None:
        return fps["targets"]
    return fps["shadow_students"] if shadow[1] == "student" else fps["shadows"]


def _marker(stage: str) -> str:
    return f"{stage}/_COMPLETE.json"


def is_complete(storage: Storage, rel_marker: str, fingerprint: str) -> bool:
    """True when the marker exists, matches the fingerprint, and every file its manifest lists
    is still there with the size it had when the stage completed."""
    if not storage.exists(rel_marker):
        return False
    marker = storage.read_json(rel_marker)
    if marker.get("fingerprint") != fingerprint:
        return False
    bad = storage.verify_manifest(marker.get("manifest", {}))
    if bad:
        log.warning("%s: %d published file(s) are missing or changed (%s); redoing it",
                    rel_marker.rsplit("/", 1)[0], len(bad), bad[0])
        return False
    return True


def mark_complete(storage: Storage, rel_marker: str, fingerprint: str, outputs: dict,
                  prefixes: tuple[str, ...] = (), manifest: Optional[dict] = None) -> None:
    """Publish a completion marker (last, after every output): the fingerprint, a summary of the
    outputs, and a manifest {path: {bytes, sha256[, rows]}} of the files under `prefixes`."""
    files = dict(manifest or {})
    for p in prefixes:
        files.update(storage.manifest(p))
    storage.write_json(rel_marker, {"fingerprint": fingerprint, "completed_at": time.time(),
                                    "outputs": outputs, "manifest": files})


def unpublish(storage: Storage, rel_marker: str) -> None:
    """Drop a marker before its outputs are rewritten, so an interrupted rewrite (say under
    --force) is never mistaken for a complete stage."""
    storage.delete(rel_marker)


STAGE_OUTPUTS = {"prepare": ("prepare",), "train": (), "distill": (), "evaluate": ("evaluate",)}


def validate_config(cfg: ExperimentConfig) -> None:
    """Checks that need the registries (they are not expressible in the pydantic schema)."""
    DATASETS.get(cfg.data.source)
    build_attacks(cfg)
    check_explicit_targets(cfg)
    adaptive_bases(cfg)
    if cfg.data.split_file and not os.path.isfile(cfg.data.split_file):
        raise DataError(f"data.split_file {cfg.data.split_file!r} does not exist")
    if cfg.data.root and not os.path.exists(cfg.data.root):
        raise DataError(f"data.root {cfg.data.root!r} does not exist; point it at the dataset")
    if cfg.train.batch_size % cfg.resources.workers_per_model:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by "
                          f"resources.workers_per_model={cfg.resources.workers_per_model}")


def absolutize(cfg: ExperimentConfig) -> ExperimentConfig:
    """Local storage roots and split files become absolute, so Ray workers in other working
    directories read the same files."""
    cfg = cfg.model_copy(deep=True)
    if "://" not in cfg.storage.root:
        cfg.storage.root = os.path.abspath(os.path.expanduser(cfg.storage.root))
    if cfg.data.split_file:
        cfg.data.split_file = os.path.abspath(cfg.data.split_file)
    if cfg.data.root:
        cfg.data.root = os.path.abspath(cfg.data.root)
    return cfg


# ----------------------------------------------------------------------------- stages


def stage_prepare(ctx: RunContext) -> None:
    cfg = ctx.cfg
    pool = DATASETS.get(cfg.data.source)(cfg.data)
    plan = make_plan(pool, cfg.data, cfg.seed, shadows_needed(cfg), cfg.attacks.shadow.members,
                     shadow_roles(cfg))
    write_plan(ctx.storage, plan)
    for rel in (PLAN_JSON, MEMBERSHIP):
        ctx.tracker.log_artifact(ctx.parent_run, _local_copy(ctx, rel), "prepare")
    log.info("prepare: %s", json.dumps(plan.summary()))


def _spec(ctx: RunContext, model: str, kind: str, num_shards: int) -> dict:
    run_id = ctx.tracker.start_run(f"train/{model}", ctx.parent_run,
                                   tags={"raydefense.model": model, "raydefense.kind": kind})
    return {"model": model, "kind": kind, "model_index": model_index(model, num_shards),
            "run_name": f"{model}-{model_fingerprint(ctx.fingerprints, model)[:12]}",
            "mlflow_run_id": run_id}


def stage_train(ctx: RunContext) -> None:
    plan_models = ctx.storage.read_json(PLAN_JSON)["models"]
    k = sum(m.startswith("teacher_") for m in plan_models)
    todo = [m for m in plan_models
            if "train" in ctx.force or not is_complete(
                ctx.storage, f"models/{m}/_COMPLETE.json", model_fingerprint(ctx.fingerprints, m))]
    specs = [_spec(ctx, m, "ddpm", k) for m in todo]
    _fit(ctx, specs, fresh="train" in ctx.force)


def _fit(ctx: RunContext, specs: list[dict], fresh: bool = False) -> None:
    """Fit (or resume) the models of specs; `fresh` (--force) starts them over."""
    if not specs:
        return
    for s in specs:
        unpublish(ctx.storage, f"models/{s['model']}/_COMPLETE.json")
        if fresh:  # run names are deterministic: Ray Train would "resume" the finished run
            ctx.storage.delete(f"ray_train/{s['run_name']}")
    try:
        ctx.executor.fit(ctx.cfg, ctx.storage, specs)
    except BaseException:
        for s in specs:
            ctx.tracker.end_run(s["mlflow_run_id"], "FAILED")
        raise
    for s in specs:
        mark_complete(ctx.storage, f"models/{s['model']}/_COMPLETE.json",
                      model_fingerprint(ctx.fingerprints, s["model"]), {"run_name": s["run_name"]},
                      prefixes=(f"models/{s['model']}",))
        ctx.tracker.end_run(s["mlflow_run_id"])


def stage_distill(ctx: RunContext) -> None:
    """Soft targets and the student (paper Algorithm 2); with regime-matched shadows, the same
    for every shadow student, from its draw's shadow teachers on its draw's training rows."""
    cfg, plan = ctx.cfg, read_plan(ctx.storage)
    students = [(STUDENT, plan.teachers)]
    for m in shadow_students(cfg, plan):
        j = parse_shadow(m)[0]
        students.append((m, [shadow_name(j, "teacher", k) for k in range(plan.num_shards)]))
    fresh = "distill" in ctx.force
    for student, teachers in students:
        _soft_targets(ctx, plan, student, teachers)
    _fit(ctx, [_spec(ctx, m, "distill", plan.num_shards) for m, _ in students
               if fresh or not is_complete(ctx.storage, f"models/{m}/_COMPLETE.json",
                                           model_fingerprint(ctx.fingerprints, m))], fresh=fresh)


def _soft_targets(ctx: RunContext, plan: Any, student: str, teachers: list[str]) -> None:
    """Label `student`'s rows (the union of its teachers' rows) unless already complete."""
    cfg, storage = ctx.cfg, ctx.storage
    rel = soft_targets_dir(student)
    marker, fingerprint = f"{rel}/_COMPLETE.json", model_fingerprint(ctx.fingerprints, student)
    if "distill" not in ctx.force and is_complete(storage, marker, fingerprint):
        return
    rows = plan.members_of(student)
    draws = (auto_draws(cfg.train.steps, cfg.train.batch_size, int(rows.sum()))
             if cfg.distill.draws_per_row == "auto" else int(cfg.distill.draws_per_row))
    unpublish(storage, marker)
    owners = {int(r): [t for t in teachers if plan.rows_of(t)[i]]
              for i, r in enumerate(plan.row_id) if rows[i]}
    # the batch group of a row (distill.batching) is the shard index of the teacher that owns it
    groups = {r: teachers.index(o[0]) for r, o in owners.items()}
    run_id = ctx.tracker.start_run(f"distill/{student}/soft_targets" if student != STUDENT
                                   else "distill/soft_targets", ctx.parent_run,
                                   params={"draws_per_row": str(draws)})
    t0 = time.perf_counter()
    n = ctx.executor.label_soft_targets(cfg, storage, teachers, owners, draws, rel, groups)
    secs = time.perf_counter() - t0
    expected = int(rows.sum()) * draws
    if n != expected:
        raise DataError(f"soft targets of {student}: wrote {n} rows, expected {expected}; "
                        "rerun distill")
    ctx.tracker.log_metrics(run_id, {"rows": n, "rows_per_s": n / max(secs, 1e-9),
                                     "draws_per_row": draws})
    ctx.tracker.end_run(run_id)
    mark_complete(storage, marker, fingerprint, {"rows": n, "draws_per_row": draws},
                  prefixes=(rel,))
    log.info("distill: %d soft targets for %s (%d draws x %d rows) in %.1fs", n, student, draws,
             int(rows.sum()), secs)


def stage_evaluate(ctx: RunContext) -> None:
    cfg, storage = ctx.cfg, ctx.storage
    with tempfile.TemporaryDirectory(prefix="raydefense-eval-") as cache:
        out = run_evaluation(cfg, storage, read_plan(storage), ctx.executor, cache)
    storage.write_table(SCORES, out.scores)
    storage.write_json("evaluate/quality.json", out.quality)
    storage.write_json("evaluate/skipped.json", out.skipped)
    storage.write_json("evaluate/shadows.json", out.shadows)
    for target, grid in out.samples.items():
        storage.write_bytes(f"evaluate/samples/{target}.npy", _npy_bytes(grid))


def stage_report(ctx: RunContext) -> dict:
    from raydefense.report import write_report
    from raydefense.report.tables import headline_rows
    from raydefense.report.tradeoff import tradeoff

    cfg, storage = ctx.cfg, ctx.storage
    rows, all_curves = metric_rows(storage.read_table(SCORES), cfg.attacks.bootstrap, cfg.seed)
    curves: dict[str, dict] = {}  # ROC figures for the paper-table lines only
    for h in headline_rows(rows):
        key = f"{h['attack']} {json.dumps(h['params'], sort_keys=True)}"
        curves.setdefault(h["line"], {})[h["target"]] = all_curves[key][h["target"]]
    quality = storage.read_json("evaluate/quality.json")
    skipped = (storage.read_json("evaluate/skipped.json")
               if storage.exists("evaluate/skipped.json") else [])
    grids = {}
    for f in storage.listdir("evaluate/samples"):
        if f.endswith(".npy"):
            grids[f[:-4]] = np.load(io.BytesIO(storage.read_bytes(f"evaluate/samples/{f}")))
    timings = dict(storage.read_json("report/timings.json")) if storage.exists(
        "report/timings.json") else {}
    timings.update(ctx.timings)
    results = {
        "experiment": cfg.experiment,
        "dataset": cfg.data.source,
        "data": {k: v for k, v in storage.read_json(PLAN_JSON).items()
                 if k in ("num_members", "num_nonmembers", "shard_sizes", "image_shape",
                          "duplicates_dropped", "split_file")},
        "config_fingerprint": cfg.fingerprint(),
        "versions": versions(),
        "timings": timings,
        "attacks": rows,
        "quality": quality,
        "skipped": skipped,
        "shadows": (storage.read_json("evaluate/shadows.json")
                    if storage.exists("evaluate/shadows.json") else {}),
    }
    results.update(tradeoff(results, _sweep_results(ctx, "attacks"),
                            _sweep_results(ctx, "training")))
    seeds = _seed_study(ctx)
    if seeds:
        results["seeds"] = seeds
        ctx.tracker.log_metrics(ctx.parent_run, {
            f"seeds.{t}.worst_case.auc_{k}": w["auc"][k]
            for t, w in seeds.get("privacy", {}).items() for k in ("mean", "sd")
            if isinstance(w.get("auc"), dict) and w["auc"].get(k) is not None})
    with tempfile.TemporaryDirectory(prefix="raydefense-report-") as tmp:
        write_report(tmp, results, roc_curves=curves, sample_grids=grids)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                storage.write_bytes(f"report/{name}", f.read())
        ctx.tracker.log_artifact(ctx.parent_run, tmp, "report")
    storage.write_json("report/timings.json", timings)
    _log_evaluations(ctx, rows, quality)
    worst = {**results["privacy"], **{f"{t}.black_box": w["black_box"]
                                      for t, w in results["privacy"].items() if "black_box" in w}}
    ctx.tracker.log_metrics(ctx.parent_run, {
        f"{t}.worst_case.{k}": w[k] for t, w in worst.items()
        for k in ("auc", "auc_calibration", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_calibrated",
                  "fpr_at_1pct_fpr_calibrated") if w.get(k) is not None})
    return results


def _sweep_results(ctx: RunContext, kind: str) -> Optional[dict]:
    """The `sweep.name` sweep of this kind, if it ran over exactly these models / this config
    (its results.json's fingerprint matches); None otherwise."""
    if kind == "attacks":
        from raydefense import sweep

        if not ctx.cfg.sweep.attacks:
            return None
        rel, key = sweep.sweep_dir(ctx.cfg), "scores_fingerprint"
        expected = sweep.scores_fingerprint(ctx.cfg, ctx.fingerprints)
    else:
        from raydefense import sweep_training

        if not ctx.cfg.sweep.training:
            return None
        rel, key = sweep_training.sweep_dir(ctx.cfg), "fingerprint"
        expected = sweep_training.sweep_fingerprint(ctx.cfg)
    if not ctx.storage.exists(f"{rel}/results.json"):
        return None
    res = ctx.storage.read_json(f"{rel}/results.json")
    if res.get(key) != expected:
        log.info("report: %s sweep %r is from other models or settings; not used", kind,
                 ctx.cfg.sweep.name)
        return None
    return res


def _seed_study(ctx: RunContext) -> Optional[dict]:
    """`raydefense seeds`' summary when this experiment is its base (its own seed ran under
    this experiment name); None otherwise."""
    rel = "seeds/summary.json"
    if not ctx.storage.exists(rel):
        return None
    summary = ctx.storage.read_json(rel)
    if summary.get("experiments", {}).get(str(ctx.cfg.seed)) != ctx.cfg.experiment:
        return None
    return summary


def _log_evaluations(ctx: RunContext, rows: list[dict], quality: list[dict]) -> None:
    """Metrics on the parent (`<target>.<attack>.auc`, ...) and one child run per evaluated
    target (`evaluate/<target>`), plus the raw scores as an artifact."""
    keys = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr_calibrated",
            "fpr_at_1pct_fpr_calibrated", "asr_calibrated", "asr_oracle")
    by_target: dict[str, dict[str, float]] = {}
    for r in rows:
        for k in keys:
            if r.get(k) is not None:
                by_target.setdefault(r["target"], {})[f"{r['attack']}.{k}"] = r[k]
    for q in quality:
        by_target.setdefault(q["target"], {})[q["metric"]] = q["value"]
    for target, metrics in by_target.items():
        ctx.tracker.log_metrics(ctx.parent_run, {f"{target}.{k}": v for k, v in metrics.items()})
        child = ctx.tracker.start_run(f"evaluate/{target}", ctx.parent_run,
                                      tags={"raydefense.target": target})
        ctx.tracker.log_metrics(child, metrics)
        ctx.tracker.end_run(child)
    ctx.tracker.log_artifact(ctx.parent_run, _local_copy(ctx, SCORES), "evaluate")


STAGE_FUNCS = {"prepare": stage_prepare, "train": stage_train, "distill": stage_distill,
               "evaluate": stage_evaluate, "report": stage_report}


def run_pipeline(ctx: RunContext, until: str = "report") -> Optional[dict]:
    """Run stages up to and including `until`, skipping complete ones. Returns results (if the
    report stage ran)."""
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; choose one of: {', '.join(STAGES)}")
    ctx.fingerprints = stage_fingerprints(ctx.cfg)
    stages = STAGES[: STAGES.index(until) + 1]
    todo = [s for s in stages if s == "report" or s in ctx.force
            or not is_complete(ctx.storage, _marker(s), ctx.fingerprints[s])]
    if set(todo) & {"train", "distill", "evaluate"}:
        ctx.executor.check_resources(ctx.cfg)  # fail fast, before anything is written
    results = None
    for stage in stages:
        if stage not in todo:
            log.info("%s: complete (fingerprint %s), skipped", stage, ctx.fingerprints[stage][:12])
            ctx.skipped.append(stage)
            continue
        t0 = time.perf_counter()
        unpublish(ctx.storage, _marker(stage))
        out = STAGE_FUNCS[stage](ctx)
        ctx.timings[stage] = round(time.perf_counter() - t0, 2)
        if stage == "report":
            results = out
        else:
            mark_complete(ctx.storage, _marker(stage), ctx.fingerprints[stage], {},
                          prefixes=STAGE_OUTPUTS[stage], manifest=_model_manifests(ctx, stage))
        log.info("%s: done in %.1fs", stage, ctx.timings[stage])
        ctx.tracker.log_metrics(ctx.parent_run, {f"time_{stage}_s": ctx.timings[stage]})
    return results


# ----------------------------------------------------------------------------- helpers


def _model_manifests(ctx: RunContext, stage: str) -> dict:
    """The train/distill stage manifest: the per-model (and soft-target) manifests, not rehashed."""
    if stage == "train":
        markers = [f"models/{m}/_COMPLETE.json" for m in ctx.storage.read_json(PLAN_JSON)["models"]]
    elif stage == "distill":
        students = [STUDENT, *shadow_students(ctx.cfg, read_plan(ctx.storage))]
        markers = [f"{soft_targets_dir(m)}/_COMPLETE.json" for m in students]
        markers += [f"models/{m}/_COMPLETE.json" for m in students]
    else:
        return {}
    out: dict = {}
    for m in markers:
        out.update(ctx.storage.read_json(m).get("manifest", {}))
    return out


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"raydefense": raydefense.__version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "ray", "mlflow", "pyarrow", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _local_copy(ctx: RunContext, rel: str) -> str:
    path = os.path.join(tempfile.mkdtemp(prefix="raydefense-art-"), os.path.basename(rel))
    with open(path, "wb") as f:
        f.write(ctx.storage.read_bytes(rel))
    return path

