"""Writes the report directory: results.json, report.md, report.html (self-contained), ROC plots
and sample grids.

The writer works on a LOCAL directory; uploading it to the storage root or MLflow is the caller's
job. Every file is first written under a hidden temporary name in the same directory and then
renamed into place, so a reader never sees a half-written file. Figures are written before
results.json and report.md, so that when report.md appears every image it links exists.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Optional

import numpy as np

from raydefense.report.html import markdown_to_html
from raydefense.report.markdown import (
    operating_points_markdown,
    paper_comparison_markdown,
    paper_table_markdown,
    params_key,
    quality_table_markdown,
    sweep_tables_markdown,
    timings_table_markdown,
)
from raydefense.report.plots import plot_roc, save_image_grid
from raydefense.roster import sort_targets

REQUIRED_KEYS: tuple[str, ...] = (
    "experiment",
    "config_fingerprint",
    "versions",
    "timings",
    "attacks",
    "quality",
)
REQUIRED_ATTACK_KEYS: tuple[str, ...] = (
    "target",
    "attack",
    "params",
    "auc",
    "tpr_at_1pct_fpr",
    "tpr_rule",
    "n_members",
    "n_nonmembers",
)
REQUIRED_QUALITY_KEYS: tuple[str, ...] = ("target", "metric", "value")

HOW_TO_READ = (
    '**How to read.** Each attack scores every evaluation image; higher means "more likely a '
    'training member". AUC is threshold-free: 0.5 is chance and 1.0 is a perfect attack, so for '
    "a defense, closer to 0.5 is better. TPR@1%FPR is the fraction of members the attack finds "
    "while wrongly flagging at most 1% of non-members; lower TPR@1%FPR means better privacy. "
    "ASR (calibrated) uses a threshold chosen on the calibration split and is reported on the "
    "disjoint test split; ASR (oracle) picks the best threshold on the reported data itself and "
    "is an optimistic upper bound for the attacker. Every choice (an attack's sign, a threshold, "
    "a best setting, the worst case, a Pareto front) is made on the calibration split; the test "
    "split only scores it. Bracketed ranges are 95% bootstrap confidence intervals over test "
    "rows; they do not cover training-seed variation (see the training-seed study when present)."
)


def validate_results(results: Mapping[str, Any]) -> None:
    """Checks the results.json contract (DESIGN.md) before anything is written.

    Raises:
        ValueError: naming the first missing key (and which row lacks it), a non-list
            attacks/quality section, or a repeated (target, attack, params) row.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a dict, got {type(results).__name__}")
    for key in REQUIRED_KEYS:
        if key not in results:
            raise ValueError(f"results is missing required key {key!r}")
    if not isinstance(results["timings"], Mapping):
        raise ValueError("results['timings'] must be a dict {stage: seconds}")
    for section, required in (
        ("attacks", REQUIRED_ATTACK_KEYS),
        ("quality", REQUIRED_QUALITY_KEYS),
    ):
        rows = results[section]
        if not isinstance(rows, (list, tuple)):
            raise ValueError(
                f"results[{section!r}] must be a list of rows, got {type(rows).__name__}"
            )
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise ValueError(
                    f"results[{section!r}][{i}] must be a dict, got {type(row).__name__}"
                )
            for key in required:
                if key not in row:
                    ident = ", ".join(
                        f"{k}={row[k]!r}" for k in ("target", "attack", "metric") if k in row
                    )
                    raise ValueError(
                        f"results[{section!r}][{i}] ({ident}) is missing required key {key!r}"
                    )
    seen: set[tuple[str, str, str]] = set()
    for i, row in enumerate(results["attacks"]):
        setting = (str(row["target"]), str(row["attack"]), params_key(row["params"]))
        if setting in seen:
            # The contract is one row per (target, attack setting); a repeat is an upstream bug.
            raise ValueError(
                f"results['attacks'][{i}] repeats target={row['target']!r}, "
                f"attack={row['attack']!r} with the same params"
            )
        seen.add(setting)


def safe_filename(label: str) -> str:
    """A filename-safe form of a label: [A-Za-z0-9._-] only, never empty or hidden."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(label)).strip("._")
    return safe or "unnamed"


def _unique_names(labels: list[str], prefix: str) -> dict[str, str]:
    """label -> f"{prefix}{safe}.png", suffixing _2, _3, ... when two labels collide."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for label in labels:
        base = f"{prefix}{safe_filename(label)}"
        name, k = f"{base}.png", 2
        while name.lower() in used:  # case-insensitive: some file systems fold case
            name, k = f"{base}_{k}.png", k + 1
        used.add(name.lower())
        names[label] = name
    return names


def _atomic_write(out_dir: str, name: str, write: Callable[[str], None]) -> str:
    """Calls write(tmp_path) for a temp file in out_dir, then renames it to out_dir/name."""
    final = os.path.join(out_dir, name)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the report is meant to be shared
        os.replace(tmp, final)  # atomic on POSIX within one directory
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return final


