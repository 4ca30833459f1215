"""The stage graph: prepare -> train -> distill -> evaluate -> report.

Each stage has a fingerprint (`raydefense.run.fingerprints`) and publishes `<stage>/_COMPLETE.json`
only after all its outputs are written (invariant 7). A rerun skips complete stages with a matching
fingerprint and resumes the rest (training resumes from the last Ray Train checkpoint). Heavy work
goes through the run's roles (`RunContext.role`: fitter, labeller, scorer); this module stays
plain Python.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import torch

from raydefense import layout
from raydefense.attacks.base import FAMILIES, variants_not_run
from raydefense.audit.evaluate import run_evaluation
from raydefense.audit.imported import check_imported, import_model
from raydefense.audit.results import metric_rows, paired_auc_gain
from raydefense.audit.selection import suite_coverage, tradeoff
from raydefense.audit.targets import (
    online_needed,
    online_roles,
    online_students,
    shadow_roles,
    shadow_students,
    shadows_needed,
)
from raydefense.config import ExperimentConfig
from raydefense.data.captioning import with_generated_captions
from raydefense.data.given import load_pool
from raydefense.data.plan import Plan, check_captions, make_plan, unused_rows
from raydefense.data.pool import image_column
from raydefense.data.tables import read_plan, write_plan
from raydefense.defense.distillmd import auto_draws
from raydefense.diffusion.backbones.sd import pipeline_dir
from raydefense.diffusion.encode import encode_plan_rows
from raydefense.errors import ConfigError, DataError, FitsFailed
from raydefense.report import write_report
from raydefense.report.markdown import headline_rows
from raydefense.report.text_to_image import DIVERSIFICATION_LABELS, t2i_table
from raydefense.roster import (
    DUALMD,
    STUDENT,
    draw_name,
    is_teacher,
    model_index,
    parse_draw,
    router_teachers,
    training_role,
)
from raydefense.run.context import FitSpec, RunContext
from raydefense.run.fingerprints import (
    attack_sweep_fingerprint,
    model_fingerprint,
    stage_fingerprints,
    training_sweep_fingerprint,
)
from raydefense.run.markers import is_complete, mark_complete, unpublish
from raydefense.run.session import local_copy, versions

log = logging.getLogger("raydefense")

STAGES = ["prepare", "train", "distill", "evaluate", "report"]
STAGE_OUTPUTS = {"prepare": ("prepare",), "train": (), "distill": (), "evaluate": ("evaluate",)}


# ----------------------------------------------------------------------------- stages


def stage_prepare(ctx: RunContext) -> None:
    cfg = ctx.cfg
    pool, given = load_pool(cfg.data)
    plan = make_plan(
        pool,
        cfg.data,
        cfg.seed,
        shadows_needed(cfg),
        cfg.attacks.shadow.members,
        shadow_roles(cfg),
        given=given,
        num_online=online_needed(cfg),
        online_roles=online_roles(cfg),
    )
    if cfg.data.captioner is not None:  # prompt diversification's extra captions (section 3.1)
        t0 = time.perf_counter()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        plan = with_generated_captions(plan, cfg.data.captioner, cfg.seed, device)
        if cfg.data.prompt_diversification:
            check_captions(cfg.data, plan, needs_captions=False)
        log.info(
            "prepare: captioned %d rows (%d captions each) in %.1fs",
            len(plan.row_id),
            cfg.data.captioner.num_captions,
            time.perf_counter() - t0,
        )
    write_plan(ctx.storage, plan)
    if cfg.model.latent:  # the VAE and the text encoder are frozen: encode once
        t0 = time.perf_counter()
        counts = encode_plan_rows(cfg, plan, ctx.storage)
        log.info(
            "prepare: encoded %d rows and %d captions in %.1fs",
            counts["rows"],
            counts["captions"],
            time.perf_counter() - t0,
        )
    for rel in (layout.PLAN_JSON, layout.MEMBERSHIP):
        ctx.tracker.log_artifact(ctx.parent_run, local_copy(ctx.storage, rel), "prepare")
    if ctx.parent_run is not None:  # no tracking: no table reads for lineage
        ctx.tracker.log_inputs(
            ctx.parent_run,
            [_dataset(ctx, "members", "training"), _dataset(ctx, "nonmembers", "evaluation")],
        )
    log.info("prepare: %s", json.dumps(plan.summary()))


def _spec(ctx: RunContext, model: str, kind: str, num_shards: int) -> FitSpec:
    run_id = ctx.tracker.start_run(
        f"train/{model}", ctx.parent_run, tags={"raydefense.model": model, "raydefense.kind": kind}
    )
    if run_id is not None:
        ctx.tracker.log_inputs(run_id, [_dataset(ctx, model, "training")])
    return FitSpec(
        model=model,
        kind=kind,
        model_index=model_index(model, num_shards),
        run_name=f"{model}-{model_fingerprint(ctx.fingerprints, model)[:12]}",
        mlflow_run_id=run_id,
    )


def stage_train(ctx: RunContext) -> None:
    plan_models = ctx.storage.read_json(layout.PLAN_JSON)["models"]
    k = sum(is_teacher(m) for m in plan_models)
    if ctx.cfg.audit.models:  # an audit imports its targets; only the attacker's models train
        _import_models(ctx)
        plan_models = [m for m in plan_models if parse_draw(m) is not None]
    todo = [
        m
        for m in plan_models
        if "train" in ctx.force
        or not is_complete(
            ctx.storage, layout.marker(layout.model_dir(m)), model_fingerprint(ctx.fingerprints, m)
        )
    ]
    if "train" not in ctx.force:
        todo = [m for m in todo if not _reuse_model(ctx, m)]
    specs = [_spec(ctx, m, "ddpm", k) for m in todo]
    _fit(ctx, specs, fresh="train" in ctx.force)


def _reuse_model(ctx: RunContext, model: str) -> bool:
    """Copy `model` from a sibling experiment (`ctx.model_sources`) that completed it with this
    very fingerprint, instead of training it again: the same fingerprint means the same plan,
    config and seed, and a fit is a pure function of those (batches are seeded per step), so
    the copy is the model this run would train. True when copied."""
    rel, fingerprint = layout.model_dir(model), model_fingerprint(ctx.fingerprints, model)
    for other in ctx.model_sources:
        if not is_complete(other, layout.marker(rel), fingerprint):
            continue
        unpublish(ctx.storage, layout.marker(rel))
        with tempfile.TemporaryDirectory(prefix="raydefense-reuse-") as tmp:
            copy = os.path.join(tmp, "model")
            shutil.copytree(
                other.local_dir(rel, tmp),
                copy,
                ignore=shutil.ignore_patterns(layout.MARKER, "registered.json"),
            )
            ctx.storage.upload_dir(copy, rel)
        mark_complete(
            ctx.storage, layout.marker(rel), fingerprint, {"reused_from": other.uri(rel)}, (rel,)
        )
        log.info("train: %s reused from %s (same fingerprint)", model, other.uri(rel))
        return True
    return False


def _dataset(ctx: RunContext, rows: str, context: str) -> dict[str, Any]:
    """An MLflow dataset input (lineage: data -> model -> audit): the rows a model trained on
    (`rows` a model name; a student: the members), or "members" / "nonmembers". Its digest is
    a SHA-256 over the rows' sorted image content hashes, so the same images give the same
    digest whatever their order or row ids."""
    table = ctx.storage.read_table(layout.ROWS, columns=["row_id", "hash", "split"]).to_pydict()
    if rows in ("members", "nonmembers", STUDENT):  # the student learns from all members
        want = "member" if rows == STUDENT else rows[:-1]
        chosen = [h for h, s in zip(table["hash"], table["split"]) if s == want]
    elif (parse_draw(rows) or ("", 0, ""))[2] == "student":  # a draw's training rows
        members = read_plan(ctx.storage).members_of(rows)
        chosen = [h for h, m in zip(table["hash"], members) if m]
    else:
        membership = ctx.storage.read_table(layout.MEMBERSHIP, columns=[rows]).column(0)
        chosen = [h for h, m in zip(table["hash"], membership.to_pylist()) if m]
    digest = hashlib.sha256("\n".join(sorted(chosen)).encode()).hexdigest()[:32]
    return {
        "name": f"{ctx.cfg.data.source}/{rows}",
        "digest": digest,
        "source": ctx.storage.uri(layout.ROWS),
        "context": context,
        "schema": {"rows_table": list(table)},
        "profile": {"num_rows": len(chosen), "split_file": ctx.cfg.data.split_file},
    }


def _import_models(ctx: RunContext) -> None:
    """An audit's targets: each imported model checked against the data and the config, copied
    into models/<role>/ and marked complete (its fingerprint holds the weights' digest)."""
    if set(ctx.imports) != set(ctx.cfg.audit.models):
        raise ConfigError(
            "audit.models is set but its models were not resolved: run `raydefense audit`"
        )
    shape = tuple(ctx.storage.read_json(layout.PLAN_JSON)["image_shape"])
    for m in ctx.imports.values():
        check_imported(ctx.cfg, m, shape)
    for role, m in sorted(ctx.imports.items()):
        rel, fingerprint = layout.model_dir(role), model_fingerprint(ctx.fingerprints, role)
        if "train" not in ctx.force and is_complete(ctx.storage, layout.marker(rel), fingerprint):
            continue
        unpublish(ctx.storage, layout.marker(rel))
        run_id = ctx.tracker.start_run(
            f"import/{role}",
            ctx.parent_run,
            tags={
                "raydefense.model": role,
                "raydefense.kind": "imported",
                "raydefense.source": m.uri,
                "raydefense.sha256": ctx.cfg.audit.digests[role],
            },
        )
        if run_id is not None:
            ctx.tracker.log_inputs(run_id, [_dataset(ctx, role, "training")])
        import_model(ctx.storage, m)
        mark_complete(ctx.storage, layout.marker(rel), fingerprint, {"source": m.uri}, (rel,))
        ctx.tracker.end_run(run_id)
        log.info("train: imported %s from %s", role, m.uri)


def _fit(ctx: RunContext, specs: list[FitSpec], fresh: bool = False) -> None:
    """Fit (or resume) the models of specs; `fresh` (--force) starts them over."""
    if not specs:
        return
    for s in specs:
        unpublish(ctx.storage, layout.marker(layout.model_dir(s.model)))
        if fresh:  # run names are deterministic: Ray Train would "resume" the finished run
            ctx.storage.delete(layout.ray_train_run(s.run_name))
    try:
        ctx.fitter.fit(ctx.cfg, ctx.storage, specs)
    except FitsFailed as e:  # the fits that finished keep their models (a rerun skips them)
        for s in specs:
            if s.model in e.done:
                _complete_fit(ctx, s)
            else:
                error = str(e.failed[s.model])[:5000]
                ctx.tracker.set_tags(s.mlflow_run_id, {"raydefense.error": error})
                ctx.tracker.end_run(s.mlflow_run_id, "FAILED")
        raise
    except BaseException:
        for s in specs:
            ctx.tracker.end_run(s.mlflow_run_id, "FAILED")
        raise
    for s in specs:
        _complete_fit(ctx, s)


def _complete_fit(ctx: RunContext, s: FitSpec) -> None:
    """Publish a finished fit's completion marker and close its MLflow run; a target model is
    first logged and registered in MLflow (`tracking.register_models`)."""
    rel = layout.model_dir(s.model)
    if ctx.cfg.tracking.register_models and parse_draw(s.model) is None:
        _register(ctx, s.model, s.mlflow_run_id)
    mark_complete(
        ctx.storage,
        layout.marker(rel),
        model_fingerprint(ctx.fingerprints, s.model),
        {"run_name": s.run_name},
        prefixes=(rel,),
    )
    ctx.tracker.end_run(s.mlflow_run_id)


def _register(ctx: RunContext, model: str, run_id: Optional[str]) -> None:
    """Log models/<model> to its run as an MLflow model, registered as <experiment>-<model>;
    models/<model>/registered.json says which version (the report tags it)."""
    cfg = ctx.cfg
    shape = ctx.storage.read_json(layout.PLAN_JSON)["image_shape"]
    meta = {
        "kind": cfg.model.kind,
        "schedule": {
            k: getattr(cfg.model, k)
            for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        },
        "image_shape": shape,
        "pipeline": pipeline_dir(cfg.model) if cfg.model.latent else None,
        "experiment": cfg.experiment,
        "model": model,
    }
    with tempfile.TemporaryDirectory(prefix="raydefense-register-") as cache:
        local = ctx.storage.local_dir(layout.model_dir(model), cache)
        reg = ctx.tracker.log_model(run_id, local, meta, registered_model_name(cfg, model))
    if reg:
        ctx.storage.write_json(layout.registered(model), reg)
        log.info("train: registered %s as %s version %s", model, reg["name"], reg["version"])


def registered_model_name(cfg: ExperimentConfig, model: str) -> str:
    return f"{cfg.experiment}-{model}"


def stage_distill(ctx: RunContext) -> None:
    """Soft targets and the student (paper Algorithm 2); with regime-matched shadows, the same
    for every shadow student, from its draw's shadow teachers on its draw's training rows."""
    cfg, plan = ctx.cfg, read_plan(ctx.storage)
    # An audit distils no target student (one it audits is imported by the train stage).
    students = [] if cfg.audit.models else [(STUDENT, plan.teachers)]
    for m in shadow_students(cfg, plan) + online_students(cfg, plan):
        draw = parse_draw(m)
        assert draw is not None  # shadow_students and online_students name draws' models only
        teachers = router_teachers(draw_name(draw[0], draw[1], DUALMD), plan.teachers)
        assert teachers is not None  # a draw's router stands for that draw's teachers
        students.append((m, teachers))
    fresh = "distill" in ctx.force
    todo = [
        (m, teachers)
        for m, teachers in students
        if fresh
        or not is_complete(
            ctx.storage, layout.marker(layout.model_dir(m)), model_fingerprint(ctx.fingerprints, m)
        )
    ]
    if not fresh:  # a sibling's student of this fingerprint needs neither labels nor a fit here
        todo = [(m, teachers) for m, teachers in todo if not _reuse_model(ctx, m)]
    for student, teachers in todo:
        _soft_targets(ctx, plan, student, teachers)
    _fit(ctx, [_spec(ctx, m, "distill", plan.num_shards) for m, _ in todo], fresh=fresh)


def _soft_targets(ctx: RunContext, plan: Plan, student: str, teachers: list[str]) -> None:
    """Label `student`'s rows (the union of its teachers' rows) unless already complete."""
    cfg, storage = ctx.cfg, ctx.storage
    rel = layout.soft_targets_dir(student)
    marker, fingerprint = layout.marker(rel), model_fingerprint(ctx.fingerprints, student)
    if "distill" not in ctx.force and is_complete(storage, marker, fingerprint):
        return
    rows = plan.members_of(student)
    unpublish(storage, marker)
    # distill.member_inputs=false: the members are labelled by no one and never shown to the
    # student; its inputs are the synthetic and/or public rows below (the config requires one).
    owners = {
        int(r): [t for t in teachers if plan.rows_of(t)[i]]
        for i, r in enumerate(plan.row_id)
        if rows[i] and cfg.distill.member_inputs
    }
    extra: list[str] = []
    if cfg.distill.synthetic_per_teacher:  # extra inputs, each owned by the teacher that drew it
        where = layout.synthetic_dir(student)
        storage.delete(where)
        drawn = ctx.labeller.synthesize(cfg, teachers, cfg.distill.synthetic_per_teacher, where)
        for t, ids in drawn.items():
            owners.update({int(r): [t] for r in ids})
        extra = [f"{where}/{t}.parquet" for t in teachers]
    if cfg.distill.public_inputs:  # spare pool rows: nobody's member, labelled by every teacher
        owners.update({r: [] for r in _write_public_rows(ctx, plan, layout.public_rows(student))})
        extra.append(layout.public_rows(student))
    draws = (
        auto_draws(
            cfg.train.for_role(training_role(student)).steps, cfg.train.batch_size, len(owners)
        )
        if cfg.distill.draws_per_row == "auto"
        else int(cfg.distill.draws_per_row)
    )
    # The batch group of a row (distill.batching) is the shard index of the teacher that owns
    # it; an owner-less public row goes to group (row id mod K).
    groups = {r: teachers.index(o[0]) if o else r % len(teachers) for r, o in owners.items()}
    public = sum(1 for o in owners.values() if not o)
    synthetic = len(owners) - public - (int(rows.sum()) if cfg.distill.member_inputs else 0)
    params = {
        "draws_per_row": str(draws),
        "synthetic_rows": str(synthetic),
        "public_rows": str(public),
        "member_inputs": str(cfg.distill.member_inputs).lower(),
    }
    run_id = ctx.tracker.start_run(rel, ctx.parent_run, params=params)
    t0 = time.perf_counter()
    n = ctx.labeller.label_soft_targets(cfg, storage, teachers, owners, draws, rel, groups, extra)
    secs = time.perf_counter() - t0
    expected = len(owners) * draws
    if n != expected:
        raise DataError(
            f"soft targets of {student}: wrote {n} rows, expected {expected}; rerun distill"
        )
    ctx.tracker.log_metrics(
        run_id, {"rows": n, "rows_per_s": n / max(secs, 1e-9), "draws_per_row": draws}
    )
    ctx.tracker.end_run(run_id)
    mark_complete(
        storage, marker, fingerprint, {"rows": n, "draws_per_row": draws}, prefixes=(rel,)
    )
    log.info(
        "distill: %d soft targets for %s (%d draws x %d rows) in %.1fs",
        n,
        student,
        draws,
        len(owners),
        secs,
    )


def _write_public_rows(ctx: RunContext, plan: Plan, rel: str) -> list[int]:
    """distill.public_inputs: the pool's unused rows (data.plan.unused_rows) written to `rel`
    as a rows-like table (row_id, image); returns their ids.

    Raises:
        DataError: the pool has no unused row (e.g. the split takes all of it)."""
    pool, _ = load_pool(ctx.cfg.data)
    ids = unused_rows(pool.images, plan.row_id, set(plan.hash))
    if not len(ids):
        raise DataError(
            "distill.public_inputs: every pool row is in the plan, so no public row is left; "
            "lower data.num_members / data.num_nonmembers or set distill.public_inputs=false"
        )
    ctx.storage.write_table(
        rel,
        pa.table({"row_id": pa.array(ids, pa.int64()), "image": image_column(pool.images[ids])}),
    )
    return [int(i) for i in ids]


def stage_evaluate(ctx: RunContext) -> None:
    cfg, storage = ctx.cfg, ctx.storage
    with tempfile.TemporaryDirectory(prefix="raydefense-eval-") as cache:
        out = run_evaluation(cfg, storage, read_plan(storage), ctx.scorer, cache)
    storage.write_table(layout.SCORES, out.scores)
    storage.write_json(layout.QUALITY, out.quality)
    storage.write_json(layout.SKIPPED, out.skipped)
    storage.write_json(layout.SHADOWS, out.shadows)
    storage.write_json(layout.REFERENCES, out.references)
    for target, grid in out.samples.items():
        storage.write_bytes(layout.sample_grid(target), _npy_bytes(grid))


def stage_report(ctx: RunContext) -> dict[str, Any]:
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
    results = {
        "experiment": cfg.experiment,
        "dataset": cfg.data.source,
        "data": {
            k: v
            for k, v in storage.read_json(layout.PLAN_JSON).items()
            if k
            in (
                "num_members",
                "num_nonmembers",
                "shard_sizes",
                "image_shape",
                "duplicates_dropped",
                "split_file",
            )
        },
        "config_fingerprint": cfg.fingerprint(),
        "versions": versions(),
        "timings": timings,
        "attacks": rows,
        "quality": quality,
        "skipped": skipped,
        "shadows": (storage.read_json(layout.SHADOWS) if storage.exists(layout.SHADOWS) else {}),
        "references": (
            storage.read_json(layout.REFERENCES) if storage.exists(layout.REFERENCES) else {}
        ),
    }
    if cfg.audit.models:
        results["audit"] = {
            "models": {
                role: {"source": uri, "sha256": cfg.audit.digests.get(role)}
                for role, uri in sorted(cfg.audit.models.items())
            }
        }
    results.update(
        tradeoff(results, _sweep_results(ctx, "attacks"), _sweep_results(ctx, "training"))
    )
    lira = "lira" in cfg.attacks.enabled
    results["suite"] = suite_coverage(
        rows,
        FAMILIES,
        variants_not_run(cfg.attacks.lira.online_models, lira),
        results["references"],
    )
    # What the reference/population/combined attacks add, per target, on the same test rows.
    for t, entry in results["privacy"].items():
        old = entry.get("without_calibrated")
        if old and entry.get("source") == old.get("source") == "evaluate":
            entry["gain_over_without_calibrated"] = paired_auc_gain(
                scores, t, entry, old, cfg.attacks.bootstrap, cfg.seed
            )
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
        _tag_registered(ctx, results, tmp)
    storage.write_json(layout.TIMINGS, timings)
    _log_evaluations(ctx, rows, quality)
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
        },
    )
    return results


