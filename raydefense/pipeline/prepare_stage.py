"""The prepare stage: split the data, write the Parquet tables, the membership matrix and the
plan (and, for latent families, the encoded rows)."""

from __future__ import annotations

import json
import logging
import time

import torch

from raydefense import layout
from raydefense.audit.targets import (
    online_needed,
    online_roles,
    shadow_roles,
    shadows_needed,
)
from raydefense.data.captioning import with_generated_captions
from raydefense.data.given import load_pool
from raydefense.data.plan import check_captions, make_plan
from raydefense.data.tables import write_plan
from raydefense.diffusion.encode import encode_plan_rows
from raydefense.pipeline.stage_inputs import dataset_input
from raydefense.run.context import RunContext
from raydefense.run.session import local_copy

log = logging.getLogger("raydefense")


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
        variants=cfg.train.variant_targets(),
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
            [
                dataset_input(ctx, "members", "training"),
                dataset_input(ctx, "nonmembers", "evaluation"),
            ],
        )
    log.info("prepare: %s", json.dumps(plan.summary()))
