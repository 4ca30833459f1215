"""What each target cost to train and the privacy its training proves: the side-by-side record
of the defenses (results.json `defenses`), read from the models' training records
(`models/<m>/training.json`) and the soft targets' completion markers.

A target's models: the baseline, a variant (`baseline_<name>`) and a teacher are one fit each;
DualMD is its K teachers; the student is its teachers, their labelling of its soft targets and
its own fit. The accountant's epsilon belongs to a DP-SGD fit; DualMD whose teachers all trained
with DP-SGD has the largest of theirs (the shards are disjoint: each image is in one teacher,
parallel composition); the student has none (its soft targets are computed on the members).
"""

from __future__ import annotations

from typing import Any, Optional

from raydefense import layout
from raydefense.roster import DUALMD, STUDENT
from raydefense.storage import Storage


def target_models(target: str, teachers: list[str]) -> list[str]:
    """The trained models a target is made of (its training cost is theirs)."""
    if target == DUALMD:
        return list(teachers)
    if target == STUDENT:
        return [*teachers, STUDENT]
    return [target]


def _read(storage: Storage, rel: str) -> Optional[dict[str, Any]]:
    if not storage.exists(rel):
        return None
    record: dict[str, Any] = storage.read_json(rel)
    return record


def defense_record(storage: Storage, target: str, teachers: list[str]) -> dict[str, Any]:
    """One target's record: {models, train_seconds, cpu_seconds, gpu_seconds, label_seconds
    (the student's soft targets; 0 otherwise), complete (every model has a training record:
    False for models trained before records existed, or imported), dp (the accountant's
    epsilon, delta and settings; None without DP-SGD)}. Seconds are wall seconds of the fits
    (`train_seconds`, summed) and CPU / GPU seconds (`training_record`)."""
    models = target_models(target, teachers)
    records = {m: _read(storage, layout.training_record(m)) for m in models}
    present = [r for r in records.values() if r is not None]
    label_seconds = 0.0
    if target == STUDENT:
        marker = _read(storage, layout.marker(layout.soft_targets_dir(STUDENT)))
        label_seconds = float((marker or {}).get("outputs", {}).get("seconds", 0.0))
    out: dict[str, Any] = {
        "models": models,
        "complete": len(present) == len(models),
        "train_seconds": sum(float(r["train_seconds"]) for r in present) + label_seconds,
        "cpu_seconds": sum(float(r["cpu_seconds"]) for r in present),
        "gpu_seconds": sum(float(r["gpu_seconds"]) for r in present),
        "label_seconds": label_seconds,
        "steps": {m: r["steps"] for m, r in records.items() if r is not None},
        "dp": None,
    }
    dps: list[dict[str, Any]] = [r["dp"] for r in present if r.get("dp")]
    if target != STUDENT and len(dps) == len(models):
        out["dp"] = dict(max(dps, key=lambda d: float(d["epsilon"])))
    return out


def defense_records(storage: Storage, targets: list[str], teachers: list[str]) -> dict[str, Any]:
    """`defense_record` of each target, by target name."""
    return {t: defense_record(storage, t, teachers) for t in targets}