def _tag_registered(ctx: RunContext, results: dict[str, Any], report_dir: str) -> None:
    """Tag each audited target's Model Registry version with its audit (worst-case AUC and
    attack, TPR@1%FPR, utility, the report's run) so a platform team can promote a model by
    it; a model this run trained also gets the report in its own run (`audit_report/`). An
    audit of `models:/<name>/<version>` tags that version."""
    if not ctx.cfg.tracking.register_models:
        return
    metric = (results.get("privacy_utility") or {}).get("utility_metric")
    sources = (results.get("audit") or {}).get("models", {})
    for target, worst in results.get("privacy", {}).items():
        version: Optional[tuple[str, str]] = None
        if target in sources:
            parts = str(sources[target]["source"]).split("/")
            if str(sources[target]["source"]).startswith("models:/") and len(parts) == 3:
                version = (parts[1], parts[2])
        elif ctx.storage.exists(layout.registered(target)):
            reg = ctx.storage.read_json(layout.registered(target))
            if reg.get("version"):
                version = (reg["name"], reg["version"])
                ctx.tracker.log_artifact(reg["run_id"], report_dir, "audit_report")
        if version is None:
            continue
        tags = {
            "raydefense.audit.worst_case_auc": f"{worst['auc']:.4f}",
            "raydefense.audit.worst_case_attack": worst["attack"],
            "raydefense.audit.tpr_at_1pct_fpr_calibrated": _tag_value(
                worst.get("tpr_at_1pct_fpr_calibrated")
            ),
            "raydefense.audit.tpr_at_1pct_fpr": _tag_value(worst.get("tpr_at_1pct_fpr")),
            "raydefense.audit.experiment": ctx.cfg.experiment,
            "raydefense.audit.report": f"runs:/{ctx.parent_run}/report/report.html",
        }
        utility = ""
        for q in results.get("quality", []):
            if q["target"] == target and q["metric"] == metric:
                tags[f"raydefense.audit.{metric}"] = _tag_value(q["value"])
                utility = f"; {metric} {q['value']:.3g}"
        tpr = worst.get("tpr_at_1pct_fpr_calibrated")
        description = (
            f"raydefense audit ({ctx.cfg.experiment}): worst-case membership AUC "
            f"{worst['auc']:.3f} ({worst['attack']}, chosen on calibration, test AUC); "
            f"TPR at 1% FPR {'below the resolution' if tpr is None else f'{tpr:.3f}'}"
            f"{utility}. Report: {tags['raydefense.audit.report']}"
        )
        try:
            ctx.tracker.tag_model_version(version[0], version[1], tags, description)
        except Exception as e:  # a version on another tracking server: the report still stands
            log.warning("report: could not tag %s version %s: %s", *version, str(e)[:200])


