"""Markdown tables for report.md, built from the rows of results.json.

Pure functions over plain dicts: no plotting, no I/O. Missing fields print as "–" (a stage that did
not compute a number leaves it absent, and the table must not invent one).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from raydefense.roster import sort_targets, target_order_key

MISSING = "–"  # en dash: shown for any field a row does not have


def is_number(value: Any) -> bool:
    """True for Python and NumPy ints/floats (numbers.Real), never for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _fmt(value: Any, digits: int) -> str:
    """A number with fixed decimals; "–" for None/absent; other values as text."""
    if value is None:
        return MISSING
    if is_number(value):
        return f"{float(value):.{digits}f}"
    return escape(str(value))


def _fmt_count(value: Any) -> str:
    if value is None:
        return MISSING
    if is_number(value) and float(value).is_integer():
        return str(int(value))
    return _fmt(value, 3)


def escape(text: str) -> str:
    """Keeps a cell from breaking the Markdown table (pipes and newlines)."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- attack settings (columns) --------------------------------------------------------------------


def params_key(params: Any) -> str:
    """A canonical, hashable identity for a params value (dict order does not matter)."""
    return json.dumps(params, sort_keys=True, default=str)


def _fmt_param_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt_param_value(v) for v in value) + "]"
    return str(value)


def attack_settings(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """The distinct attack settings of `rows`, as (attack, params_key, column label).

    Order: attacks by first appearance, settings of one attack by first appearance. The label is
    the attack name, plus only the params that differ between its settings (e.g. "secmi (k=10)"),
    so a column header stays short when an attack is swept.
    """
    by_attack: dict[str, dict[str, Any]] = {}
    for row in rows:
        attack = str(row.get("attack"))
        by_attack.setdefault(attack, {}).setdefault(
            params_key(row.get("params")), row.get("params")
        )
    settings: list[tuple[str, str, str]] = []
    for attack, variants in by_attack.items():
        if len(variants) == 1:
            key = next(iter(variants))
            settings.append((attack, key, attack))
            continue
        dicts = [p if isinstance(p, Mapping) else {"params": p} for p in variants.values()]
        all_keys = list(dict.fromkeys(k for d in dicts for k in d))
        varying = [k for k in all_keys if len({params_key(d.get(k)) for d in dicts}) > 1]
        for key, params in zip(variants, dicts):
            label = ", ".join(
                f"{k}={_fmt_param_value(params[k])}" if k in params else f"{k}=–" for k in varying
            )
            settings.append((attack, key, f"{attack} ({label})"))
    return settings


def _index_rows(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], Mapping[str, Any]]:
    """(target, attack, params_key) -> row; the first row wins if a key repeats."""
    index: dict[tuple[str, str, str], Mapping[str, Any]] = {}
    for row in rows:
        key = (str(row.get("target")), str(row.get("attack")), params_key(row.get("params")))
        index.setdefault(key, row)
    return index


RESOLUTION_LIMITED = "res.-limited"  # an FPR level below 1/n of the split's non-members
NOTE_MARKS = ("†", "‡", "§")
FLIPPED = "↕"  # scores negated: the calibration split showed the attack's sign inverted


def rate(row: Mapping[str, Any], key: str, digits: int = 2) -> str:
    """A rate field of an attack row; "res.-limited" when its FPR level is below the split's
    resolution (the row lists it in `resolution_limited`), "–" when absent."""
    if key in (row.get("resolution_limited") or ()):
        return RESOLUTION_LIMITED
    return _fmt(row.get(key), digits)


def attack_cell(row: Mapping[str, Any] | None) -> str:
    """One cell "AUC [lo, hi] / TPR@1%FPR", e.g. "0.990 [0.970, 1.000] / 0.71".

    AUC and its CI with 3 decimals, TPR with 2; the CI is left out when the row has none; "↕"
    marks scores flipped on calibration.
    """
    if row is None:
        return MISSING
    auc = _fmt(row.get("auc"), 3)
    ci = row.get("auc_ci")
    if (
        auc != MISSING
        and isinstance(ci, Sequence)
        and not isinstance(ci, str)
        and len(ci) == 2
        and all(v is not None for v in ci)
    ):
        auc = f"{auc} [{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}]"
    flip = f" {FLIPPED}" if row.get("orientation") == -1 else ""
    return f"{auc}{flip} / {rate(row, 'tpr_at_1pct_fpr')}"


def attack_table_markdown(rows: list[dict]) -> str:
    """Paper-style Markdown tables of attack results.

    First table: one row per target (baseline, teacher_k, dualmd, student, others), one column per
    attack setting, cells "AUC [CI] / TPR@1%FPR". Second table: ASR (calibrated), ASR (oracle),
    TPR@0.1%FPR and the member/non-member counts per (target, setting). Then the TPR@FPR rule(s),
    each distinct sentence once.

    Args:
        rows: attack rows of results.json (keys as in DESIGN.md; absent fields print as "–").
    Returns:
        Markdown text (no trailing newline).
    """
    if not rows:
        return "No attack results."
    settings = attack_settings(rows)
    index = _index_rows(rows)
    targets = sort_targets(str(r.get("target")) for r in rows)

    header = ["Target"] + [escape(label) for _, _, label in settings]
    body = [
        [escape(t)] + [attack_cell(index.get((t, attack, key))) for attack, key, _ in settings]
        for t in targets
    ]
    main = markdown_table(header, body)
    caption = "Cells: AUC [95% CI] / TPR@1%FPR."

    asr_header = [
        "Target",
        "Attack",
        "ASR (calibrated)",
        "ASR (oracle)",
        "TPR@0.1%FPR",
        "n_members",
        "n_nonmembers",
    ]
    asr_body = []
    for t in targets:
        for attack, key, label in settings:
            row = index.get((t, attack, key))
            if row is None:
                continue
            asr_body.append(
                [
                    escape(t),
                    escape(label),
                    _fmt(row.get("asr_calibrated"), 3),
                    _fmt(row.get("asr_oracle"), 3),
                    _fmt(row.get("tpr_at_0.1pct_fpr"), 3),
                    _fmt_count(row.get("n_members")),
                    _fmt_count(row.get("n_nonmembers")),
                ]
            )
    asr = markdown_table(asr_header, asr_body)

    rules = list(dict.fromkeys(str(r["tpr_rule"]) for r in rows if r.get("tpr_rule")))
    if len(rules) == 1:
        footnote = f"*TPR@FPR rule:* {rules[0]}"
    elif rules:
        footnote = "*TPR@FPR rules:*\n" + "\n".join(f"- {rule}" for rule in rules)
    else:
        footnote = f"*TPR@FPR rule:* {MISSING}"
    return "\n\n".join([main, caption, asr, footnote])


def _fmt_quality(value: Any) -> str:
    """FID-sized numbers with 2 decimals, small scores (IS, rates) with 3."""
    if value is None:
        return MISSING
    if is_number(value):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        return f"{v:.2f}" if abs(v) >= 100 else f"{v:.3f}"
    return escape(str(value))


def quality_table_markdown(quality: list[dict]) -> str:
    """Markdown table of utility metrics: targets as rows (report order), metrics as columns.

    Args:
        quality: rows {"target", "metric", "value"}; the first value wins if a pair repeats.
    """
    if not quality:
        return "No quality results."
    metrics = list(dict.fromkeys(str(q.get("metric")) for q in quality))
    values: dict[tuple[str, str], Any] = {}
    for q in quality:
        values.setdefault((str(q.get("target")), str(q.get("metric"))), q.get("value"))
    targets = sort_targets(str(q.get("target")) for q in quality)
    body = [
        [escape(t)]
        + [_fmt_quality(values.get((t, m))) if (t, m) in values else MISSING for m in metrics]
        for t in targets
    ]
    return markdown_table(["Target"] + [escape(m) for m in metrics], body)


def _fmt_duration(seconds: float) -> str:
    """E.g. 3723.4 -> "1h 02m 03s"; sub-minute values keep one decimal."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def timings_table_markdown(timings: dict[str, float]) -> str:
    """Markdown table of wall-clock seconds per stage (insertion order) plus a total row."""
    if not timings:
        return "No timings recorded."
    body = []
    total = 0.0
    for stage, seconds in timings.items():
        if is_number(seconds):
            total += float(seconds)
            body.append(
                [escape(str(stage)), f"{float(seconds):.1f}", _fmt_duration(float(seconds))]
            )
        else:
            body.append([escape(str(stage)), _fmt(seconds, 1), MISSING])
    body.append(["**total**", f"**{total:.1f}**", f"**{_fmt_duration(total)}**"])
    return markdown_table(["Stage", "Seconds", "Duration"], body)


