"""results.json attack rows: per (target, attack, setting) the metrics of its raw scores, computed
on the calibration and test parts (raydefense.attacks.metrics)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from raydefense.attacks import ATTACKS
from raydefense.attacks.base import ACCESS_LEVELS, attack_family
from raydefense.attacks.metrics import attack_metrics, roc
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
