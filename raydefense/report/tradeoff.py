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

from raydefense.report.tables import _escape, _markdown_table, sort_targets
from raydefense.sweep_training import pareto_front

UTILITY_PREFERENCE = ("domain_fid", "fid", "heldout_eps_mse")
TRADEOFF_PNG = "privacy_utility.png"


def worst_case_privacy(attack_rows: Sequence[Mapping[str, Any]],
                       sweep: Optional[Mapping[str, Any]] = None) -> dict[str, dict[str, Any]]:
    """Per target, the strongest attack by calibration AUC: {attack, params, source, auc,
    auc_calibration, tpr_at_1pct_fpr}. `sweep`: an attack sweep's results.json over the same
    models; its per-target worst case competes with the evaluate rows."""
    best: dict[str, dict[str, Any]] = {}

    def offer(target: str, row: Mapping[str, Any], source: str) -> None:
        cal = row.get("auc_calibration")
        if cal is None or row.get("auc") is None:
            return
        cur = best.get(target)
        if cur is None or float(cal) > cur["auc_calibration"]:
            best[target] = {"attack": row["attack"], "params": row.get("params", {}),
                            "source": source, "auc": float(row["auc"]),
                            "auc_calibration": float(cal),
                            "tpr_at_1pct_fpr": float(row.get("tpr_at_1pct_fpr", float("nan")))}

    for r in attack_rows:
        offer(str(r["target"]), r, "evaluate")
    if sweep:
        for t, r in sweep.get("worst_case", {}).items():
            offer(t, r, f"sweep {sweep.get('sweep')}")
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
                               "utility": float(values[t])})
        front = pareto_front([(p["privacy_auc"], p["utility"]) for p in points])
        for i, p in enumerate(points):
            p["pareto"] = i in front
    trials: list[dict[str, Any]] = []
    if training_sweep and training_sweep.get("utility_metric") == metric:
        for t in training_sweep.get("trials", []):
            if t.get("status") == "completed":
                trials.append({"label": t["key"], "kind": "trial", "setting": t["setting"],
                               "privacy_auc": t["privacy_auc"], "utility": t["utility"],
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
    groups = [("target", "pipeline targets", "o", "tab:blue"),
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
                    linestyle="--", linewidth=1.0, label=f"Pareto front ({kind}s)")
    ax.axvline(0.5, color="0.6", linestyle=":", linewidth=1.0, label="chance (AUC 0.5)")
    ax.set_xlabel("worst-case attack AUC (lower = more private)")
    ax.set_ylabel(f"{section.get('utility_metric')} (lower = better)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Privacy-utility trade-off")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")


def privacy_markdown(privacy: Mapping[str, Mapping[str, Any]]) -> str:
    if not privacy:
        return "No attack results."
    body = []
    for t in sort_targets(privacy):
        w = privacy[t]
        setting = json.dumps(w["params"], sort_keys=True) if isinstance(w["params"], Mapping) \
            else str(w["params"])
        body.append([_escape(t), _escape(f"{w['attack']} {setting}"), _escape(w["source"]),
                     f"{w['auc_calibration']:.3f}", f"**{w['auc']:.3f}**",
                     f"{w['tpr_at_1pct_fpr']:.3f}"])
    return _markdown_table(["Target", "Strongest attack (setting)", "From", "Cal. AUC",
                            "AUC", "TPR@1%FPR"], body)


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
    lines.append(_markdown_table(["Point", "Kind", "Setting", "Worst-case AUC",
                                  str(section.get("utility_metric")), "Pareto"], body))
    if figure:
        lines += ["", f"![privacy-utility]({figure})"]
    return "\n".join(lines)