# --- paper-style table: one line per attack (headline setting), one column per target ------------


def short_params(params: Any) -> str:
    if not isinstance(params, Mapping):
        return str(params)
    return ", ".join(f"{k}={_fmt_param_value(v)}" for k, v in params.items() if k != "canonical")


def headline_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """One line per (target, attack) for the paper-style table.

    An attack with a single setting shows it. A swept attack shows its canonical setting (params
    flag `canonical`, e.g. PIA t=200) and the setting with the best *calibration* AUC — chosen
    without looking at the test part, so the reported test numbers stay honest. The returned rows
    carry `line` (the table line label) and `setting` (the chosen params, as text).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    settings: dict[str, set[str]] = {}
    for r in rows:
        groups.setdefault((str(r.get("target")), str(r.get("attack"))), []).append(r)
        settings.setdefault(str(r.get("attack")), set()).add(params_key(r.get("params")))
    out: list[dict] = []
    for (_, attack), rs in groups.items():
        if len(settings[attack]) == 1:
            out.append({**rs[0], "line": attack, "setting": short_params(rs[0].get("params"))})
            continue
        for r in rs:
            # A recalibrated column (LiRA on PIA's canonical t) keeps its base's flag: the
            # canonical line is the base attack's own.
            p = r.get("params")
            if isinstance(p, Mapping) and p.get("canonical") and "base" not in p:
                out.append(
                    {**r, "line": f"{attack} (canonical)", "setting": short_params(r["params"])}
                )
        best = max(
            rs,
            key=lambda r: (r.get("auc_calibration") is not None, r.get("auc_calibration") or 0.0),
        )
        out.append(
            {
                **best,
                "line": f"{attack} (best on calibration)",
                "setting": short_params(best.get("params")),
            }
        )
    return out


def paper_table_markdown(
    rows: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, Any]] = ()
) -> str:
    """Attacks x targets, cells "AUC [CI] / TPR@1%FPR" (like the paper's Table 2), from the
    headline setting of each attack; a swept attack's "best on calibration" cells name the chosen
    setting. Pairs refused for lack of access print "n/a", explained below the table."""
    if not rows:
        return "No attack results."
    head = headline_rows(rows)
    targets = sort_targets(
        [str(r.get("target")) for r in rows] + [str(s.get("target")) for s in skipped]
    )
    lines = list(dict.fromkeys(r["line"] for r in head))
    index = {(r["line"], str(r["target"])): r for r in head}
    refused = {(str(s.get("attack")), str(s.get("target"))) for s in skipped}
    notes = list(dict.fromkeys(str(r["note"]) for r in head if r.get("note")))
    mark = {
        n: NOTE_MARKS[i % len(NOTE_MARKS)] * (1 + i // len(NOTE_MARKS)) for i, n in enumerate(notes)
    }  # one footnote mark per distinct note
    body = []
    for line in lines:
        attack = line.split(" (")[0]
        cells = []
        for t in targets:
            r = index.get((line, t))
            if r is None:
                cells.append("n/a" if (attack, t) in refused else MISSING)
                continue
            cell = attack_cell(r)
            if line.endswith("(best on calibration)"):
                cell += f" ({escape(r['setting'])})"
            if r.get("note"):
                cell += f" {mark[str(r['note'])]}"
            cells.append(cell)
        body.append([escape(line)] + cells)
    text = [
        markdown_table(["Attack"] + [escape(t) for t in targets], body),
        "Cells: AUC [95% CI] / TPR@1%FPR on the test split (TPR read off the test ROC). "
        '"best on calibration" lines: the setting is chosen by calibration AUC, never '
        f"by test numbers. {FLIPPED}: scores negated because the calibration AUC was below "
        "0.5 (the orientation is chosen on calibration too). "
        f"{RESOLUTION_LIMITED}: 1% FPR is below one false positive on the test split.",
    ]
    text += [f"{mark[n]} {n}." for n in notes]
    if skipped:
        text.append(
            "n/a: "
            + "; ".join(
                dict.fromkeys(
                    f"{s.get('attack')} on {s.get('target')}: {s.get('reason')}" for s in skipped
                )
            )
            + "."
        )
    return "\n\n".join(text)


def operating_points_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """For each headline line: TPR / FPR realised on test at the thresholds fixed on calibration
    (1% and 0.1% FPR), the test-ROC TPR@0.1%FPR, ASR (calibrated / oracle) and the set sizes.
    Levels below a split's resolution print "res.-limited"."""
    head = headline_rows(rows)
    body = [
        [
            escape(str(r["target"])),
            escape(r["line"]),
            escape(r["setting"]),
            f"{rate(r, 'tpr_at_1pct_fpr_calibrated')} / {rate(r, 'fpr_at_1pct_fpr_calibrated', 3)}",
            f"{rate(r, 'tpr_at_0.1pct_fpr_calibrated')} / "
            f"{rate(r, 'fpr_at_0.1pct_fpr_calibrated', 3)}",
            rate(r, "tpr_at_0.1pct_fpr", 3),
            _fmt(r.get("asr_calibrated"), 3),
            _fmt(r.get("asr_oracle"), 3),
            _fmt_count(r.get("n_members")),
            _fmt_count(r.get("n_nonmembers")),
        ]
        for r in sorted(head, key=lambda r: target_order_key(str(r["target"])))
    ]
    table = markdown_table(
        [
            "Target",
            "Attack",
            "Setting",
            "TPR / FPR at calibrated 1%",
            "TPR / FPR at calibrated 0.1%",
            "TPR@0.1%FPR (test ROC)",
            "ASR (calibrated)",
            "ASR (oracle)",
            "n_members",
            "n_nonmembers",
        ],
        body,
    )
    return table + (
        "\n\nCalibrated columns: the threshold that flags at most 1% (0.1%) of the "
        "calibration non-members, applied to the test split; the FPR it realises "
        "there is shown beside the TPR. Test-ROC columns pick their threshold with "
        f"test labels. {RESOLUTION_LIMITED}: the level is below one false positive "
        "among that split's non-members, so any number would mean 0% FPR."
    )


def sweep_tables_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """For every attack with several settings: settings x targets, cells "AUC (cal. AUC)"."""
    by_attack: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_attack.setdefault(str(r.get("attack")), []).append(r)
    parts = []
    for attack, rs in by_attack.items():
        settings = list(dict.fromkeys(params_key(r.get("params")) for r in rs))
        if len(settings) < 2:
            continue
        targets = sort_targets(str(r.get("target")) for r in rs)
        index = {(params_key(r.get("params")), str(r.get("target"))): r for r in rs}
        body = []
        for key in settings:
            params = json.loads(key)
            cells = []
            for t in targets:
                cell = index.get((key, t))
                cells.append(
                    MISSING
                    if cell is None
                    else f"{_fmt(cell.get('auc'), 3)} ({_fmt(cell.get('auc_calibration'), 3)})"
                )
            body.append([escape(short_params(params))] + cells)
        parts += [f"### {attack}", "", markdown_table(["Setting"] + list(targets), body), ""]
    if not parts:
        return "No swept attacks."
    return "\n".join(["Cells: test AUC (calibration AUC).", ""] + parts).rstrip()


# The paper's Table 2 (white-box MIAs on DDPM, DistillMD only; AUC / TPR@1%FPR), copied from
# spec/paper.md, keyed by our data.source names.
PAPER_TABLE2: dict[str, dict[tuple[str, str], tuple[float, float]]] = {
    "cifar10": {
        ("secmi_stat", "baseline"): (0.93, 0.35),
        ("secmi_stat", "student"): (0.59, 0.03),
        ("pia", "baseline"): (0.89, 0.13),
        ("pia", "student"): (0.59, 0.02),
    },
    "cifar100": {
        ("secmi_stat", "baseline"): (0.96, 0.45),
        ("secmi_stat", "student"): (0.61, 0.02),
        ("pia", "baseline"): (0.88, 0.14),
        ("pia", "student"): (0.59, 0.03),
    },
    "tiny_imagenet": {
        ("secmi_stat", "baseline"): (0.96, 0.53),
        ("secmi_stat", "student"): (0.57, 0.02),
        ("pia", "baseline"): (0.84, 0.08),
        ("pia", "student"): (0.56, 0.02),
    },
    "stl10_unlabeled": {
        ("secmi_stat", "baseline"): (0.94, 0.30),
        ("secmi_stat", "student"): (0.58, 0.02),
        ("pia", "baseline"): (0.83, 0.09),
        ("pia", "student"): (0.58, 0.02),
    },
}
# The paper's SecMIA numbers are SecMI_NN's (its stronger, learned variant); SecMI_stat is shown
# beside them, labelled.
_PAPER_LINES = (
    ("secmi_stat", "secmi_nn", "secmi_nn", "SecMIA (ours: SecMI_NN)"),
    ("secmi_stat", "secmi_stat", "secmi_stat", "SecMIA (ours: SecMI_stat)"),
    ("pia", "pia", "pia (canonical)", "PIA"),
)


def paper_comparison_markdown(rows: Sequence[Mapping[str, Any]], dataset: str | None) -> str:
    """Side by side with the paper's Table 2 where the dataset matches (SecMI and PIA against the
    undefended model and the DistillMD student), with a note that the scales differ."""
    published = PAPER_TABLE2.get(str(dataset))
    if not published:
        return (
            f"The paper publishes no attack numbers for `{dataset}` (its Table 2 covers "
            "CIFAR-10, CIFAR-100, Tiny-ImageNet and STL10-Unlabeled)."
        )
    ours = {(h["attack"], h["line"], h["target"]): h for h in headline_rows(rows)}
    body = []
    for paper_attack, attack, line, label in _PAPER_LINES:
        for target, method in (("baseline", "No defense"), ("student", "DistillMD")):
            paper = published[(paper_attack, target)]
            row = ours.get((attack, line, target))
            body.append(
                [
                    label,
                    method,
                    f"{paper[0]:.2f} / {paper[1]:.2f}",
                    attack_cell(row) if row else MISSING,
                ]
            )
    note = (
        "Paper: DDPM at full scale (the canonical half splits, 25,000-50,000 members); this "
        "run: the configured sizes and steps, so absolute numbers are not expected to match. "
        "What should carry over is the drop from *No defense* to *DistillMD*."
    )
    return (
        markdown_table(["Attack", "Method", f"paper ({dataset})", "this run"], body) + "\n\n" + note
    )
