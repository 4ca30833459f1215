"""The text-to-image table (the paper's Tables 3 and 4 in one): attack lines x (prompt
diversification setting x target), every choice made on calibration.

Lines: the strongest white-/gray-box eps attack (chosen per cell by calibration AUC; DualMD's are
through its step router), the paper's SecMI_stat and PIA rows, CLiD, Pang & Wang, ReDiffuse, and
the worst case over every attack. Cells: test AUC / TPR at the calibrated 1% FPR threshold @ the
test FPR it realises (res.-limited when 1% is below 1/n of the calibration non-members).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

from raydefense.attacks import ATTACKS
from raydefense.audit.selection import strongest_per_target
from raydefense.report.markdown import MISSING, RESOLUTION_LIMITED, escape, markdown_table

Row = Mapping[str, Any]
TARGETS = ("baseline", "dualmd", "student")
DIVERSIFICATION_LABELS = {False: "w/o prompt div.", True: "w/ prompt div."}


def _access(row: Row) -> str:
    try:
        return str(ATTACKS.get(str(row["attack"])).access)
    except Exception:  # an attack removed since the results were written
        return "unknown"


def _eps_attack(row: Row) -> bool:
    return _access(row) in ("gray-box", "white-box") and row["attack"] != "clid"


LINES: list[tuple[str, Callable[[Row], bool]]] = [
    ("white-/gray-box, strongest (eps queries)", _eps_attack),
    ("SecMI_stat", lambda r: r["attack"] == "secmi_stat"),
    ("PIA", lambda r: r["attack"] == "pia"),
    ("CLiD", lambda r: r["attack"] == "clid"),
    ("Pang & Wang (black-box)", lambda r: r["attack"] == "pang_wang"),
    ("ReDiffuse (black-box)", lambda r: r["attack"] == "rediffuse"),
    ("worst case (every attack)", lambda r: True),
]


def _cell(row: Optional[Row]) -> Optional[dict[str, Any]]:
    if row is None:
        return None
    keep = ("attack", "params", "auc", "auc_calibration", "tpr_at_1pct_fpr_calibrated")
    out = {k: row.get(k) for k in keep}
    out["fpr_at_1pct_fpr_calibrated"] = row.get("fpr_at_1pct_fpr_calibrated")
    out["resolution_limited"] = "tpr_at_1pct_fpr_calibrated" in (
        row.get("resolution_limited") or []
    )
    return out


def t2i_table(results_by_label: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """{"columns": [label], "targets": [...], "lines": {line: {label: {target: cell}}}} from
    each setting's results.json (label: e.g. "w/o prompt div."). A cell is the line's row with
    the highest calibration AUC for that target (None when no row qualifies)."""
    lines: dict[str, dict[str, dict[str, Any]]] = {}
    for line, keep in LINES:
        lines[line] = {}
        for label, results in results_by_label.items():
            rows = [r for r in results.get("attacks", []) if keep(r)]
            best = strongest_per_target(rows)
            lines[line][label] = {t: _cell(best.get(t)) for t in TARGETS}
    return {"columns": list(results_by_label), "targets": list(TARGETS), "lines": lines}


def _fmt(cell: Optional[Mapping[str, Any]]) -> str:
    if cell is None:
        return MISSING
    auc = f"{cell['auc']:.3f}" if cell.get("auc") is not None else MISSING
    if cell.get("resolution_limited"):
        op = RESOLUTION_LIMITED
    else:
        tpr, fpr = cell.get("tpr_at_1pct_fpr_calibrated"), cell.get("fpr_at_1pct_fpr_calibrated")
        op = MISSING if tpr is None else f"{tpr:.2f} @ {100 * (fpr or 0.0):.1f}%"
    return f"{auc} / {op} ({escape(str(cell['attack']))})"


def t2i_markdown(table: Mapping[str, Any]) -> str:
    """The table as markdown, with how to read it."""
    cols = [(label, t) for label in table["columns"] for t in table["targets"]]
    header = ["Attack"] + [f"{escape(label)}: {t}" for label, t in cols]
    body = [
        [escape(line)] + [_fmt(table["lines"][line][label].get(t)) for label, t in cols]
        for line, _ in LINES
        if line in table["lines"]
    ]
    note = (
        "Cells: test AUC / TPR at the threshold that flags 1% of the calibration non-members @ "
        "the test FPR it realises (the attack, and within it the setting, chosen by calibration "
        "AUC). DualMD's eps-query lines go through its step router (gray-box, our extension); "
        "its black-box lines (Pang & Wang, ReDiffuse) query the alternating pipeline, the "
        "paper's threat model. Prompt diversification (paper §3.1) applies to every model of "
        "its column group, the baseline included."
    )
    return "\n\n".join([markdown_table(header, body), note])