def _tag_value(value: object) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


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


def _t2i_table(ctx: RunContext, results: dict[str, Any]) -> dict[str, Any]:
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


def _log_evaluations(
    ctx: RunContext, rows: list[dict[str, Any]], quality: list[dict[str, Any]]
) -> None:
    """Metrics on the parent (`<target>.<attack>.auc`, ...) and one child run per evaluated
    target (`evaluate/<target>`), plus the raw scores as an artifact."""
    keys = (
        "auc",
        "tpr_at_1pct_fpr",
        "tpr_at_0.1pct_fpr",
        "tpr_at_1pct_fpr_calibrated",
        "fpr_at_1pct_fpr_calibrated",
        "asr_calibrated",
        "asr_oracle",
    )
    by_target: dict[str, dict[str, float]] = {}
    for r in rows:
        for k in keys:
            if r.get(k) is not None:
                by_target.setdefault(r["target"], {})[f"{r['attack']}.{k}"] = r[k]
    for q in quality:
        by_target.setdefault(q["target"], {})[q["metric"]] = q["value"]
    for target, metrics in by_target.items():
        ctx.tracker.log_metrics(ctx.parent_run, {f"{target}.{k}": v for k, v in metrics.items()})
        child = ctx.tracker.start_run(
            f"evaluate/{target}", ctx.parent_run, tags={"raydefense.target": target}
        )
        ctx.tracker.log_metrics(child, metrics)
        ctx.tracker.end_run(child)
    ctx.tracker.log_artifact(ctx.parent_run, local_copy(ctx.storage, layout.SCORES), "evaluate")


