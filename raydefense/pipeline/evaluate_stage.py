"""The evaluate stage: every attack against every target (`audit.evaluate.run_evaluation`) on the
run's scorer; scores, quality, shadows, references and sample grids stored."""

from __future__ import annotations

import io
import logging
import tempfile

import numpy as np

from raydefense import layout
from raydefense.audit.evaluate import run_evaluation
from raydefense.data.tables import read_plan
from raydefense.run.context import RunContext

log = logging.getLogger("raydefense")


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
        storage.write_bytes(layout.sample_grid(target), npy_bytes(grid))


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()
