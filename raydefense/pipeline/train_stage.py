"""The train stage: the baseline and the shard teachers (and the attacker's shadow and reference
models) fitted through the run's fitter, an audit's models imported, complete models reused,
finished fits registered in MLflow."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Optional

from raydefense import layout
from raydefense.audit.imported import check_imported, import_model
from raydefense.config import ExperimentConfig
from raydefense.data.tables import read_plan
from raydefense.diffusion.backbones.sd import pipeline_dir
from raydefense.diffusion.private_step import private_training_of
from raydefense.errors import ConfigError, FitsFailed
from raydefense.pipeline.stage_inputs import dataset_input
from raydefense.roster import (
    is_teacher,
    model_index,
    parse_draw,
    training_role,
)
from raydefense.run.context import FitSpec, RunContext
from raydefense.run.fingerprints import (
    model_fingerprint,
)
from raydefense.run.markers import is_complete, mark_complete, unpublish

log = logging.getLogger("raydefense")


def fit_spec(ctx: RunContext, model: str, kind: str, num_shards: int) -> FitSpec:
    run_id = ctx.tracker.start_run(
        f"train/{model}", ctx.parent_run, tags={"raydefense.model": model, "raydefense.kind": kind}
    )
    if run_id is not None:
        ctx.tracker.log_inputs(run_id, [dataset_input(ctx, model, "training")])
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
        todo = [m for m in todo if not reuse_model(ctx, m)]
    check_private_fits(ctx, todo)
    specs = [fit_spec(ctx, m, "ddpm", k) for m in todo]
    fit_models(ctx, specs, fresh="train" in ctx.force)


def check_private_fits(ctx: RunContext, models: list[str]) -> None:
    """Resolve DP-SGD's settings of every private fit among `models` before any of them trains:
    an epsilon out of reach with the fit's steps and batch is one line here, not a failed fit.

    Raises:
        ConfigError: the model and the setting that cannot be met."""
    private = [m for m in models if ctx.cfg.train.for_role(training_role(m)).dp is not None]
    if not private:
        return
    plan = read_plan(ctx.storage)
    for m in private:
        try:
            private_training_of(
                ctx.cfg.train.for_role(training_role(m)), int(plan.rows_of(m).sum())
            )
        except ValueError as e:
            raise ConfigError(f"{m}: {e}") from None


def reuse_model(ctx: RunContext, model: str) -> bool:
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
            ctx.tracker.log_inputs(run_id, [dataset_input(ctx, role, "training")])
        import_model(ctx.storage, m)
        mark_complete(ctx.storage, layout.marker(rel), fingerprint, {"source": m.uri}, (rel,))
        ctx.tracker.end_run(run_id)
        log.info("train: imported %s from %s", role, m.uri)


def fit_models(ctx: RunContext, specs: list[FitSpec], fresh: bool = False) -> None:
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
    if cfg.model.sampler is None:
        log.info("train: model.kind=%s has no MLflow sampler; %s is not registered", cfg.model.kind,
                 model)  # fmt: skip
        return
    shape = ctx.storage.read_json(layout.PLAN_JSON)["image_shape"]
    meta = {
        "kind": cfg.model.kind,
        "sampler": cfg.model.sampler,
        "schedule": {
            k: getattr(cfg.model, k)
            for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        },
        "image_shape": shape,
        "pipeline": pipeline_dir(cfg.model) if cfg.model.sampler == "stable-diffusion" else None,
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


def train_manifest(ctx: RunContext) -> dict[str, Any]:
    """The train stage's manifest: its models' manifests (not rehashed)."""
    models = ctx.storage.read_json(layout.PLAN_JSON)["models"]
    if ctx.cfg.audit.models:
        models = [m for m in models if parse_draw(m) is not None] + sorted(ctx.cfg.audit.models)
    return merged_manifests(ctx, [layout.marker(layout.model_dir(m)) for m in models])


def merged_manifests(ctx: RunContext, markers: list[str]) -> dict[str, Any]:
    """The manifests of these completion markers, as one."""
    out: dict[str, Any] = {}
    for m in markers:
        out.update(ctx.storage.read_json(m).get("manifest", {}))
    return out