def _json_default(value: Any) -> Any:
    """NumPy scalars and arrays become their Python equivalents (values unchanged)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"results contains a {type(value).__name__}, which JSON cannot encode")


def _write_text(text: str) -> Callable[[str], None]:
    def write(path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return write


QUALITY_NOTE = (
    "domain_* metrics use the penultimate features / softmax of a small classifier trained on "
    "spare pool rows that no target trains on and no attack audits (domain_classifier_rows of "
    "them; a stand-in for Inception on small datasets such as digits; not comparable to "
    "published FID/IS); domain FID compares with the non-member set. mmd_member_gap / "
    "mmd_p_value: a distribution-level membership check (arXiv 2502.02970): kernel MMD^2 of the "
    "generated samples to the non-members minus to the members (domain features, else pixels; "
    "positive = the samples sit closer to the training set), with a permutation p-value over "
    "member/non-member labels. fid / inception_score appear only when quality.inception_weights "
    "points at local Inception weights. memorization_*: Carlini et al. 2023's ratio of the l2 "
    "distance to the nearest training image over the mean distance to the k nearest; "
    "memorized_count counts generated images under the threshold. heldout_eps_mse: "
    "eps-prediction MSE on non-member test images (lower is better)."
)


PRIVACY_NOTE = (
    "Per target, the strongest attack over everything this experiment ran (the evaluate stage "
    "and, where one exists over the same models, the attack sweep), including attacks whose "
    "scores must be flipped and DualMD's router-aware adaptive attack, chosen by its AUC on the "
    "calibration split; the AUC and TPR shown are on the disjoint test split. This is the "
    "privacy number to quote, for the access level in its row."
)


def _rules(results: Mapping[str, Any]) -> str:
    rules = list(dict.fromkeys(str(r["tpr_rule"]) for r in results["attacks"] if r.get("tpr_rule")))
    return "\n".join(f"*TPR@FPR rule:* {rule}" for rule in rules)


def _meta_lines(results: Mapping[str, Any]) -> list[str]:
    lines = []
    data = results.get("data")
    if isinstance(data, Mapping) and data:
        shape = "x".join(str(v) for v in data.get("image_shape", []))
        split = os.path.basename(str(data["split_file"])) if data.get("split_file") else "seeded"
        lines.append(
            f"- Data: `{results.get('dataset', '?')}` {shape}, "
            f"{data.get('num_members', '?')} members (shards "
            f"{data.get('shard_sizes', '?')}) vs {data.get('num_nonmembers', '?')} "
            f"non-members, split {split}, exact duplicates dropped: "
            f"{data.get('duplicates_dropped', 0)}"
        )
    audit = results.get("audit")
    if isinstance(audit, Mapping) and audit.get("models"):
        lines.append(
            "- Audited models (imported, not trained here): "
            + ", ".join(
                f"**{role}** `{m['source']}` (sha256 `{str(m['sha256'])[:12]}`)"
                for role, m in audit["models"].items()
            )
        )
    if results.get("seed") is not None:
        lines.append(f"- Training seed: {results['seed']}")
    lines.append(f"- Config fingerprint: `{results['config_fingerprint']}`")
    versions = results["versions"]
    if isinstance(versions, Mapping) and versions:
        lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    elif versions:
        lines.append(f"- Versions: {versions}")
    return lines


def _privacy_parts(results: Mapping[str, Any], figure: Optional[str]) -> list[str]:
    """The defender's worst case per target and the privacy-utility trade-off (when
    results.json has them: raydefense.report.tradeoff)."""
    if "privacy" not in results:
        return []
    from raydefense.report.tradeoff import (
        defenses_markdown,
        privacy_markdown,
        suite_markdown,
        tradeoff_markdown,
    )

    parts = [
        "## Privacy: the defender's worst case",
        "",
        PRIVACY_NOTE,
        "",
        privacy_markdown(results["privacy"]),
        "",
    ]
    if results.get("suite"):
        parts += [suite_markdown(results["suite"]), ""]
    if results.get("privacy_utility"):
        parts += [
            "## Privacy-utility trade-off",
            "",
            tradeoff_markdown(results["privacy_utility"], figure),
            "",
        ]
    if results.get("defenses"):
        parts += ["## Defenses side by side", "", defenses_markdown(results), ""]
    return parts


SHADOW_NOTE = (
    "Attacks that learn from shadow models (GSA) fit their classifier on shadows trained like "
    "the target they attack (`attacks.shadow.regime`): like the baseline on a whole draw of "
    "rows disjoint from the targets', like a teacher on one of K shards of it, or a student "
    "distilled from shadow teachers."
)


def _shadow_parts(results: Mapping[str, Any]) -> list[str]:
    """Which shadow models each target's shadow-trained attacks learned from."""
    shadows = results.get("shadows")
    if not shadows:
        return []
    lines = ["### Shadow models", "", SHADOW_NOTE, ""]
    for target, s in shadows.items():
        models = ", ".join(
            f"`{m}` ({c['members']} members / {c['heldout']} held out)"
            for m, c in s["models"].items()
        )
        lines.append(f"- **{target}** ({', '.join(s['attacks'])}): {s['regime']}-like: {models}")
    return lines + [""]


