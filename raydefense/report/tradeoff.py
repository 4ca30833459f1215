"""The privacy-utility section of the report: the defender's worst case per target, and the
privacy-utility scatter with its Pareto front.

Privacy is the defender's worst case: per target, the (attack, setting) with the highest
calibration-part AUC among the evaluate stage's rows and, when an attack sweep over the same
models exists, the sweep's worst case; its test-part AUC is the number reported (test numbers
never choose). Utility is a quality metric where lower is better (domain FID, else held-out
eps-MSE). Points: the pipeline's targets and, when a training sweep exists, its completed trials.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from raydefense.report.tables import RESOLUTION_LIMITED, _escape, _markdown_table, sort_targets
from raydefense.selection import SELECTION_TEXT, pareto_front, strongest_per_target

UTILITY_PREFERENCE = ("domain_fid", "fid", "heldout_eps_mse")
TRADEOFF_PNG = "privacy_utility.png"
# Targets whose defense claims privacy against black-box attackers only (DualMD: the paper's
# threat model); their black-box worst case is reported on a line of its own.
BLACK_BOX_CLAIMS = ("dualmd",)
PRIVACY_FIELDS = ("orientation", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_calibrated",
                  "fpr_at_1pct_fpr_calibrated")


def _privacy_entry(row: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {"attack": row["attack"], "params": row.get("params", {}), "source": source,
            "access": row.get("access"), "auc": float(row["auc"]),
            "auc_calibration": float(row["auc_calibration"]),
            **{k: row.get(k) for k in PRIVACY_FIELDS}}


def worst_case_privacy(attack_rows: Sequence[Mapping[str, Any]],
                       sweep: Optional[Mapping[str, Any]] = None) -> dict[str, dict[str, Any]]:
    """Per target, the strongest attack by calibration AUC (`raydefense.selection`): {attack,
    params, source, access, auc, auc_calibration, orientation, tpr_at_1pct_fpr,
    tpr_at_1pct_fpr_calibrated, fpr_at_1pct_fpr_calibrated}. `sweep`: an attack sweep's
    results.json over the same models; its per-target worst case competes with the evaluate
    rows. A target in BLACK_BOX_CLAIMS (DualMD: its images are the paper's claim, its step router
    our gray-box extension) also gets `black_box`: the strongest black-box attack alone."""
    rows = [(r, "evaluate") for r in attack_rows]
    if sweep:
        rows += [({**r, "target": t}, f"sweep {sweep.get('sweep')}")
                 for t, r in sweep.get("worst_case", {}).items()]
    rows = [(r, src) for r, src in rows
            if r.get("auc_calibration") is not None and r.get("auc") is not None]
    source = {id(r): src for r, src in rows}
    best = {t: _privacy_entry(r, source[id(r)])
            for t, r in strongest_per_target(r for r, _ in rows).items()}
    black = strongest_per_target(r for r, _ in rows if r.get("access") == "black-box")
    for t, r in black.items():
        if t in BLACK_BOX_CLAIMS and t in best and best[t]["access"] != "black-box":
            best[t]["black_box"] = _privacy_entry(r, source[id(r)])
    return best


def utility_metric(quality: Sequence[Mapping[str, Any]]) -> Optional[str]:
    have = {q["metric"] for q in quality}
    return next((m for m in UTILITY_PREFERENCE if m in have), None)


def tradeoff(results: Mapping[str, Any], attack_sweep: Optional[Mapping[str, Any]] = None,
             training_sweep: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """results.json's `privacy` and `privacy_utility` sections.

    Returns {"privacy": {target: worst case}, "privacy_utility": {"utility_metric", "points":
    [{label, kind: target|trial, privacy_auc, utility, pareto, ...}], "attack_sweep",
    "training_sweep"}}."""
    worst = worst_case_privacy(results["attacks"], attack_sweep)
    metric = utility_metric(results["quality"])
    points: list[dict[str, Any]] = []
    if metric:
        values = {q["target"]: q["value"] for q in results["quality"] if q["metric"] == metric}
        for t in sort_targets(worst):
            if t in values:
                points.append({"label": t, "kind": "target", "privacy_auc": worst[t]["auc"],
                               "privacy_auc_calibration": worst[t]["auc_calibration"],
                               "utility": float(values[t])})
        # The front is chosen on calibration AUCs; the plot shows the test AUCs it reports.
        front = pareto_front([(p["privacy_auc_calibration"], p["utility"]) for p in points])
        for i, p in enumerate(points):
            p["pareto"] = i in front
        for t in sort_targets(worst):  # a black-box-only claim: its own threat model, no front
            bb = worst[t].get("black_box")
            if bb and t in values:
                points.append({"label": f"{t} (black-box)", "kind": "black-box claim",
                               "privacy_auc": bb["auc"],
                               "privacy_auc_calibration": bb["auc_calibration"],
                               "utility": float(values[t]), "pareto": False})
    trials: list[dict[str, Any]] = []
    if training_sweep and training_sweep.get("utility_metric") == metric:
        for t in training_sweep.get("trials", []):
            if t.get("status") == "completed":
                trials.append({"label": t["key"], "kind": "trial", "setting": t["setting"],
                               "privacy_auc": t["privacy_auc"],
                               "privacy_auc_calibration": t.get("privacy_auc_calibration"),
                               "utility": t["utility"],
                               "pareto": bool(t.get("pareto")),
                               "target": training_sweep.get("target")})
    return {"privacy": worst,
            "privacy_utility": {
                "utility_metric": metric, "points": points + trials,
                "attack_sweep": attack_sweep.get("sweep") if attack_sweep else None,
                "training_sweep": ({"name": training_sweep.get("sweep"),
                                    "target": training_sweep.get("target"),
                                    "utility_metric": training_sweep.get("utility_metric"),
                                    "num_trials": training_sweep.get("num_trials"),
                                    "num_stopped": training_sweep.get("num_stopped")}
                                   if training_sweep else None)}}


def plot_tradeoff(section: Mapping[str, Any], path: str) -> None:
    """Scatter of worst-case attack AUC (x, lower = more private) against utility (y, lower =
    better) with each group's Pareto front as a step line; PNG at 120 dpi."""
    fig = Figure(figsize=(7.0, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    groups = [("target", "pipeline targets (worst case over every attack their access allows)",
               "o", "tab:blue"),
              ("black-box claim", "black-box attacks only (DualMD's claim)", "D", "tab:green"),
              ("trial", "training-sweep trials", "s", "tab:orange")]
    for kind, name, marker, color in groups:
        pts = [p for p in section["points"] if p["kind"] == kind]
        if not pts:
            continue
        ax.scatter([p["privacy_auc"] for p in pts], [p["utility"] for p in pts], marker=marker,
                   color=color, label=name, zorder=3)
        for p in pts:
            ax.annotate(p["label"], (p["privacy_auc"], p["utility"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        front = sorted((p["privacy_auc"], p["utility"]) for p in pts if p.get("pareto"))
        if len(front) > 1:
            ax.step([f[0] for f in front], [f[1] for f in front], where="post", color=color,
                    linestyle="--", linewidth=1.0,
                    label=f"Pareto front ({kind}s; chosen on calibration AUC)")
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


def privacy_markdown(privacy: Mapping[str, Mapping[str, Any]]) -> str:
    """The defender's worst case per target (one line per target; DualMD's black-box-only
    claim on a line of its own), with the choice rule and the calibrated operating point."""
    if not privacy:
        return "No attack results."
    body = []

    def line(label: str, w: Mapping[str, Any]) -> list[str]:
        setting = json.dumps(w["params"], sort_keys=True) if isinstance(w["params"], Mapping) \
            else str(w["params"])
        flipped = " (flipped)" if w.get("orientation") == -1 else ""
        return [_escape(label), _escape(str(w.get("access") or "")),
                _escape(f"{w['attack']} {setting}{flipped}"), _escape(w["source"]),
                f"{w['auc_calibration']:.3f}", f"**{w['auc']:.3f}**",
                _rate(w.get("tpr_at_1pct_fpr")),
                f"{_rate(w.get('tpr_at_1pct_fpr_calibrated'))} / "
                f"{_rate(w.get('fpr_at_1pct_fpr_calibrated'))}"]

    for t in sort_targets(privacy):
        body.append(line(t, privacy[t]))
        if privacy[t].get("black_box"):
            body.append(line(f"{t}, black-box only", privacy[t]["black_box"]))
    table = _markdown_table(["Target", "Attack needs", "Strongest attack (setting), chosen on "
                             "calibration", "From", "Cal. AUC", "AUC (test)",
                             "TPR@1%FPR (test ROC)", "TPR / FPR at the calibrated 1% threshold"],
                            body)
    notes = [f"The strongest attack is {SELECTION_TEXT}; (flipped): its scores were negated "
             "because its calibration AUC was below 0.5. TPR@1%FPR (test ROC) reads the test ROC, "
             "so its threshold is picked with test labels; the last column fixes the threshold on "
             f"calibration non-members at 1% FPR and gives the TPR and FPR it realises on test. "
             f"{RESOLUTION_LIMITED}: 1% is below 1/n of that split's non-members."]
    if any(privacy[t].get("black_box") for t in privacy):
        notes.append("DualMD protects against **black-box** attackers only (the paper's threat "
                     "model: final images from its alternating sampler). Its gray-box line is an "
                     "attacker who can query eps(x_t, t) and knows the public step routing: "
                     "querying one timestep served by each teacher (`dualmd_adaptive`) sees each "
                     "teacher's members as clearly as that teacher alone.")
    return table + "\n\n" + "\n\n".join(notes)


def tradeoff_markdown(section: Mapping[str, Any], figure: Optional[str]) -> str:
    lines = []
    ts = section.get("training_sweep")
    if ts:
        lines.append(f"Training sweep `{ts['name']}`: {ts['num_trials']} trials auditing "
                     f"`{ts['target']}` ({ts['num_stopped']} stopped early by ASHA)"
                     + ("." if ts["utility_metric"] == section.get("utility_metric") else
                        f"; not plotted: its utility is {ts['utility_metric']}, the targets' "
                        f"is {section.get('utility_metric')}."))
    pts = section.get("points", [])
    if not pts:
        return "\n".join(lines + ["No utility metric to plot against privacy."])
    body = [[_escape(p["label"]), p["kind"], _escape(p.get("setting", "")),
             f"{p['privacy_auc']:.3f}", f"{p['utility']:.3f}", "yes" if p["pareto"] else ""]
            for p in pts]
    lines.append(_markdown_table(["Point", "Kind", "Setting", "Worst-case AUC (test)",
                                  str(section.get("utility_metric")),
                                  "Pareto (chosen on calibration AUC)"], body))
    if figure:
        lines += ["", f"![privacy-utility]({figure})"]
    return "\n".join(lines)
