"""Selection rules of the audit, each defined once: the strongest attack per target (the
defender's worst case), the privacy-utility Pareto front, and the best trial of a sweep.

Every choice uses calibration-split metrics only (`auc_calibration`, `privacy_auc_calibration`):
test-split numbers are what gets reported for the chosen item, never what chooses it (DESIGN.md
invariant 5). Pure Python over plain dicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional, TypeVar

from raydefense.attacks.metrics import empirical_epsilon
from raydefense.roster import sort_targets

Row = TypeVar("Row", bound=Mapping[str, Any])

SELECTION_KEY = "auc_calibration"
SELECTION_TEXT = (
    "chosen by calibration AUC (scores oriented on calibration); test-split metrics reported"
)
HEADLINE_TEXT = "the strongest attack in the suite, chosen on calibration"
# Families that calibrate a row against references or the population, and the combination that
# stacks them (#27): a worst case without them is what a suite of raw-statistic attacks reports.
CALIBRATED_FAMILIES = ("reference", "population", "combined")


def strongest_per_target(rows: Iterable[Row], key: str = SELECTION_KEY) -> dict[str, Row]:
    """Per target, the row with the highest `key` (a calibration metric); rows without it are
    passed over; ties keep the first row in input order."""
    best: dict[str, Row] = {}
    for r in rows:
        v = r.get(key)
        if v is None:
            continue
        cur = best.get(str(r["target"]))
        if cur is None or float(v) > float(cur[key]):
            best[str(r["target"])] = r
    return best


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points when both coordinates are minimised (a point is
    dominated when another is <= in both and < in one); in input order."""
    front = []
    for i, (a, b) in enumerate(points):
        if not any(
            (c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points) if j != i
        ):
            front.append(i)
    return front


