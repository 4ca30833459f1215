"""The results of an audit as one typed record (`AuditResults`, what results.json holds), built
here from what the stages stored and rendered by `raydefense.report`, which loads no model and
computes no choice: every choice (the worst case, the trade-off, the suite's coverage) is made
in this layer, on calibration metrics."""

from __future__ import annotations

from typing import Any, Optional, TypedDict

import pyarrow as pa

from raydefense.attacks.base import FAMILIES
from raydefense.audit.results import paired_auc_gain
from raydefense.audit.selection import suite_coverage, tradeoff

# The plan summary keys results.json carries under "data".
DATA_KEYS = (
    "num_members",
    "num_nonmembers",
    "shard_sizes",
    "image_shape",
    "duplicates_dropped",
    "split_file",
)


class AuditResults(TypedDict, total=False):
    """results.json. Always present: experiment, seed (the training seed), dataset, data (the
    plan's summary, DATA_KEYS), config_fingerprint, versions, timings (stage -> seconds),
    attacks (one row per target x attack x setting, `audit.results.metric_rows`), quality
    (utility rows), skipped (pairs an access level could not serve), shadows, references,
    privacy (target -> its worst case, chosen on calibration), privacy_utility (the trade-off
    points and front), suite (the attack families covered and the variants left out), defenses
    (target -> what it cost to train and the accountant's epsilon of DP-SGD,
    `audit.defenses`). When they apply: audit (imported models and their digests),
    text_to_image (the caption-setting table), seeds (the training-seed study)."""

    experiment: str
    seed: int
    dataset: str
    data: dict[str, Any]
    config_fingerprint: str
    versions: dict[str, str]
    timings: dict[str, float]
    attacks: list[dict[str, Any]]
    quality: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    shadows: dict[str, Any]
    references: dict[str, Any]
    audit: dict[str, Any]
    privacy: dict[str, dict[str, Any]]
    privacy_utility: dict[str, Any]
    suite: dict[str, Any]
    defenses: dict[str, dict[str, Any]]
    text_to_image: dict[str, Any]
    seeds: dict[str, Any]


def assemble_results(
    base: AuditResults,
    scores: pa.Table,
    attack_sweep: Optional[dict[str, Any]],
    training_sweep: Optional[dict[str, Any]],
    variants_left_out: list[str],
    bootstrap: int,
    seed: int,
) -> AuditResults:
    """The audit's results: `base` (what the stages stored: the run's identity, rows, quality,
    skips, shadows, references) with every choice made on calibration added: the worst case
    per target and the privacy-utility trade-off (with the sweeps of exactly these models, if
    any), the suite's coverage, and what the reference, population and combined attacks add
    over the rest on the same test rows (`gain_over_without_calibrated`, a paired bootstrap
    over `scores`)."""
    results = AuditResults(**base)
    chosen = tradeoff(results, attack_sweep, training_sweep)
    results["privacy"], results["privacy_utility"] = chosen["privacy"], chosen["privacy_utility"]
    results["suite"] = suite_coverage(
        results["attacks"], FAMILIES, variants_left_out, results["references"]
    )
    for t, entry in results["privacy"].items():
        old = entry.get("without_calibrated")
        if old and entry.get("source") == old.get("source") == "evaluate":
            entry["gain_over_without_calibrated"] = paired_auc_gain(
                scores, t, entry, old, bootstrap, seed
            )
    return results
