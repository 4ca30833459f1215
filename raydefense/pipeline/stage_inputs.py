"""What the stages record about their inputs: MLflow dataset inputs (lineage: data -> model ->
audit) for the rows a model trained on."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from raydefense import layout
from raydefense.data.tables import read_plan
from raydefense.roster import (
    STUDENT,
    parse_draw,
)
from raydefense.run.context import RunContext

log = logging.getLogger("raydefense")


def dataset_input(ctx: RunContext, rows: str, context: str) -> dict[str, Any]:
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