def best_trial(trials: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The most private completed trial by calibration AUC (utility breaks ties); None if none."""
    done = [t for t in trials if t.get("privacy_auc_calibration") is not None]
    if not done:
        return None
    return min(done, key=lambda t: (t["privacy_auc_calibration"], selection_utility(t)))


def selection_utility(item: Mapping[str, Any], key: str = "utility") -> float:
    """The utility a choice reads: `<key>_calibration` (measured on calibration non-members,
    #27) when the item has it, else `<key>` (results from before it existed)."""
    v = item.get(f"{key}_calibration")
    return float(item[key] if v is None else v)


def _mean_sd(values: Sequence[float]) -> tuple[float, Optional[float]]:
    n = len(values)
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else None
    return mean, sd


def settings_over_seeds(trials: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Completed trials grouped by their grid values without `seed`: one setting per group,
    with its calibration and test worst-case AUC and its utility averaged over its seeds (sd
    with two seeds or more). A grid without `seed` gives one setting per trial. In first
    appearance order; `pareto` marks the front over (mean calibration AUC, mean utility)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for t in trials:
        if t.get("status", "completed") != "completed" or t.get("privacy_auc_calibration") is None:
            continue
        values = {k: v for k, v in t["values"].items() if k != "seed"}
        groups.setdefault(json.dumps(values, sort_keys=True, separators=(",", ":")), []).append(t)
    out = []
    for label, ts in groups.items():
        cal, _ = _mean_sd([float(t["privacy_auc_calibration"]) for t in ts])
        auc, auc_sd = _mean_sd([float(t["privacy_auc"]) for t in ts])
        util, util_sd = _mean_sd([float(t["utility"]) for t in ts])
        util_sel, _ = _mean_sd([selection_utility(t) for t in ts])
        # Each trial's utility against its own reference (the baseline of its seed), when all
        # of them measured one: as reported (test) and as chosen on (calibration).
        refs = [float(t["utility_reference"]) for t in ts if t.get("utility_reference")]
        ratio: tuple[Optional[float], Optional[float]] = (
            _mean_sd([float(t["utility"]) / r for t, r in zip(ts, refs)])
            if len(refs) == len(ts)
            else (None, None)
        )
        ratio_sel = (
            _mean_sd(
                [selection_utility(t) / selection_utility(t, "utility_reference") for t in ts]
            )[0]
            if len(refs) == len(ts)
            else None
        )
        out.append(
            {
                "setting": label,
                "values": json.loads(label),
                "trials": [t["key"] for t in ts],
                "seeds": [t["values"].get("seed") for t in ts],
                "privacy_auc_calibration": cal,
                "privacy_auc": auc,
                "privacy_auc_sd": auc_sd,
                "utility": util,
                "utility_sd": util_sd,
                "utility_ratio": ratio[0],
                "utility_ratio_sd": ratio[1],
                "utility_selection": util_sel,
                "utility_ratio_selection": ratio_sel,
            }
        )
    front = pareto_front([(s["privacy_auc_calibration"], s["utility_selection"]) for s in out])
    for i, s in enumerate(out):
        s["pareto"] = i in front
    return out


def recommend(
    settings: Sequence[Mapping[str, Any]],
    reference_utility: Optional[float],
    budget: float,
) -> dict[str, Any]:
    """The recommended setting: on the calibration-side front, the lowest mean calibration AUC
    among settings within the utility budget (utility lower = better): the mean of their trials'
    utility / utility_reference (each trial's own baseline) at most `budget`, or, for settings
    without per-trial references, mean utility at most `budget` x `reference_utility` (the
    experiment's undefended baseline). Test AUCs never choose, and utilities are read as
    measured on calibration non-members where the results have them (`selection_utility`).

    Returns {"key": the setting's label or None, "rule": one line, "within_budget": bool,
    "closest": the front setting nearest the budget when none is within it (else None)}."""
    front = [s for s in settings if s.get("pareto")]
    if not front:
        return {"key": None, "rule": "no completed trial", "within_budget": False, "closest": None}
    own = all(s.get("utility_ratio") is not None for s in front)

    def util(s: Mapping[str, Any]) -> float:
        return float(s.get("utility_selection", s["utility"]))

    if reference_utility is None and not own:
        best = min(front, key=lambda s: (s["privacy_auc_calibration"], util(s)))
        return {
            "key": best["setting"],
            "rule": "lowest calibration AUC on the front (no baseline utility to budget against)",
            "within_budget": False,
            "closest": None,
        }
    if own:
        ratio = {
            s["setting"]: float(s.get("utility_ratio_selection") or s["utility_ratio"])
            for s in front
        }
        rule = (
            f"lowest mean calibration AUC on the front with utility <= {budget:g} x the "
            "baseline's of the same trial (mean over seeds)"
        )
    else:
        assert reference_utility is not None
        ratio = {s["setting"]: util(s) / reference_utility for s in front}
        rule = (
            f"lowest mean calibration AUC on the front with utility <= {budget:g} x the "
            f"baseline's {reference_utility:.3f} (= {budget * reference_utility:.3f})"
        )
    ok = [s for s in front if ratio[s["setting"]] <= budget]
    if ok:
        best = min(ok, key=lambda s: (s["privacy_auc_calibration"], util(s)))
        return {"key": best["setting"], "rule": rule, "within_budget": True, "closest": None}
    closest = min(front, key=lambda s: ratio[s["setting"]])
    return {"key": None, "rule": rule, "within_budget": False, "closest": closest["setting"]}


UTILITY_PREFERENCE = ("domain_fid", "fid", "heldout_eps_mse")


BLACK_BOX_CLAIMS = ("dualmd",)


PRIVACY_FIELDS = (
    "auc_ci",
    "orientation",
    "tpr_at_1pct_fpr",
    "tpr_at_1pct_fpr_calibrated",
    "fpr_at_1pct_fpr_calibrated",
)


def operating_point_epsilon(row: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The epsilon an attack row's calibrated 1% operating point proves on the test rows
    (`attacks.metrics.empirical_epsilon`: Clopper-Pearson, 95%, delta = 0): {"lower", "point"},
    or None when the point is resolution-limited or the counts are missing."""
    tpr, fpr = row.get("tpr_at_1pct_fpr_calibrated"), row.get("fpr_at_1pct_fpr_calibrated")
    n_in, n_out = row.get("n_members"), row.get("n_nonmembers")
    if tpr is None or fpr is None or not n_in or not n_out:
        return None
    e = empirical_epsilon(round(tpr * n_in), int(n_in), round(fpr * n_out), int(n_out))
    return {"lower": e["epsilon_lower"], "point": e["epsilon_point"], "confidence": 0.95}


def _privacy_entry(row: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {
        "attack": row["attack"],
        "params": row.get("params", {}),
        "source": source,
        "access": row.get("access"),
        "auc": float(row["auc"]),
        "auc_calibration": float(row["auc_calibration"]),
        "family": row.get("family"),
        **{k: row.get(k) for k in PRIVACY_FIELDS},
        "empirical_epsilon": operating_point_epsilon(row),
    }


def worst_case_privacy(
    attack_rows: Sequence[Mapping[str, Any]], sweep: Optional[Mapping[str, Any]] = None
) -> dict[str, dict[str, Any]]:
    """Per target, the strongest attack by calibration AUC (`strongest_per_target`): {attack,
    params, source, access, auc, auc_calibration, orientation, tpr_at_1pct_fpr,
    tpr_at_1pct_fpr_calibrated, fpr_at_1pct_fpr_calibrated}. `sweep`: an attack sweep's
    results.json over the same models; its per-target worst case competes with the evaluate
    rows. A target in BLACK_BOX_CLAIMS (DualMD: its images are the paper's claim, its step router
    our gray-box extension) also gets `black_box`: the strongest black-box attack alone."""
    rows = [(r, "evaluate") for r in attack_rows]
    if sweep:
        rows += [
            ({**r, "target": t}, f"sweep {sweep.get('sweep')}")
            for t, r in sweep.get("worst_case", {}).items()
        ]
    rows = [
        (r, src)
        for r, src in rows
        if r.get("auc_calibration") is not None and r.get("auc") is not None
    ]
    source = {id(r): src for r, src in rows}
    best = {
        t: _privacy_entry(r, source[id(r)])
        for t, r in strongest_per_target(r for r, _ in rows).items()
    }
    black = strongest_per_target(r for r, _ in rows if r.get("access") == "black-box")
    for t, r in black.items():
        if t in BLACK_BOX_CLAIMS and t in best and best[t]["access"] != "black-box":
            best[t]["black_box"] = _privacy_entry(r, source[id(r)])
    # The same choice without the reference- and population-calibrated families and their
    # combination: how much the informed attacker adds over raw statistics (only where those
    # families ran).
    calibrated = {str(r["target"]) for r, _ in rows if r.get("family") in CALIBRATED_FAMILIES}
    raw = strongest_per_target(r for r, _ in rows if r.get("family") not in CALIBRATED_FAMILIES)
    for t, r in raw.items():
        if t in best and t in calibrated:
            best[t]["without_calibrated"] = _privacy_entry(r, source[id(r)])
    return best


def suite_coverage(
    attack_rows: Sequence[Mapping[str, Any]],
    families: Mapping[str, str],
    not_run: Sequence[str] = (),
    references: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """What the worst case was taken over: the families (`families`: name -> description, in
    order) with at least one attack row, their attacks, and what did not run: families not
    enabled, and `not_run` (variants left out, each line saying why). With `references`
    (results.json `references`), per target the reference models the calibrated attacks read:
    {target: {"offline": n, "online": n, "population_rows": z}}."""
    ran: dict[str, set[str]] = {}
    for r in attack_rows:
        if r.get("family"):
            ran.setdefault(str(r["family"]), set()).add(str(r["attack"]))
    return {
        "headline": HEADLINE_TEXT,
        "covered": [
            {"family": f, "description": d, "attacks": sorted(ran[f])}
            for f, d in families.items()
            if f in ran
        ],
        "not_covered": [f"{f}: {d} (not enabled)" for f, d in families.items() if f not in ran]
        + list(not_run),
        "reference_models": {
            t: {
                "offline": len(r.get("models", {})),
                "online": len(r.get("online", {}).get("models", {})),
                "population_rows": int(r.get("population_rows", 0)),
            }
            for t, r in (references or {}).items()
        },
    }


def utility_metric(quality: Sequence[Mapping[str, Any]]) -> Optional[str]:
    have = {q["metric"] for q in quality}
    return next((m for m in UTILITY_PREFERENCE if m in have), None)


def tradeoff(
    results: Mapping[str, Any],
    attack_sweep: Optional[Mapping[str, Any]] = None,
    training_sweep: Optional[Mapping[str, Any]] = None,
) -> dict[str, Any]:
    """results.json's `privacy` and `privacy_utility` sections.

    Returns {"privacy": {target: worst case}, "privacy_utility": {"utility_metric", "points":
    [{label, kind: target|trial, privacy_auc, utility, pareto, ...}], "attack_sweep",
    "training_sweep"}}."""
    worst = worst_case_privacy(results["attacks"], attack_sweep)
    metric = utility_metric(results["quality"])
    points: list[dict[str, Any]] = []
    if metric:
        values = {q["target"]: q["value"] for q in results["quality"] if q["metric"] == metric}
        on_cal = {
            q["target"]: q["value"]
            for q in results["quality"]
            if q["metric"] == f"{metric}_calibration"
        }
        for t in sort_targets(worst):
            if t in values:
                points.append(
                    {
                        "label": t,
                        "kind": "target",
                        "privacy_auc": worst[t]["auc"],
                        "privacy_auc_calibration": worst[t]["auc_calibration"],
                        "utility": float(values[t]),
                        **({"utility_calibration": float(on_cal[t])} if t in on_cal else {}),
                    }
                )
        # The front is chosen on calibration AUCs and calibration utilities; the plot shows the
        # test values it reports.
        front = pareto_front([(p["privacy_auc_calibration"], selection_utility(p)) for p in points])
        for i, p in enumerate(points):
            p["pareto"] = i in front
        for t in sort_targets(worst):  # a black-box-only claim: its own threat model, no front
            bb = worst[t].get("black_box")
            if bb and t in values:
                points.append(
                    {
                        "label": f"{t} (black-box)",
                        "kind": "black-box claim",
                        "privacy_auc": bb["auc"],
                        "privacy_auc_calibration": bb["auc_calibration"],
                        "utility": float(values[t]),
                        "pareto": False,
                    }
                )
    trials: list[dict[str, Any]] = []
    recommended: Optional[dict[str, Any]] = None
    if training_sweep and training_sweep.get("utility_metric") == metric:
        # Recommended against this report's own baseline (the sweep's reference otherwise).
        base = next((selection_utility(p) for p in points if p["label"] == "baseline"), None)
        settings = settings_over_seeds(training_sweep.get("trials", []))
        budget = float(training_sweep.get("utility_budget", 1.1))
        rec = recommend(settings, base, budget)
        chosen = next((s for s in settings if s["setting"] == rec["key"]), None)
        recommended = {
            **rec,
            "setting": chosen,
            "reference_utility": base,
            "utility_budget": budget,
        }
        for t in training_sweep.get("trials", []):
            if t.get("status") == "completed":
                trials.append(
                    {
                        "label": t["key"],
                        "kind": "trial",
                        "setting": t["setting"],
                        "privacy_auc": t["privacy_auc"],
                        "privacy_auc_calibration": t.get("privacy_auc_calibration"),
                        "utility": t["utility"],
                        "pareto": bool(t.get("pareto")),
                        "recommended": bool(chosen and t["key"] in chosen["trials"]),
                        "target": training_sweep.get("target"),
                    }
                )
    return {
        "privacy": worst,
        "privacy_utility": {
            "utility_metric": metric,
            "points": points + trials,
            "attack_sweep": attack_sweep.get("sweep") if attack_sweep else None,
            "training_sweep": (
                {
                    "name": training_sweep.get("sweep"),
                    "target": training_sweep.get("target"),
                    "utility_metric": training_sweep.get("utility_metric"),
                    "num_trials": training_sweep.get("num_trials"),
                    "num_stopped": training_sweep.get("num_stopped"),
                    "recommended": recommended,
                }
                if training_sweep
                else None
            ),
        },
    }
