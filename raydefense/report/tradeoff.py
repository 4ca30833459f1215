"""The privacy-utility section of the report (rendering only; the numbers come from
`raydefense.audit.selection.tradeoff`): the defender's worst case per target, and the
privacy-utility scatter with its Pareto front.

Privacy is the defender's worst case: per target, the (attack, setting) with the highest
calibration-part AUC among the evaluate stage's rows and, when an attack sweep over the same
models exists, the sweep's worst case; its test-part AUC is the number reported (test numbers
never choose). Utility is a quality metric where lower is better (domain FID, else held-out
eps-MSE). Points: the pipeline's targets and, when a training sweep exists, its completed trials.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from raydefense.audit.selection import SELECTION_TEXT
from raydefense.report.markdown import RESOLUTION_LIMITED, escape, markdown_table
from raydefense.roster import sort_targets

TRADEOFF_PNG = "privacy_utility.png"
# Targets whose defense claims privacy against black-box attackers only (DualMD: the paper's
# threat model); their black-box worst case is reported on a line of its own.


def plot_tradeoff(section: Mapping[str, Any], path: str) -> None:
    """Scatter of worst-case attack AUC (x, lower = more private) against utility (y, lower =
    better) with each group's Pareto front as a step line; PNG at 120 dpi."""
    fig = Figure(figsize=(7.0, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    groups = [
        (
            "target",
            "pipeline targets (worst case over every attack their access allows)",
            "o",
            "tab:blue",
        ),
        ("black-box claim", "black-box attacks only (DualMD's claim)", "D", "tab:green"),
        ("trial", "training-sweep trials", "s", "tab:orange"),
        ("reference", "each trial's reference (its own baseline)", "^", "tab:gray"),
    ]
    for kind, name, marker, color in groups:
        pts = [p for p in section["points"] if p["kind"] == kind]
        if not pts:
            continue
        ax.scatter(
            [p["privacy_auc"] for p in pts],
            [p["utility"] for p in pts],
            marker=marker,
            color=color,
            label=name,
            zorder=3,
        )
        for p in pts:
            ax.annotate(
                p["label"],
                (p["privacy_auc"], p["utility"]),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        front = sorted((p["privacy_auc"], p["utility"]) for p in pts if p.get("pareto"))
        if len(front) > 1:
            ax.step(
                [f[0] for f in front],
                [f[1] for f in front],
                where="post",
                color=color,
                linestyle="--",
                linewidth=1.0,
                label=f"Pareto front ({kind}s; chosen on calibration AUC)",
            )
    rec = [p for p in section["points"] if p.get("recommended")]
    if rec:
        ax.scatter(
            [p["privacy_auc"] for p in rec],
            [p["utility"] for p in rec],
            marker="*",
            s=260,
            facecolors="none",
            edgecolors="tab:red",
            linewidths=1.5,
            label="recommended setting (chosen on calibration)",
            zorder=4,
        )
    base = next((p for p in section["points"] if p["label"] == "baseline"), None)
    ts = section.get("training_sweep") or {}
    budget = (ts.get("recommended") or {}).get("utility_budget")
    line = section.get("budget_line")  # (factor, utility) when the section names it
    if line is None and base is not None and budget and ts["recommended"].get("reference_utility"):
        line = (budget, budget * base["utility"])
    if line is not None:
        ax.axhline(
            line[1],
            color="tab:red",
            linestyle=":",
            linewidth=1.0,
            label=f"utility budget ({line[0]:g} x the baseline's)",
        )
    ax.axvline(0.5, color="0.6", linestyle=":", linewidth=1.0, label="chance (AUC 0.5)")
    ax.set_xlabel("worst-case attack AUC (lower = more private)")
    ax.set_ylabel(f"{section.get('utility_metric')} (lower = better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Privacy-utility trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def _rate(v: Any) -> str:
    return RESOLUTION_LIMITED if v is None else f"{float(v):.2f}"


def _epsilon(e: Optional[Mapping[str, Any]]) -> str:
    """An empirical epsilon cell: the lower bound; "n/a" where the operating point is
    resolution-limited."""
    return "n/a" if not e else f"{e['lower']:.2f}"


def privacy_markdown(privacy: Mapping[str, Mapping[str, Any]]) -> str:
    """The defender's worst case per target (one line per target; DualMD's black-box-only
    claim on a line of its own), with the choice rule and the calibrated operating point."""
    if not privacy:
        return "No attack results."
    body = []

    def line(label: str, w: Mapping[str, Any]) -> list[str]:
        setting = (
            json.dumps(w["params"], sort_keys=True)
            if isinstance(w["params"], Mapping)
            else str(w["params"])
        )
        flipped = " (flipped)" if w.get("orientation") == -1 else ""
        return [
            escape(label),
            escape(str(w.get("access") or "")),
            escape(f"{w['attack']} {setting}{flipped}"),
            escape(w["source"]),
            f"{w['auc_calibration']:.3f}",
            f"**{w['auc']:.3f}**",
            _rate(w.get("tpr_at_1pct_fpr")),
            f"{_rate(w.get('tpr_at_1pct_fpr_calibrated'))} / "
            f"{_rate(w.get('fpr_at_1pct_fpr_calibrated'))}",
            _epsilon(w.get("empirical_epsilon")),
        ]

    for t in sort_targets(privacy):
        body.append(line(t, privacy[t]))
        raw = privacy[t].get("without_calibrated")
        if raw and raw is not privacy[t] and raw["attack"] != privacy[t]["attack"]:
            gain = privacy[t].get("gain_over_without_calibrated") or {}
            ci = gain.get("auc_diff_ci")
            label = f"{t}, without reference/population/combined attacks"
            if gain.get("auc_diff") is not None:
                label += f" (the suite adds {gain['auc_diff']:+.3f}" + (
                    f" [{ci[0]:+.3f}, {ci[1]:+.3f}])" if ci else ")"
                )
            body.append(line(label, raw))
        if privacy[t].get("black_box"):
            body.append(line(f"{t}, black-box only", privacy[t]["black_box"]))
    table = markdown_table(
        [
            "Target",
            "Attack needs",
            "Strongest attack (setting), chosen on calibration",
            "From",
            "Cal. AUC",
            "AUC (test)",
            "TPR@1%FPR (test ROC)",
            "TPR / FPR at the calibrated 1% threshold",
            "Empirical ε (95% lower bound)",
        ],
        body,
    )
    notes = [
        f"The strongest attack is {SELECTION_TEXT}; (flipped): its scores were negated "
        "because its calibration AUC was below 0.5. TPR@1%FPR (test ROC) reads the test ROC, "
        "so its threshold is picked with test labels; the last column fixes the threshold on "
        f"calibration non-members at 1% FPR and gives the TPR and FPR it realises on test. "
        f"{RESOLUTION_LIMITED}: 1% is below 1/n of that split's non-members. Empirical ε: "
        "the privacy loss that operating point proves, ε >= max(log((TPR - δ) / FPR), "
        "log((1 - FPR - δ) / (1 - TPR))) at δ = 0 with TPR at its Clopper-Pearson lower bound "
        "and FPR at its upper bound (95% together): a lower bound, in the unit a DP guarantee "
        "states, never infinite on small counts."
    ]
    if any(privacy[t].get("without_calibrated") for t in privacy):
        notes.append(
            "*Without reference/population/combined attacks*: the same choice over the "
            "raw-statistic, learned, black-box and router-aware attacks alone (what the suite "
            "reported before LiRA, RMIA, quantile regression and the combined attack); shown "
            "where it picks another attack, with what the full suite adds in test AUC and its "
            "paired bootstrap 95% CI (both attacks on the same resampled test rows)."
        )
    if any(privacy[t].get("black_box") for t in privacy):
        notes.append(
            "DualMD protects against **black-box** attackers only (the paper's threat "
            "model: final images from its alternating sampler). Its gray-box line is an "
            "attacker who can query eps(x_t, t) and knows the public step routing: "
            "querying one timestep served by each teacher (`dualmd_adaptive`) sees each "
            "teacher's members as clearly as that teacher alone."
        )
    return table + "\n\n" + "\n\n".join(notes)


def tradeoff_markdown(section: Mapping[str, Any], figure: Optional[str]) -> str:
    lines = []
    ts = section.get("training_sweep")
    if ts:
        lines.append(
            f"Training sweep `{ts['name']}`: {ts['num_trials']} trials auditing "
            f"`{ts['target']}` ({ts['num_stopped']} stopped early by ASHA)"
            + (
                "."
                if ts["utility_metric"] == section.get("utility_metric")
                else f"; not plotted: its utility is {ts['utility_metric']}, the targets' "
                f"is {section.get('utility_metric')}."
            )
        )
    rec = (ts or {}).get("recommended")
    if rec:
        lines += ["", _recommendation_markdown(rec, section.get("utility_metric")), ""]
    pts = section.get("points", [])
    if not pts:
        return "\n".join(lines + ["No utility metric to plot against privacy."])
    body = [
        [
            escape(p["label"]),
            p["kind"],
            escape(p.get("setting", "")),
            f"{p['privacy_auc']:.3f}",
            f"{p['utility']:.3f}",
            ("yes" if p["pareto"] else "") + (" (recommended)" if p.get("recommended") else ""),
        ]
        for p in pts
    ]
    lines.append(
        markdown_table(
            [
                "Point",
                "Kind",
                "Setting",
                "Worst-case AUC (test)",
                str(section.get("utility_metric")),
                "Pareto (chosen on calibration AUC)",
            ],
            body,
        )
    )
    if figure:
        lines += ["", f"![privacy-utility]({figure})"]
    return "\n".join(lines)


def _recommendation_markdown(rec: Mapping[str, Any], metric: Optional[str]) -> str:
    """The training sweep's recommended setting, the rule that chose it, and its numbers."""
    chosen = rec.get("setting")
    if chosen:
        sd = chosen.get("privacy_auc_sd")
        spread = f" ± {sd:.3f}" if sd is not None else ""
        ref = rec.get("reference_utility")
        if chosen.get("utility_ratio") is not None:
            ratio = f" ({chosen['utility_ratio']:.2f}x its trials' own baselines)"
        else:
            ratio = f" ({chosen['utility'] / ref:.2f}x the baseline's {ref:.3f})" if ref else ""
        n = len(chosen["trials"])
        return (
            f"**Recommended setting:** `{escape(chosen['setting'])}`: worst-case AUC "
            f"{chosen['privacy_auc']:.3f}{spread} (test), {metric} {chosen['utility']:.3f}{ratio}"
            f", over {n} trial{'s' if n > 1 else ''}. Rule: {rec['rule']}."
        )
    if rec.get("closest"):
        return (
            f"**No setting within the utility budget** (rule: {rec['rule']}); the closest "
            f"setting on the front: `{escape(rec['closest'])}`."
        )
    return f"**No recommended setting**: {rec.get('rule')}."


def suite_markdown(suite: Mapping[str, Any]) -> str:
    """What the worst case was taken over (results.json `suite`): the families covered, with
    their attacks, and those not covered."""
    lines = [f"The worst case is {suite['headline']}. The suite covers:", ""]
    for f in suite.get("covered", []):
        lines.append(
            f"- **{escape(f['family'])}**: {escape(f['description'])}: "
            f"{escape(', '.join(f['attacks']))}"
        )
    refs = suite.get("reference_models") or {}
    if refs:
        per_target = [
            f"{escape(t)} {r['offline']} OUT"
            + (f" + {r['online']} online (IN/OUT)" if r.get("online") else "")
            for t, r in refs.items()
        ]
        pop = max(r.get("population_rows", 0) for r in refs.values())
        lines += [
            "",
            f"Reference models per target: {'; '.join(per_target)}; population rows: {pop}.",
        ]
    missing = suite.get("not_covered", [])
    if missing:
        lines += ["", "It does not cover (an attacker using these may do better):", ""]
        lines += [f"- {escape(m)}" for m in missing]
    return "\n".join(lines)


def _seconds(d: Mapping[str, Any], key: str) -> str:
    return f"{float(d[key]):,.0f}" if d.get("complete") else "n/a"


def defenses_markdown(results: Mapping[str, Any]) -> str:
    """The defenses side by side: per target its worst case (AUC, the calibrated operating
    point, the empirical ε it proves), the accountant's ε where DP-SGD trained it, its utility
    (held-out ε-MSE and the trade-off's metric), whether it is on the privacy-utility front,
    and what it cost to train."""
    privacy, defenses = results.get("privacy") or {}, results.get("defenses") or {}
    pu = results.get("privacy_utility") or {}
    metric = pu.get("utility_metric")
    points = {p["label"]: p for p in pu.get("points", []) if p.get("kind") == "target"}
    mse = {q["target"]: q["value"] for q in results.get("quality", [])
           if q["metric"] == "heldout_eps_mse"}  # fmt: skip
    body = []
    for t in sort_targets(privacy):
        w, d, p = privacy[t], defenses.get(t, {}), points.get(t, {})
        dp = d.get("dp")
        body.append(
            [
                escape(t),
                f"{w['auc']:.3f}",
                f"{_rate(w.get('tpr_at_1pct_fpr_calibrated'))} / "
                f"{_rate(w.get('fpr_at_1pct_fpr_calibrated'))}",
                _epsilon(w.get("empirical_epsilon")),
                f"{dp['epsilon']:.2f} (δ={dp['delta']:g})" if dp else "none",
                f"{mse[t]:.4f}" if t in mse else "n/a",
                f"{p['utility']:.3g}" if "utility" in p else "n/a",
                "yes" if p.get("pareto") else "",
                _seconds(d, "train_seconds"),
                _seconds(d, "cpu_seconds"),
            ]
        )
    table = markdown_table(
        [
            "Target",
            "Worst-case AUC (test)",
            "TPR / FPR at the calibrated 1% threshold",
            "Empirical ε (95% lower bound)",
            "Accountant ε (DP-SGD)",
            "Held-out ε-MSE",
            str(metric or "utility"),
            "On the front",
            "Train wall s",
            "Train CPU s",
        ],
        body,
    )
    return (
        table
        + "\n\nThe empirical ε is what the strongest attack proves at its calibrated operating "
        "point; the accountant's ε is what DP-SGD guarantees (RDP accountant, at its δ): a "
        "guarantee is an upper bound, the attack a lower one. Costs are the target's fits "
        "(DualMD: its teachers; the student: its teachers, their labelling (wall seconds) and "
        "its fit); wall seconds overlap when fits share the machine, CPU seconds are each "
        "fit's process CPU time x its workers; n/a: a model trained before training records "
        "existed, or imported. On the front: on the privacy-utility Pareto front, chosen on "
        "calibration AUCs and utilities."
    )


DEFENSES_SEEDS_PNG = "defenses.png"


def _seed_values(stat: Optional[Mapping[str, Any]], seeds: list[int]) -> dict[int, float]:
    """seed -> value of a summary stat whose `values` are aligned with `seeds`."""
    values = (stat or {}).get("values") or []
    return {s: float(v) for s, v in zip(seeds, values) if v is not None}


def plot_defenses_over_seeds(summary: Mapping[str, Any], path: str) -> bool:
    """The seed study's privacy-utility plot (`raydefense seeds`, seeds/defenses.png): per
    target of the defenses table (and DualMD's black-box claim), every seed's worst-case test
    AUC (x) against its utility (y, the trade-off's metric; log scale when it spans over 10x),
    and the mean ± standard error over seeds as a cross. False (nothing written) without a
    utility metric or a target that has both numbers."""
    from raydefense.report.seed_tables import defense_rows

    metric = summary.get("utility_metric")
    seeds = [int(s) for s in summary.get("seeds", [])]
    privacy, quality = summary.get("privacy", {}), summary.get("quality", {})
    rows = []
    for t in sort_targets(summary.get("defenses", {})):
        util = (quality.get(t) or {}).get(str(metric)) if metric else None
        if t not in privacy or not util or util.get("mean") is None:
            continue
        for label, entry in defense_rows(t, privacy[t]):
            auc = entry.get("auc") or {}
            if auc.get("mean") is not None:
                claim = label != t  # DualMD's black-box claim, drawn as a diamond
                rows.append((label, auc, util, list(entry.get("seeds", seeds)), claim))
    if not rows:
        return False
    fig = Figure(figsize=(7.5, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for (label, auc, util, own, claim), color in zip(rows, colors):
        x, y = _seed_values(auc, own), _seed_values(util, seeds)
        both = [s for s in x if s in y]
        ax.scatter([x[s] for s in both], [y[s] for s in both], s=14, color=color, alpha=0.45)
        ax.errorbar(
            auc["mean"],
            util["mean"],
            xerr=auc.get("se") or 0.0,
            yerr=util.get("se") or 0.0,
            fmt="D" if claim else "o",
            color=color,
            capsize=3,
            label=label,
            zorder=3,
        )
    ys = [u["mean"] for _, _, u, _, _ in rows if u["mean"] > 0]
    if ys and max(ys) / min(ys) > 10:
        ax.set_yscale("log")
    ax.axvline(0.5, color="0.6", linestyle=":", linewidth=1.0)
    ax.set_xlabel("worst-case attack AUC, test (lower = more private)")
    ax.set_ylabel(f"{metric} (lower = better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(
        f"Defenses over seeds {', '.join(map(str, seeds))}: mean ± standard error, dots per seed",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    return True
