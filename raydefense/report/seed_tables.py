"""The seed study's section of the report (`raydefense seeds`' summary.md as well): per
target's worst case and per attack line, the mean over seeds ± its standard error with the
per-seed values, utility against each seed's own baseline, and how the seed-to-seed spread
compares with one run's bootstrap standard error."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from raydefense.report.markdown import MISSING, escape, markdown_table
from raydefense.roster import sort_targets

Z95 = 1.959964  # a 95% CI spans about 2 x 1.96 standard errors

QUALITY_METRICS = (
    "domain_fid",
    "heldout_eps_mse",
    "memorized_fraction",
    "mmd_member_gap",
    "mmd_p_value",
)


def plus_minus(stat: Optional[Mapping[str, Any]], n_total: int, digits: int = 3) -> str:
    """ "0.912 ± 0.013 [0.90, 0.92, 0.91]": the mean ± its standard error over seeds (`se`; a
    summary from before it existed shows its sd) and the per-seed values; "0.912 (n=1)" for one
    value; "(n=2)" appended when seeds are missing."""
    if not stat or stat.get("mean") is None:
        return MISSING
    text = f"{stat['mean']:.{digits}f}"
    spread = stat.get("se", stat.get("sd"))
    if spread is not None:
        text += f" ± {spread:.{digits}f}"
    values = [v for v in stat.get("values", []) if v is not None]
    if len(values) > 1:
        text += " [" + ", ".join(f"{v:.{max(digits - 1, 2)}f}" for v in values) + "]"
    n = int(stat.get("n", n_total))
    if n < n_total or spread is None:
        text += f" (n={n})"
    return text


def _label(target: str, path: Sequence[str]) -> str:
    return f"{target} ({', '.join(k.replace('_', '-') for k in path)})" if path else target


def privacy_rows(
    target: str, entry: Mapping[str, Any], n_total: int, path: tuple[str, ...] = ()
) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, entry) for a worst-case entry and, after it, each nested entry."""
    out = [(_label(target, path), entry)]
    for k, v in entry.items():
        if isinstance(v, Mapping) and "seeds" in v and "attacks" in v and "auc" in v:
            out += privacy_rows(target, v, n_total, path + (k,))
    return out


def _attacks_cell(entry: Mapping[str, Any], n_total: int) -> str:
    texts = [a if a is not None else MISSING for a in entry.get("attacks", [])]
    seeds = entry.get("seeds", [])
    if texts and len(set(texts)) == 1 and len(texts) == n_total:
        return f"{texts[0]} (every seed)"
    return "; ".join(f"seed {s}: {a}" for s, a in zip(seeds, texts))


def seeds_markdown(summary: Mapping[str, Any]) -> str:
    """The seed study as a Markdown section (no trailing newline): the worst case per target,
    then attack lines x targets with "AUC mean ± sd" cells and how the training-seed sd compares
    with the bootstrap CI half-width."""
    seeds = list(summary.get("seeds", []))
    n_total = len(seeds)
    experiments = summary.get("experiments", {})
    names = ", ".join(
        f"{s} (`{experiments.get(str(s), experiments.get(s, MISSING))}`)" for s in seeds
    )
    parts = [
        "## Seed study (each seed re-draws the split and retrains)",
        "",
        f"Seeds {names}. Each seed re-draws the split and retrains every model. Numbers are "
        "the mean over seeds ± its standard error, then the per-seed values in brackets; for "
        "AUCs the standard error is sqrt(max(sd², mean bootstrap se²) / n): a seed's AUC "
        "carries at least its own row-sampling error, which three seeds' sd can understate. "
        f"(n=k) marks a number that only k of the {n_total} seeds have.",
        "",
        "### Privacy: the defender's worst case",
        "",
    ]

    privacy = summary.get("privacy", {})
    if privacy:
        body = []
        for t in sort_targets(privacy):
            for label, e in privacy_rows(t, privacy[t], n_total):
                body.append(
                    [
                        escape(label),
                        plus_minus(e.get("auc"), n_total),
                        plus_minus(e.get("auc_calibration"), n_total),
                        plus_minus(e.get("tpr_at_1pct_fpr_calibrated"), n_total),
                        plus_minus(e.get("fpr_at_1pct_fpr_calibrated"), n_total),
                        escape(_attacks_cell(e, n_total)),
                    ]
                )
        parts += [
            markdown_table(
                [
                    "Target",
                    "Worst-case AUC",
                    "Cal. AUC",
                    "TPR@1%FPR (calibrated)",
                    "Realised FPR",
                    "Strongest attack per seed",
                ],
                body,
            ),
            "",
        ]
    else:
        parts += ["No worst-case entries in the seeds' results.", ""]

    quality = summary.get("quality", {})
    if quality:
        metrics = [m for m in QUALITY_METRICS if any(m in q for q in quality.values())]
        body = [
            [escape(t)] + [plus_minus(quality[t].get(m), n_total) for m in metrics]
            for t in sort_targets(quality)
        ]
        parts += ["### Utility", "", markdown_table(["Target"] + metrics, body), ""]
    ratios = summary.get("utility_ratio", {})
    if ratios:
        metrics = sorted({m for r in ratios.values() for m in r})
        body = [
            [escape(t)] + [plus_minus(ratios[t].get(m), n_total, 2) for m in metrics]
            for t in sort_targets(ratios)
        ]
        parts += [
            "Utility against the baseline of the same seed (target / baseline, per seed; a "
            "budget such as 1.1x holds only where every seed's value is within it):",
            "",
            markdown_table(["Target"] + [f"{m} ratio" for m in metrics], body),
            "",
        ]

    if summary.get("defenses"):
        parts += ["### Defenses side by side", "", defenses_seeds_markdown(summary), ""]

    parts += ["### Attacks", ""]
    rows = summary.get("attacks", [])
    if not rows:
        parts.append("No attack results.")
        return "\n".join(parts)
    lines = list(dict.fromkeys(r["line"] for r in rows))
    targets = sort_targets(r["target"] for r in rows)
    index = {(r["line"], r["target"]): r for r in rows}
    body = [
        [escape(line)]
        + [
            plus_minus(index[(line, t)].get("auc"), n_total) if (line, t) in index else MISSING
            for t in targets
        ]
        for line in lines
    ]
    parts += [
        markdown_table(["Attack"] + [escape(t) for t in targets], body),
        "",
        "Cells: test AUC, mean ± standard error over seeds [per seed].",
        "",
        _spread_sentence(summary),
    ]
    return "\n".join(parts)


