"""The distill stage (paper Algorithm 2): soft targets from the teachers that never saw each row,
through the run's labeller, then the student fitted on them (and every shadow student)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pyarrow as pa

from raydefense import layout
from raydefense.audit.targets import (
    online_students,
    shadow_students,
)
from raydefense.data.given import load_pool
from raydefense.data.plan import Plan, unused_rows
from raydefense.data.pool import image_column
from raydefense.data.tables import read_plan
from raydefense.defense.distillmd import auto_draws
from raydefense.errors import DataError
from raydefense.pipeline.train_stage import fit_models, fit_spec, merged_manifests, reuse_model
from raydefense.roster import (
    DUALMD,
    STUDENT,
    draw_name,
    parse_draw,
    router_teachers,
    training_role,
)
from raydefense.run.context import RunContext
from raydefense.run.fingerprints import (
    model_fingerprint,
)
from raydefense.run.markers import is_complete, mark_complete, unpublish

log = logging.getLogger("raydefense")


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
        todo = [(m, teachers) for m, teachers in todo if not reuse_model(ctx, m)]
    for student, teachers in todo:
        _soft_targets(ctx, plan, student, teachers)
    fit_models(ctx, [fit_spec(ctx, m, "distill", plan.num_shards) for m, _ in todo], fresh=fresh)


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
    outputs = {"rows": n, "draws_per_row": draws, "seconds": secs}  # seconds: defense costs
    mark_complete(storage, marker, fingerprint, outputs, prefixes=(rel,))
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


def distill_manifest(ctx: RunContext) -> dict[str, Any]:
    """The distill stage's manifest: its soft targets' and students' manifests (not rehashed)."""
    students = [] if ctx.cfg.audit.models else [STUDENT]
    plan = read_plan(ctx.storage)
    students += shadow_students(ctx.cfg, plan) + online_students(ctx.cfg, plan)
    markers = [layout.marker(layout.soft_targets_dir(m)) for m in students]
    markers += [layout.marker(layout.model_dir(m)) for m in students]
    return merged_manifests(ctx, markers)
