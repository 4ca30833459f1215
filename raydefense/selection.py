"""Selection rules of the audit, each defined once: the strongest attack per target (the
defender's worst case), the privacy-utility Pareto front, and the best trial of a sweep.

Every choice uses calibration-split metrics only (`auc_calibration`, `privacy_auc_calibration`):
test-split numbers are what gets reported for the chosen item, never what chooses it (DESIGN.md
invariant 5). Pure Python over plain dicts.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

SELECTION_KEY = "auc_calibration"
SELECTION_TEXT = ("chosen by calibration AUC (scores oriented on calibration); test-split "
                  "metrics reported")


def strongest_per_target(rows: Iterable[Mapping[str, Any]], key: str = SELECTION_KEY
                         ) -> dict[str, Mapping[str, Any]]:
    """Per target, the row with the highest `key` (a calibration metric); rows without it are
    passed over; ties keep the first row in input order."""
    best: dict[str, Mapping[str, Any]] = {}
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
        if not any((c <= a and d <= b) and (c < a or d < b) for j, (c, d) in enumerate(points)
                   if j != i):
            front.append(i)
    return front


def best_trial(trials: Sequence[Mapping[str, Any]]) -> Optional[Mapping[str, Any]]:
    """The most private completed trial by calibration AUC (utility breaks ties); None if none."""
    done = [t for t in trials if t.get("privacy_auc_calibration") is not None]
    if not done:
        return None
    return min(done, key=lambda t: (t["privacy_auc_calibration"], t["utility"]))
