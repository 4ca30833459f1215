"""The stage graph as data: each stage's name, what it runs, the storage prefixes its completion
marker covers and the manifest it records, in order. `run_pipeline` walks it: a stage whose
marker holds its current fingerprint is skipped, the others run and publish their marker only
after all their outputs are written (invariant 7); `report` has no marker and always runs (it
only reads what the stages stored)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from raydefense import layout
from raydefense.errors import ConfigError
from raydefense.pipeline.distill_stage import distill_manifest, stage_distill
from raydefense.pipeline.evaluate_stage import stage_evaluate
from raydefense.pipeline.prepare_stage import stage_prepare
from raydefense.pipeline.report_stage import stage_report
from raydefense.pipeline.train_stage import stage_train, train_manifest
from raydefense.run.context import RunContext
from raydefense.run.fingerprints import stage_fingerprints
from raydefense.run.markers import is_complete, mark_complete, unpublish

log = logging.getLogger("raydefense")


@dataclass(frozen=True)
class Stage:
    """One stage. run(ctx) does its work (`report` returns the results); `outputs`: the storage
    prefixes its marker covers (hashed into the manifest); manifest(ctx): what its models'
    markers already recorded (not rehashed); `marked`: False for a stage with no marker, which
    always runs; `fits`: it places fits, so the fitter checks the cluster's resources first."""

    name: str
    run: Callable[[RunContext], Any]
    outputs: tuple[str, ...] = ()
    manifest: Optional[Callable[[RunContext], dict[str, Any]]] = None
    marked: bool = True
    fits: bool = False


GRAPH: tuple[Stage, ...] = (
    Stage("prepare", stage_prepare, outputs=("prepare",)),
    Stage("train", stage_train, manifest=train_manifest, fits=True),
    Stage("distill", stage_distill, manifest=distill_manifest, fits=True),
    Stage("evaluate", stage_evaluate, outputs=("evaluate",), fits=True),
    Stage("report", stage_report, marked=False),
)
STAGES = [s.name for s in GRAPH]


def run_pipeline(ctx: RunContext, until: str = "report") -> Optional[dict[str, Any]]:
    """Run stages up to and including `until`, skipping complete ones. Returns results (if the
    report stage ran)."""
    if until not in STAGES:
        raise ConfigError(f"unknown stage {until!r}; choose one of: {', '.join(STAGES)}")
    ctx.fingerprints = stage_fingerprints(ctx.cfg)
    stages = GRAPH[: STAGES.index(until) + 1]
    todo = [
        s
        for s in stages
        if not s.marked
        or s.name in ctx.force
        or not is_complete(ctx.storage, layout.marker(s.name), ctx.fingerprints[s.name])
    ]
    if any(s.fits for s in todo):
        ctx.fitter.check_resources(ctx.cfg)  # fail fast, before anything is written
    results = None
    for stage in stages:
        name = stage.name
        if stage not in todo:
            log.info("%s: complete (fingerprint %s), skipped", name, ctx.fingerprints[name][:12])
            ctx.skipped.append(name)
            continue
        t0 = time.perf_counter()
        unpublish(ctx.storage, layout.marker(name))
        out = stage.run(ctx)
        ctx.timings[name] = round(time.perf_counter() - t0, 2)
        if stage.marked:
            mark_complete(
                ctx.storage,
                layout.marker(name),
                ctx.fingerprints[name],
                {},
                prefixes=stage.outputs,
                manifest=stage.manifest(ctx) if stage.manifest else {},
            )
        else:
            results = out
        log.info("%s: done in %.1fs", name, ctx.timings[name])
        ctx.tracker.log_metrics(ctx.parent_run, {f"time_{name}_s": ctx.timings[name]})
    return results
