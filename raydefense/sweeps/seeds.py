"""Seed study: the same config over several `seed` values (each re-draws the split and retrains
every model), aggregated as the mean ± its standard error with the per-seed values.

A bootstrap CI in results.json resamples the test rows of one run; it says nothing about how much
the numbers move when the models are trained again from another seed. `raydefense seeds` runs the
pipeline once per seed (each seed in its own experiment, see `seed_experiment`) and summarises
every (target, attack line) and every target's worst case over the seeds:

    <root>/<base experiment>/seeds/summary.json, summary.md

Plain Python and NumPy (no Ray): `seed_runs` plans the study's runs and `aggregate_seeds`
summarises them; the `seeds` command (`raydefense.commands`) runs them in between.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np

from raydefense import layout
from raydefense.config import load_config
from raydefense.console import result
from raydefense.errors import ConfigError, RaydefenseError
from raydefense.report.markdown import headline_rows, is_number, short_params
from raydefense.report.seed_tables import QUALITY_METRICS, plus_minus, privacy_rows, seeds_markdown
from raydefense.roster import sort_targets
from raydefense.run.session import absolutize
from raydefense.storage import Storage

log = logging.getLogger("raydefense")

METRICS = (
    "auc",
    "auc_calibration",
    "tpr_at_1pct_fpr",
    "tpr_at_1pct_fpr_calibrated",
    "fpr_at_1pct_fpr_calibrated",
    "asr_calibrated",
)
RESULTS = layout.RESULTS
# Utility metrics whose ratio to the seed's own baseline the summary gives per seed.
RATIO_METRICS = ("domain_fid", "heldout_eps_mse")
SUMMARY_DIR = layout.SEEDS


# ----------------------------------------------------------------------------- seeds and names


def seed_experiment(experiment: str, base_seed: int, seed: int) -> str:
    """The experiment one seed runs in: the base seed keeps the config's experiment (so a seed
    study after `raydefense run` reuses its work), any other seed `<experiment>-seed<seed>`."""
    return experiment if int(seed) == int(base_seed) else f"{experiment}-seed{int(seed)}"


def replaced_seed_warning(storage: Storage, seed: int) -> Optional[str]:
    """A warning when `storage` (an experiment) holds a finished run of another training seed,
    which a run of `seed` there replaces (the seed is in every fingerprint, not in the
    experiment's name); None otherwise. `raydefense seeds` gives each seed its own experiment."""
    if not storage.exists(RESULTS):
        return None
    made_with = storage.read_json(RESULTS).get("seed")
    if made_with is None or int(made_with) == int(seed):
        return None
    return (
        f"{storage.uri('')} holds seed {made_with}'s finished run; this run of seed {seed} "
        f"replaces its models and results: to keep both, add --set experiment="
        f"{storage.experiment}-seed{int(seed)} (the name `raydefense seeds` gives seed {seed})"
    )


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" or "0 1 2" (or a mix) -> [0, 1, 2], in the order given.

    Raises:
        ConfigError: one line, for an empty list, a non-integer or negative seed, a duplicate,
            or fewer than 2 seeds.
    """
    parts = [p for p in re.split(r"[,\s]+", str(text).strip()) if p]
    if not parts:
        raise ConfigError("--seeds is empty; give the training seeds, e.g. --seeds 0,1,2")
    seeds: list[int] = []
    for p in parts:
        try:
            s = int(p)
        except ValueError:
            raise ConfigError(
                f"--seeds: {p!r} is not an integer; give whole numbers, e.g. --seeds 0,1,2"
            ) from None
        if s < 0:
            raise ConfigError(f"--seeds: {s} is negative; seeds must be >= 0, e.g. --seeds 0,1,2")
        if s in seeds:
            raise ConfigError(f"--seeds: seed {s} is given twice; list each seed once")
        seeds.append(s)
    if len(seeds) < 2:
        raise ConfigError(
            f"a seed study needs at least 2 seeds (got {len(seeds)}); e.g. --seeds 0,1,2"
        )
    return seeds


# ----------------------------------------------------------------------------- aggregation


def _number(value: Any) -> Optional[float]:
    """A finite number as float; None for None, non-numbers, bools and NaN/inf."""
    if not is_number(value):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


# A 95% percentile bootstrap CI spans about 2 x 1.96 standard errors.
Z95 = 1.959964


def _stat(
    values: Sequence[Optional[float]], boot_se: Sequence[Optional[float]] = ()
) -> dict[str, Any]:
    """{"mean", "sd" (sample, ddof=1; None for fewer than 2 values), "se", "n", "values"} over
    the values that are not None; `values` keeps the Nones, aligned with the entry's seeds.

    "se": the standard error of the mean over seeds, sqrt(max(sd^2, mean boot_se^2) / n). Every
    seed re-draws the split and retrains, so its value carries the row-sampling error its own
    bootstrap measures (`boot_se`, per seed) besides the training variation; with few seeds the
    sample sd can fall far below that floor, so the larger of the two is used. Without
    bootstrap errors: sd / sqrt(n)."""
    xs = [v for v in values if v is not None]
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    boots = [b for b in boot_se if b is not None]
    var = max(sd**2 if sd is not None else 0.0, float(np.mean(np.square(boots))) if boots else 0.0)
    se = math.sqrt(var / len(xs)) if xs and (sd is not None or boots) else None
    return {
        "mean": float(np.mean(xs)) if xs else None,
        "sd": sd,
        "se": se,
        "n": len(xs),
        "values": list(values),
    }


def _boot_se(row: Mapping[str, Any]) -> Optional[float]:
    """The bootstrap standard error of a row's AUC from its 95% CI (None without one)."""
    w = _ci_width(row)
    return None if w is None else w / (2 * Z95)


def _attack_text(entry: Mapping[str, Any]) -> Optional[str]:
    """ "attack (setting)" of a worst-case entry, e.g. "pia (t=200)"; None without an attack."""
    if entry.get("attack") is None:
        return None
    params = entry.get("params")
    setting = short_params(params) if params not in (None, {}) else ""
    text = f"{entry['attack']} ({setting})" if setting else str(entry["attack"])
    return text + (" (flipped)" if entry.get("orientation") == -1 else "")


def _aggregate_entry(entries: Sequence[tuple[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """One privacy entry (a target's worst case) over the seeds that have it: per-seed attack
    texts, mean/sd of every numeric field, nested dicts (e.g. `black_box`) recursively. The
    score `orientation` (+1/-1, a sign, not a metric) is kept per seed as `orientations`."""
    out: dict[str, Any] = {
        "seeds": [s for s, _ in entries],
        "n_seeds": len(entries),
        "attacks": [_attack_text(e) for _, e in entries],
    }
    if any("orientation" in e for _, e in entries):
        out["orientations"] = [e.get("orientation") for _, e in entries]
    numeric: list[str] = []
    nested: list[str] = []
    for _, e in entries:
        for k, v in e.items():
            if k in ("params", "orientation", "seeds", "n_seeds", "attacks", "orientations"):
                continue
            if is_number(v) and k not in numeric:
                numeric.append(k)
            elif isinstance(v, Mapping) and k not in nested:
                nested.append(k)
    for k in numeric:
        if k in nested:
            continue  # a number in one seed and a dict in another: not comparable
        boots = [_boot_se(e) for _, e in entries] if k == "auc" else []
        out[k] = _stat([_number(e.get(k)) for _, e in entries], boots)
    for k in nested:
        if k in numeric:
            continue
        sub = [(s, e[k]) for s, e in entries if isinstance(e.get(k), Mapping)]
        out[k] = _aggregate_entry(sub)
    return out


def _ci_width(row: Mapping[str, Any]) -> Optional[float]:
    ci = row.get("auc_ci")
    if not isinstance(ci, Sequence) or isinstance(ci, str) or len(ci) != 2:
        return None
    lo, hi = _number(ci[0]), _number(ci[1])
    return None if lo is None or hi is None else hi - lo


def aggregate(results_by_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Summarise several seeds' report/results.json over the training seeds.

    Args:
        results_by_seed: seed -> that seed's results.json dict.
    Returns:
        A JSON-serialisable dict (string keys throughout, so it reads back unchanged):
        {"seeds": [sorted seeds], "experiments": {"<seed>": experiment},
         "attacks": [{"target", "line", "attack", "seeds" (those that have the line),
                      "n_seeds", "settings" (per seed in `seeds`), and per metric of METRICS
                      that is a number in some seed: {"mean", "sd", "n", "values"}}],
         "privacy": {target: {"seeds", "n_seeds", "attacks" (per seed "attack (setting)",
                              "(flipped)" appended for orientation -1), "orientations" (per
                              seed, when the entries have one),
                              every other numeric field: {"mean", "sd", "n", "values"},
                              nested dicts (e.g. "black_box"): the same shape, recursively}},
         "quality": {target: {metric of QUALITY_METRICS: {"mean", "sd", "n", "values"}}},
         "utility_ratio": {target: {metric of RATIO_METRICS: per-seed target / baseline}},
         "bootstrap_ci_width": {target: {line: mean over seeds of auc_ci[1] - auc_ci[0]}},
         "utility_metric": the privacy-utility trade-off's metric (None without one),
         "defenses": `aggregate_defenses`}
        Every stat also has "se" (`_stat`: the standard error of the mean over seeds, with
        each seed's bootstrap error as its floor for AUCs).
        `values` lists are aligned with the entry's `seeds` (None where a seed lacks the metric);
        mean/sd/n use the seeds that have it; sd is the sample sd (ddof=1), None for one value.
        Targets and lines are the union over the seeds.
    """
    if not results_by_seed:
        raise ConfigError("no seed results to aggregate; give at least 2 seeds")
    seeds = sorted(int(s) for s in results_by_seed)
    res = {int(s): r for s, r in results_by_seed.items()}

    heads: dict[int, dict[tuple[str, str], dict[str, Any]]] = {}
    lines: dict[str, None] = {}
    targets: dict[str, None] = {}
    for s in seeds:
        index: dict[tuple[str, str], dict[str, Any]] = {}
        for row in headline_rows(list(res[s].get("attacks") or [])):
            key = (str(row.get("target")), str(row["line"]))
            index.setdefault(key, row)
            lines.setdefault(key[1])
            targets.setdefault(key[0])
        heads[s] = index

    attacks: list[dict[str, Any]] = []
    widths: dict[str, dict[str, float]] = {}
    for t in sort_targets(targets):
        for line in lines:
            have = [(s, heads[s][(t, line)]) for s in seeds if (t, line) in heads[s]]
            if not have:
                continue
            entry: dict[str, Any] = {
                "target": t,
                "line": line,
                "attack": str(have[0][1].get("attack")),
                "seeds": [s for s, _ in have],
                "n_seeds": len(have),
                "settings": [r.get("setting") for _, r in have],
            }
            for m in METRICS:
                values = [_number(r.get(m)) for _, r in have]
                if any(v is not None for v in values):
                    boots = [_boot_se(r) for _, r in have] if m == "auc" else []
                    entry[m] = _stat(values, boots)
            attacks.append(entry)
            ws = [w for w in (_ci_width(r) for _, r in have) if w is not None]
            if ws:
                widths.setdefault(t, {})[line] = float(np.mean(ws))

    privacy_targets = sort_targets(str(t) for s in seeds for t in (res[s].get("privacy") or {}))
    privacy = {}
    for t in privacy_targets:
        entries = [
            (s, res[s]["privacy"][t])
            for s in seeds
            if isinstance((res[s].get("privacy") or {}).get(t), Mapping)
        ]
        if entries:
            privacy[t] = _aggregate_entry(entries)

    quality: dict[str, dict[str, Any]] = {}
    for t in sort_targets(str(q.get("target")) for s in seeds for q in res[s].get("quality") or []):
        for m in QUALITY_METRICS:
            values = [
                next(
                    (
                        _number(q.get("value"))
                        for q in res[s].get("quality") or []
                        if q.get("target") == t and q.get("metric") == m
                    ),
                    None,
                )
                for s in seeds
            ]
            if any(v is not None for v in values):
                quality.setdefault(t, {})[m] = _stat(values)

    # Each target's utility against its own seed's baseline (the seed re-draws both), per seed.
    ratios: dict[str, dict[str, Any]] = {}
    base = quality.get("baseline", {})
    for t, metrics in quality.items():
        if t == "baseline":
            continue
        for m, st in metrics.items():
            if m not in RATIO_METRICS or m not in base:
                continue
            per_seed = [
                None if v is None or b is None or b == 0 else v / b
                for v, b in zip(st["values"], base[m]["values"])
            ]
            if any(r is not None for r in per_seed):
                ratios.setdefault(t, {})[m] = _stat(per_seed)

    return {
        "seeds": seeds,
        "experiments": {str(s): res[s].get("experiment") for s in seeds},
        "attacks": attacks,
        "privacy": privacy,
        "quality": quality,
        "utility_ratio": ratios,
        "bootstrap_ci_width": widths,
        "utility_metric": next(
            (
                (res[s].get("privacy_utility") or {}).get("utility_metric")
                for s in seeds
                if (res[s].get("privacy_utility") or {}).get("utility_metric")
            ),
            None,
        ),
        "defenses": aggregate_defenses({s: res[s] for s in seeds}),
    }


def _on_front(results: Mapping[str, Any], target: str) -> Optional[bool]:
    """Whether the target is on a run's privacy-utility front (None: not a point of it)."""
    for p in (results.get("privacy_utility") or {}).get("points", []):
        if p.get("kind") == "target" and p.get("label") == target:
            return bool(p.get("pareto"))
    return None


def aggregate_defenses(results_by_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The defenses side by side over seeds (results.json `defenses` and the trade-off's front):
    {target: {"seeds" (those with a record), "n_seeds", "front": per seed of the study True /
    False / None (not a point), "train_seconds", "cpu_seconds": over the seeds whose record is
    complete, "accountant_epsilon", "delta": over the seeds whose target trained with DP-SGD
    (absent for a target that never did)}}. Stats as `_stat` (no bootstrap floors), their
    `values` aligned with the entry's `seeds` (None where a seed lacks the number).
    Privacy and utility are in the summary's `privacy` and `quality`."""
    seeds = sorted(results_by_seed)
    names = sort_targets(
        {str(t) for s in seeds for t in (results_by_seed[s].get("defenses") or {})}
    )
    out: dict[str, Any] = {}
    for t in names:
        have = [
            (s, results_by_seed[s]["defenses"][t])
            for s in seeds
            if isinstance((results_by_seed[s].get("defenses") or {}).get(t), Mapping)
        ]
        entry: dict[str, Any] = {
            "seeds": [s for s, _ in have],
            "n_seeds": len(have),
            "front": [_on_front(results_by_seed[s], t) for s in seeds],
        }
        for key in ("train_seconds", "cpu_seconds"):
            values = [_number(d.get(key)) if d.get("complete") else None for _, d in have]
            if any(v is not None for v in values):
                entry[key] = _stat(values)
        dps = [d.get("dp") for _, d in have]
        if any(isinstance(dp, Mapping) for dp in dps):
            for key, field in (("accountant_epsilon", "epsilon"), ("delta", "delta")):
                entry[key] = _stat(
                    [_number(dp.get(field)) if isinstance(dp, Mapping) else None for dp in dps]
                )
        out[t] = entry
    return out


# ----------------------------------------------------------------------------- presentation


def summary_text(summary: Mapping[str, Any], where: str) -> str:
    """What the CLI prints: where the files are and each target's worst-case AUC mean ± se."""
    seeds = list(summary.get("seeds", []))
    lines = [
        f"raydefense: seed study over seeds {', '.join(map(str, seeds))}: results in "
        f"{where}/ (summary.json, summary.md)",
        "  worst-case AUC per target (mean ± standard error over seeds; each seed re-draws "
        "the split and retrains; per-seed values in brackets):",
    ]
    privacy = summary.get("privacy", {})
    for t in sort_targets(privacy):
        for label, e in privacy_rows(t, privacy[t], len(seeds)):
            lines.append(f"  {label:<20} {plus_minus(e.get('auc'), len(seeds))}")
    if not privacy:
        lines.append("  (no worst-case entries in the seeds' results)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the command


def _command_text(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Sequence[str],
    seeds: Sequence[int],
) -> str:
    argv = ["raydefense", "seeds"]
    for name in [preset] if isinstance(preset, str) else list(preset or []):
        argv += ["--preset", name]
    if config:
        argv += ["--config", config]
    for o in overrides:
        argv += ["--set", o]
    return shlex.join(argv + ["--seeds", ",".join(map(str, seeds))])


def seed_runs(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Optional[list[str]],
    seeds: Sequence[int] | str,
) -> list[tuple[int, list[str]]]:
    """The study's runs: per seed (checked: `parse_seeds`), the overrides of its `run` (the
    user's, then `seed` and the seed's experiment, `seed_experiment`). The config's own `seed`
    and `experiment` are the base.

    Raises:
        ConfigError: bad seeds or config.
    """
    seeds = _seeds(seeds)
    overrides = list(overrides or [])
    cfg = absolutize(load_config(preset, config, overrides))
    return [
        (s, overrides + [f"seed={s}", f"experiment={json.dumps(e)}"])
        for s, e in ((s, seed_experiment(cfg.experiment, cfg.seed, s)) for s in seeds)
    ]


def _seeds(seeds: Sequence[int] | str) -> list[int]:
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    return parse_seeds(",".join(str(s) for s in seeds))


def _write_defenses_plot(base: Storage, summary: Mapping[str, Any]) -> None:
    """seeds/defenses.png: the defenses over seeds (`plot_defenses_over_seeds`)."""
    import tempfile

    from raydefense.report.tradeoff import DEFENSES_SEEDS_PNG, plot_defenses_over_seeds

    with tempfile.TemporaryDirectory(prefix="raydefense-seeds-") as tmp:
        path = f"{tmp}/{DEFENSES_SEEDS_PNG}"
        if plot_defenses_over_seeds(summary, path):
            with open(path, "rb") as fh:
                base.write_bytes(f"{SUMMARY_DIR}/{DEFENSES_SEEDS_PNG}", fh.read())


def aggregate_seeds(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Optional[list[str]],
    seeds: Sequence[int] | str,
) -> dict[str, Any]:
    """Read every seed's report/results.json, write seeds/summary.json and summary.md under the
    base experiment and print a short summary (`raydefense seeds` runs the seeds first, unless
    --aggregate-only, and re-renders the base report after).

    Raises:
        ConfigError: bad seeds or config.
        RaydefenseError: a seed has no results.json yet.
    """
    seeds = _seeds(seeds)
    overrides = list(overrides or [])
    cfg = absolutize(load_config(preset, config, overrides))
    results: dict[int, Any] = {}
    for s in seeds:
        storage = Storage(cfg.storage.root, seed_experiment(cfg.experiment, cfg.seed, s))
        if not storage.exists(RESULTS):
            raise RaydefenseError(
                f"seed {s} has no results at {storage.uri(RESULTS)}; run "
                f"'{_command_text(preset, config, overrides, seeds)}' without --aggregate-only "
                "first"
            )
        results[s] = storage.read_json(RESULTS)
        made_with = results[s].get("seed")  # absent in results written before it was recorded
        if made_with is not None and int(made_with) != s:
            raise RaydefenseError(
                f"{storage.uri(RESULTS)} holds seed {made_with}'s results, not seed {s}'s; run "
                f"'{_command_text(preset, config, overrides, seeds)}' without --aggregate-only "
                f"to train seed {s} there"
            )
    summary = aggregate(results)
    base = Storage(cfg.storage.root, cfg.experiment)
    base.write_json(f"{SUMMARY_DIR}/summary.json", summary)
    base.write_bytes(f"{SUMMARY_DIR}/summary.md", (seeds_markdown(summary) + "\n").encode())
    if summary.get("defenses"):
        _write_defenses_plot(base, summary)
    result(summary_text(summary, base.uri(SUMMARY_DIR)))
    return summary