def _t2i_parts(results: Mapping[str, Any]) -> list[str]:
    """The text-to-image table (model.kind=sd runs; both caption settings after
    `raydefense promptdiv`)."""
    if not results.get("text_to_image"):
        return []
    from raydefense.report.text_to_image import t2i_markdown

    return ["## Text-to-image", "", t2i_markdown(results["text_to_image"]), ""]


def _seed_parts(results: Mapping[str, Any]) -> list[str]:
    """The training-seed study (`raydefense seeds`), when this experiment is its base."""
    if not results.get("seeds"):
        return []
    from raydefense.report.seed_tables import seeds_markdown

    return [seeds_markdown(results["seeds"]), ""]


def render_report_markdown(
    results: Mapping[str, Any],
    roc_files: Mapping[str, str],
    sample_files: Mapping[str, str],
    figure: Optional[str] = None,
) -> str:
    """The text of report.md.

    Args:
        results: a validated results dict.
        roc_files: attack label -> ROC PNG file name (relative to the report directory).
        sample_files: target -> sample-grid PNG file name.
        figure: the privacy-utility PNG file name, if one was drawn.
    """
    parts = [
        f"# Membership-inference report: {results['experiment']}",
        "",
        *_meta_lines(results),
        "",
        HOW_TO_READ,
        "",
        *_privacy_parts(results, figure),
        *_t2i_parts(results),
        *_seed_parts(results),
        "## Attacks",
        "",
        paper_table_markdown(list(results["attacks"]), list(results.get("skipped", []))),
        "",
        "### Operating points",
        "",
        operating_points_markdown(list(results["attacks"])),
        "",
        _rules(results),
        "",
        *_shadow_parts(results),
        "### Compared with the paper",
        "",
        paper_comparison_markdown(list(results["attacks"]), results.get("dataset")),
        "",
        "## Quality",
        "",
        QUALITY_NOTE,
        "",
        quality_table_markdown(list(results["quality"])),
        "",
        "## Attack sweeps",
        "",
        sweep_tables_markdown(list(results["attacks"])),
        "",
        "## Timings",
        "",
        timings_table_markdown(dict(results["timings"])),
        "",
    ]
    if roc_files:
        parts += ["## ROC curves", ""]
        for label, name in roc_files.items():
            parts += [f"### {label}", "", f"![roc]({name})", ""]
    if sample_files:
        parts += ["## Samples", ""]
        for target, name in sample_files.items():
            parts += [f"### {target}", "", f"![samples]({name})", ""]
    return "\n".join(parts)


def write_report(
    out_dir: str,
    results: Mapping[str, Any],
    roc_curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    sample_grids: dict[str, np.ndarray] | None = None,
) -> list[str]:
    """Writes the report files into the local directory `out_dir` (created if needed).

    Args:
        out_dir: local directory.
        results: the results.json dict (DESIGN.md, "Contracts users rely on"); validated first and
            written as given (NumPy scalars/arrays converted to plain JSON values).
        roc_curves: roc_curves[attack_label][target] = (fpr, tpr), 1-D arrays in [0, 1]; one
            roc_<attack_label>.png per attack label (label made filename-safe).
        sample_grids: target -> images [N, C, H, W] float in [-1, 1]; one samples_<target>.png each.
    Returns:
        Paths of the written files, in write order (figures, results.json, report.html,
        report.md).
    Raises:
        ValueError: the results dict breaks the contract (message names the missing key).
    """
    validate_results(results)
    # Serialize before touching the disk, so an unencodable value leaves no partial report.
    results_text = json.dumps(results, indent=2, default=_json_default) + "\n"
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []

    roc_curves = roc_curves or {}
    roc_files = _unique_names(list(roc_curves), "roc_")
    for label, name in roc_files.items():
        curves = roc_curves[label]
        written.append(
            _atomic_write(out_dir, name, functools.partial(plot_roc, curves, f"ROC: {label}"))
        )

    sample_grids = sample_grids or {}
    ordered_targets = sort_targets(list(sample_grids))
    sample_files = _unique_names(ordered_targets, "samples_")
    for target, name in sample_files.items():
        images = sample_grids[target]
        written.append(_atomic_write(out_dir, name, functools.partial(save_image_grid, images)))

    figure = None
    if results.get("privacy_utility", {}).get("points"):
        from raydefense.report.tradeoff import TRADEOFF_PNG, plot_tradeoff

        figure = TRADEOFF_PNG
        written.append(
            _atomic_write(out_dir, figure, lambda p: plot_tradeoff(results["privacy_utility"], p))
        )

    written.append(_atomic_write(out_dir, "results.json", _write_text(results_text)))
    report = render_report_markdown(results, roc_files, sample_files, figure)
    page = markdown_to_html(report, out_dir, f"raydefense report: {results['experiment']}")
    written.append(_atomic_write(out_dir, "report.html", _write_text(page)))
    written.append(_atomic_write(out_dir, "report.md", _write_text(report)))
    return written
