"""results.json attack rows: per (target, attack, setting) the metrics of its raw scores, computed
on the calibration and test parts (raydefense.attacks.metrics)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raydefense.attacks import ATTACKS
from raydefense.attacks.base import ACCESS_LEVELS, attack_family
from raydefense.attacks.metrics import attack_metrics, auc, roc
from raydefense.audit.scoring import setting_label
from raydefense.audit.targets import ADAPTIVE
from raydefense.data.plan import TEST
from raydefense.roster import DUALMD

GRAYBOX_NOTE = "gray-box via DualMD's step router (an extension beyond the paper)"


ADAPTIVE_NOTE = (
    "gray-box, router-aware: one timestep served by each teacher, scores "
    "standardised on calibration non-members and combined (beyond the paper, "
    "whose threat model is black-box)"
)


def metric_rows(
    table: pa.Table, bootstrap: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """results.json attack rows and ROC curves (test part) from a raw scores table.

    Each row also carries `auc_calibration` (the AUC on the calibration part, what a sweep may
    select on without touching the test part) and, for DualMD's gray-box rows, a `note`.
    Returns: (rows, roc_curves[attack label][target] = (fpr, tpr)).
    """
    df = table.to_pandas()
    rows: list[dict[str, Any]] = []
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for (target, attack, params), g in df.groupby(["target", "attack", "params"], sort=False):
        cal, test = g[g.part != TEST], g[g.part == TEST]
        cal_y = cal.is_member.to_numpy().astype(int)
        m = attack_metrics(
            cal.score.to_numpy(),
            cal_y,
            test.score.to_numpy(),
            test.is_member.to_numpy().astype(int),
            bootstrap=bootstrap,
            seed=seed,
        )
        row = {"target": target, "attack": attack, "params": json.loads(params), **m}
        if attack in ATTACKS:
            row["access"] = ATTACKS.get(attack).access
            row["family"] = attack_family(ATTACKS.get(attack))
            inputs = [a for a in row["params"].get("attacks", []) if a in ATTACKS]
            if row["family"] == "combined" and inputs:  # needs what its inputs need
                row["access"] = max(
                    (ATTACKS.get(a).access for a in inputs), key=ACCESS_LEVELS.index
                )
        if target == DUALMD and row.get("access") not in (None, "black-box"):
            row["note"] = ADAPTIVE_NOTE if attack == ADAPTIVE else GRAYBOX_NOTE
        rows.append(row)
        fpr, tpr, _ = roc(
            m["orientation"] * test.score.to_numpy(), test.is_member.to_numpy().astype(int)
        )
        curves.setdefault(f"{attack} {params}", {})[target] = (fpr, tpr)
    return rows, curves


def paired_auc_gain(
    table: pa.Table,
    target: str,
    new: Mapping[str, Any],
    old: Mapping[str, Any],
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """How much one (attack, setting) beats another on the same target's test rows: the test-AUC
    difference new - old (each oriented as chosen on calibration) with a paired, stratified
    bootstrap 95% CI (members and non-members resampled with replacement, both attacks scored on
    the same resample). `new` / `old`: worst-case entries (attack, params, orientation).
    -> {"auc_diff", "auc_diff_ci" ([lo, hi], absent without bootstrap), "new", "old"}."""
    df = table.filter(
        pc.and_(pc.equal(table["target"], target), pc.equal(table["part"], TEST))
    ).to_pandas()

    def column(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        g = df[(df.attack == entry["attack"]) & (df.params == setting_label(entry["params"]))]
        g = g.sort_values("row_id")
        sign = float(entry.get("orientation") or 1)
        return g.row_id.to_numpy(), sign * g.score.to_numpy(dtype=np.float64)

    ids_new, s_new = column(new)
    ids_old, s_old = column(old)
    if len(ids_new) == 0 or not np.array_equal(ids_new, ids_old):
        raise ValueError(f"{target}: the two attacks were not scored on the same test rows")
    y = df[(df.attack == new["attack"]) & (df.params == setting_label(new["params"]))]
    y = y.sort_values("row_id").is_member.to_numpy().astype(np.int64)
    out: dict[str, Any] = {
        "auc_diff": auc(s_new, y) - auc(s_old, y),
        "new": new["attack"],
        "old": old["attack"],
    }
    if bootstrap:
        rng = np.random.default_rng(seed)
        pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
        diffs = np.empty(bootstrap)
        for b in range(bootstrap):
            i = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
            diffs[b] = auc(s_new[i], y[i]) - auc(s_old[i], y[i])
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        out["auc_diff_ci"] = [float(lo), float(hi)]
    return out