STAGE_FUNCS = {
    "prepare": stage_prepare,
    "train": stage_train,
    "distill": stage_distill,
    "evaluate": stage_evaluate,
    "report": stage_report,
}


def run_pipeline(ctx: RunContext, until: str = "report") -> Optional[dict[str, Any]]:
    """Run stages up to and including `until`, skipping complete ones. Returns results (if the
    report stage ran)."""
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; choose one of: {', '.join(STAGES)}")
    ctx.fingerprints = stage_fingerprints(ctx.cfg)
    stages = STAGES[: STAGES.index(until) + 1]
    todo = [
        s
        for s in stages
        if s == "report"
        or s in ctx.force
        or not is_complete(ctx.storage, layout.marker(s), ctx.fingerprints[s])
    ]
    if set(todo) & {"train", "distill", "evaluate"}:
        ctx.fitter.check_resources(ctx.cfg)  # fail fast, before anything is written
    results = None
    for stage in stages:
        if stage not in todo:
            log.info("%s: complete (fingerprint %s), skipped", stage, ctx.fingerprints[stage][:12])
            ctx.skipped.append(stage)
            continue
        t0 = time.perf_counter()
        unpublish(ctx.storage, layout.marker(stage))
        out = STAGE_FUNCS[stage](ctx)
        ctx.timings[stage] = round(time.perf_counter() - t0, 2)
        if stage == "report":
            results = out
        else:
            mark_complete(
                ctx.storage,
                layout.marker(stage),
                ctx.fingerprints[stage],
                {},
                prefixes=STAGE_OUTPUTS[stage],
                manifest=_model_manifests(ctx, stage),
            )
        log.info("%s: done in %.1fs", stage, ctx.timings[stage])
        ctx.tracker.log_metrics(ctx.parent_run, {f"time_{stage}_s": ctx.timings[stage]})
    return results


# ----------------------------------------------------------------------------- helpers


def _model_manifests(ctx: RunContext, stage: str) -> dict[str, Any]:
    """The train/distill stage manifest: the per-model (and soft-target) manifests, not rehashed."""
    audit = ctx.cfg.audit.models
    if stage == "train":
        models = ctx.storage.read_json(layout.PLAN_JSON)["models"]
        if audit:
            models = [m for m in models if parse_draw(m) is not None] + sorted(audit)
        markers = [layout.marker(layout.model_dir(m)) for m in models]
    elif stage == "distill":
        students = [] if audit else [STUDENT]
        plan = read_plan(ctx.storage)
        students += shadow_students(ctx.cfg, plan) + online_students(ctx.cfg, plan)
        markers = [layout.marker(layout.soft_targets_dir(m)) for m in students]
        markers += [layout.marker(layout.model_dir(m)) for m in students]
    else:
        return {}
    out: dict[str, Any] = {}
    for m in markers:
        out.update(ctx.storage.read_json(m).get("manifest", {}))
    return out


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()