def _front_cell(front: Sequence[Optional[bool]]) -> str:
    points = [f for f in front if f is not None]
    return f"{sum(points)} of {len(points)}" if points else MISSING


def _cost_cell(entry: Mapping[str, Any], n_total: int) -> str:
    """ "1,307 ± 20 (661 ± 9)": CPU seconds (wall seconds), mean ± standard error over the
    seeds with a complete training record ("(n=k)" when some lack one)."""
    cells = []
    for key in ("cpu_seconds", "train_seconds"):
        st = entry.get(key) or {}
        if st.get("mean") is None:
            return "n/a"
        se = st.get("se")
        cells.append(f"{st['mean']:,.0f}" + (f" ± {se:,.0f}" if se is not None else ""))
    n = int((entry.get("cpu_seconds") or {}).get("n", n_total))
    return f"{cells[0]} ({cells[1]})" + (f" (n={n})" if n < n_total else "")


def defense_rows(
    target: str, entry: Optional[Mapping[str, Any]]
) -> list[tuple[str, Mapping[str, Any]]]:
    """A target's rows of the defenses table: its worst case and, for DualMD, the black-box
    claim on a line of its own (not the other nested entries, e.g. `without_calibrated`)."""
    if not isinstance(entry, Mapping):
        return []
    rows: list[tuple[str, Mapping[str, Any]]] = [(target, entry)]
    if isinstance(entry.get("black_box"), Mapping):
        rows.append((f"{target} (black-box)", entry["black_box"]))
    return rows


def defenses_seeds_markdown(summary: Mapping[str, Any]) -> str:
    """The defenses side by side over seeds (no trailing newline): per target (and DualMD's
    black-box claim) the worst case, its calibrated operating point and the empirical ε it
    proves, the accountant's ε, utility, the seeds on which it is on the privacy-utility front,
    and its training cost."""
    seeds = list(summary.get("seeds", []))
    n = len(seeds)
    defenses, privacy = summary.get("defenses", {}), summary.get("privacy", {})
    quality, metric = summary.get("quality", {}), summary.get("utility_metric")
    body = []
    for t in sort_targets(defenses):
        d = defenses[t]
        for label, e in defense_rows(t, privacy.get(t)):
            claim = label != t
            eps = e.get("empirical_epsilon") or {}
            body.append(
                [
                    escape(label),
                    plus_minus(e.get("auc"), n),
                    plus_minus(e.get("tpr_at_1pct_fpr_calibrated"), n, 2),
                    plus_minus(eps.get("lower"), n, 2),
                    plus_minus(d.get("accountant_epsilon"), n, 2)
                    if d.get("accountant_epsilon")
                    else "none",
                    plus_minus((quality.get(t) or {}).get("heldout_eps_mse"), n, 4),
                    plus_minus((quality.get(t) or {}).get(str(metric)), n, 2)
                    if metric
                    else MISSING,
                    "(a claim)" if claim else _front_cell(d.get("front", [])),
                    _cost_cell(d, n),
                ]
            )
    table = markdown_table(
        [
            "Target",
            "Worst-case AUC",
            "TPR at the calibrated 1%",
            "Empirical ε (95% lower bound)",
            "Accountant ε",
            "Held-out ε-MSE",
            str(metric or "utility"),
            "On the front (seeds)",
            "Train CPU s (wall s)",
        ],
        body,
    )
    return (
        table
        + "\n\nEach seed's worst case, operating point and front are chosen on its calibration "
        "rows; the empirical ε is what the strongest attack proves at its calibrated point "
        "(Clopper-Pearson, 95%), the accountant's what DP-SGD guarantees. Costs: the target's "
        "fits (DualMD: its teachers; the student: its teachers, their labelling and its own "
        "fit) as each run measured them, so fits that shared the machine overlap in wall time."
    )


def _spread_sentence(summary: Mapping[str, Any]) -> str:
    widths = summary.get("bootstrap_ci_width", {})
    pairs = []
    for r in summary.get("attacks", []):
        sd = (r.get("auc") or {}).get("sd")
        w = widths.get(r["target"], {}).get(r["line"])
        if sd is not None and w is not None:
            pairs.append((float(sd), float(w) / (2 * Z95)))
    if not pairs:
        return (
            "No cell has both a training-seed sd and a bootstrap CI, so the two spreads "
            "cannot be compared."
        )
    sd_mean = float(np.mean([p[0] for p in pairs]))
    se_mean = float(np.mean([p[1] for p in pairs]))
    larger = sum(1 for sd, se in pairs if sd > se)
    return (
        f"Over the {len(pairs)} cells, the seed-to-seed sd of AUC averages {sd_mean:.3f} and "
        f"one run's bootstrap standard error (test-row resampling, the 95% CI half-width / "
        f"1.96, averaged over seeds) averages {se_mean:.3f}; the seed sd exceeds it in "
        f"{larger} of {len(pairs)} cells. Both are spreads of one seed's AUC (like with like); "
        "the mean over seeds has the standard error in the cells."
    )
