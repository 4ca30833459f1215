"""Training-seed study: seed names, --seeds parsing, aggregation, Markdown and the CLI path with
--aggregate-only (no Ray, no pipeline run)."""

from __future__ import annotations

import json
import math
import types

import pytest

from raydefense import commands
from raydefense.cli import main
from raydefense.errors import ConfigError
from raydefense.report.seed_tables import seeds_markdown
from raydefense.storage import Storage
from raydefense.sweeps.seeds import (
    METRICS,
    aggregate,
    parse_seeds,
    replaced_seed_warning,
    seed_experiment,
    summary_text,
)

# ----------------------------------------------------------------------------- parse / names


@pytest.mark.parametrize(
    "text, want",
    [("0,1,2", [0, 1, 2]), ("0 1 2", [0, 1, 2]), (" 3, 1 ,7 ", [3, 1, 7]), ("0,1", [0, 1])],
)
def test_parse_seeds_good(text, want):
    assert parse_seeds(text) == want


@pytest.mark.parametrize(
    "text, needle",
    [
        ("", "empty"),
        ("  ,", "empty"),
        ("0,x,2", "'x' is not an integer"),
        ("0,1.5", "'1.5' is not an integer"),
        ("0,-1", "-1 is negative"),
        ("0,1,1", "seed 1 is given twice"),
        ("4", "a seed study needs at least 2 seeds"),
    ],
)
def test_parse_seeds_bad(text, needle):
    with pytest.raises(ConfigError) as e:
        parse_seeds(text)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_seed_experiment():
    assert seed_experiment("digits", 0, 0) == "digits"
    assert seed_experiment("digits", 0, 2) == "digits-seed2"
    assert seed_experiment("digits", 5, 5) == "digits"
    assert seed_experiment("digits", 5, 0) == "digits-seed0"


# ----------------------------------------------------------------------------- hand-made results


def _row(target, attack, auc, params=None, **extra):
    row = {
        "target": target,
        "attack": attack,
        "params": params or {},
        "auc": auc,
        "auc_ci": [auc - 0.1, auc + 0.1],
        "auc_calibration": auc - 0.01,
        "tpr_at_1pct_fpr": 0.1,
        "asr_calibrated": 0.6,
    }
    row.update(extra)
    return row


def _results(seed, baseline_auc, tpr, dualmd_auc, bb_auc, pia_best_t, teacher=False):
    experiment = seed_experiment("exp", 0, seed)
    attacks = [
        _row("baseline", "loss", baseline_auc, tpr_at_1pct_fpr=tpr),
        _row("student", "loss", 0.5),
        _row("dualmd", "loss", dualmd_auc),
        # a swept attack: a canonical line and a best-on-calibration line
        _row("baseline", "pia", 0.7, {"t": 200, "canonical": True}, auc_calibration=0.6),
        _row("baseline", "pia", 0.75, {"t": pia_best_t}, auc_calibration=0.9),
    ]
    if teacher:
        attacks.append(_row("teacher_0", "loss", 0.95))
    privacy = {
        "baseline": {
            "attack": "loss",
            "params": {},
            "source": "evaluate",
            "auc": baseline_auc,
            "auc_calibration": baseline_auc - 0.01,
            "tpr_at_1pct_fpr": 0.2,
            "tpr_at_1pct_fpr_calibrated": 0.1 * (seed + 1),
            "fpr_at_1pct_fpr_calibrated": 0.01,
        },
        "dualmd": {
            "attack": "loss",
            "params": {},
            "source": "evaluate",
            "auc": dualmd_auc,
            "auc_calibration": dualmd_auc,
            "tpr_at_1pct_fpr": 0.05,
            "black_box": {
                "attack": "pia",
                "params": {"t": pia_best_t},
                "source": "evaluate",
                "auc": bb_auc,
                "auc_calibration": bb_auc,
                "tpr_at_1pct_fpr": 0.02,
            },
        },
    }
    if teacher:
        privacy["teacher_0"] = {
            "attack": "loss",
            "params": {},
            "source": "evaluate",
            "auc": 0.95,
            "auc_calibration": 0.94,
            "tpr_at_1pct_fpr": 0.5,
        }
    return {
        "experiment": experiment,
        "dataset": "digits",
        "attacks": attacks,
        "privacy": privacy,
        "quality": [],
        "skipped": [],
        "timings": {},
    }


def three_seeds():
    return {
        0: _results(0, 0.8, 0.1, 0.6, 0.55, 10),
        1: _results(1, 0.9, None, 0.6, 0.65, 10),
        2: _results(2, 0.7, 0.3, 0.6, 0.60, 20, teacher=True),
    }


def _entry(summary, target, line):
    found = [a for a in summary["attacks"] if a["target"] == target and a["line"] == line]
    assert len(found) == 1, (target, line, summary["attacks"])
    return found[0]


def test_aggregate_by_hand():
    s = aggregate(three_seeds())
    json.dumps(s)  # serialisable
    assert json.loads(json.dumps(s)) == s  # and reads back unchanged (string keys)
    assert s["seeds"] == [0, 1, 2]
    assert s["experiments"] == {"0": "exp", "1": "exp-seed1", "2": "exp-seed2"}

    loss = _entry(s, "baseline", "loss")
    assert loss["n_seeds"] == 3 and loss["seeds"] == [0, 1, 2]
    assert loss["auc"]["mean"] == pytest.approx(0.8)
    assert loss["auc"]["sd"] == pytest.approx(0.1)  # ddof=1: sqrt((0 + .01 + .01) / 2)
    assert loss["auc"]["values"] == pytest.approx([0.8, 0.9, 0.7])
    assert loss["auc"]["n"] == 3
    # missing in seed 1: aggregated over seeds 0 and 2
    tpr = loss["tpr_at_1pct_fpr"]
    assert tpr["n"] == 2 and tpr["values"][1] is None
    assert tpr["mean"] == pytest.approx(0.2)
    assert tpr["sd"] == pytest.approx(math.sqrt(0.02))
    # a metric nobody has is left out
    assert "tpr_at_1pct_fpr_calibrated" not in loss
    assert set(METRICS) - set(loss) == {"tpr_at_1pct_fpr_calibrated", "fpr_at_1pct_fpr_calibrated"}

    # identical values: sd 0
    assert _entry(s, "student", "loss")["auc"]["sd"] == pytest.approx(0.0)
    # the swept attack: canonical line and the per-seed chosen best setting
    assert _entry(s, "baseline", "pia (canonical)")["settings"] == ["t=200"] * 3
    best = _entry(s, "baseline", "pia (best on calibration)")
    assert best["settings"] == ["t=10", "t=10", "t=20"]
    # a target in one seed only: reported with n_seeds 1, sd None
    teacher = _entry(s, "teacher_0", "loss")
    assert teacher["n_seeds"] == 1 and teacher["seeds"] == [2]
    assert teacher["auc"]["mean"] == pytest.approx(0.95) and teacher["auc"]["sd"] is None
    # report order: baseline, teacher_0, dualmd, student
    order = list(dict.fromkeys(a["target"] for a in s["attacks"]))
    assert order == ["baseline", "teacher_0", "dualmd", "student"]

    # bootstrap CI widths: 0.2 everywhere (auc ± 0.1)
    assert s["bootstrap_ci_width"]["baseline"]["loss"] == pytest.approx(0.2)
    assert s["bootstrap_ci_width"]["teacher_0"]["loss"] == pytest.approx(0.2)

    p = s["privacy"]
    assert list(p) == ["baseline", "teacher_0", "dualmd"]  # union, report order
    assert p["baseline"]["attacks"] == ["loss"] * 3
    assert p["baseline"]["auc"]["mean"] == pytest.approx(0.8)
    assert p["baseline"]["auc"]["sd"] == pytest.approx(0.1)
    cal = p["baseline"]["tpr_at_1pct_fpr_calibrated"]
    assert cal["mean"] == pytest.approx(0.2) and cal["sd"] == pytest.approx(0.1)
    assert p["baseline"]["fpr_at_1pct_fpr_calibrated"]["sd"] == pytest.approx(0.0)
    assert "source" not in p["baseline"] and "params" not in p["baseline"]
    assert p["teacher_0"]["n_seeds"] == 1 and p["teacher_0"]["auc"]["sd"] is None
    bb = p["dualmd"]["black_box"]
    assert bb["attacks"] == ["pia (t=10)", "pia (t=10)", "pia (t=20)"]
    assert bb["auc"]["mean"] == pytest.approx(0.6)
    assert bb["auc"]["sd"] == pytest.approx(0.05)
    assert bb["n_seeds"] == 3


def test_aggregate_orientation_is_a_per_seed_label():
    r = three_seeds()
    for seed, sign in zip(r, (1, -1, 1)):
        r[seed]["privacy"]["baseline"]["orientation"] = sign
    p = aggregate(r)["privacy"]["baseline"]
    assert p["orientations"] == [1, -1, 1] and "orientation" not in p
    assert p["attacks"] == ["loss", "loss (flipped)", "loss"]
    assert "orientations" not in aggregate(three_seeds())["privacy"]["baseline"]


def test_aggregate_ignores_nan_and_bools():
    r = three_seeds()
    r[0]["privacy"]["baseline"]["auc"] = float("nan")
    r[1]["privacy"]["baseline"]["flag"] = True
    s = aggregate(r)
    assert s["privacy"]["baseline"]["auc"]["n"] == 2
    assert s["privacy"]["baseline"]["auc"]["mean"] == pytest.approx(0.8)
    assert "flag" not in s["privacy"]["baseline"]
    json.dumps(s, allow_nan=False)


def test_seeds_markdown():
    md = seeds_markdown(aggregate(three_seeds()))
    assert md.startswith("## Seed study (each seed re-draws the split and retrains)")
    # worst case per target, with the attacks
    # mean ± the standard error over seeds [per seed]: sd 0.1 over three seeds gives
    # 0.1 / sqrt(3) = 0.058 (above the bootstrap floor 0.2 / 3.92 = 0.051)
    assert "| baseline | 0.800 ± 0.058 [0.80, 0.90, 0.70] |" in md
    assert "loss (every seed)" in md
    assert "0.200 ± 0.058 [0.10, 0.20, 0.30]" in md  # calibrated TPR@1%FPR
    assert "0.010 ± 0.000" in md  # its realised FPR
    assert "| dualmd (black-box) | 0.600 ± 0.029 [0.55, 0.65, 0.60] |" in md
    assert "seed 0: pia (t=10); seed 1: pia (t=10); seed 2: pia (t=20)" in md
    assert "| teacher_0 | 0.950 (n=1) |" in md
    # lines x targets: identical values over seeds keep the bootstrap floor, 0.051 / sqrt(3)
    assert "| Attack | baseline | teacher_0 | dualmd | student |" in md
    assert (
        "| loss | 0.800 ± 0.058 [0.80, 0.90, 0.70] | 0.950 ± 0.051 (n=1) | "
        "0.600 ± 0.029 [0.60, 0.60, 0.60] | 0.500 ± 0.029 [0.50, 0.50, 0.50] |"
    ) in md
    assert "bootstrap standard error" in md and "averages 0.051" in md
    text = summary_text(aggregate(three_seeds()), "/x/exp/seeds")
    assert "/x/exp/seeds/" in text and "dualmd (black-box)" in text and "0.800 ± 0.058" in text


# ----------------------------------------------------------------------------- CLI


def _cli_args(root, *extra):
    return [
        "seeds",
        "--preset",
        "smoke",
        "--set",
        "experiment=exp",
        "--set",
        f"storage.root={root}",
        "--set",
        "tracking.enabled=false",
        "--seeds",
        "0,1,2",
        "--aggregate-only",
        *extra,
    ]


def test_cli_aggregate_only(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, res in three_seeds().items():
        Storage(str(root), seed_experiment("exp", 0, seed)).write_json("report/results.json", res)
    assert main(_cli_args(root)) == 0
    out = capsys.readouterr().out
    base = Storage(str(root), "exp")
    assert base.exists("seeds/summary.json") and base.exists("seeds/summary.md")
    summary = base.read_json("seeds/summary.json")
    assert summary == aggregate(three_seeds())
    assert (
        base.read_bytes("seeds/summary.md")
        .decode()
        .startswith("## Seed study (each seed re-draws the split and retrains)")
    )
    assert f"{base.uri('seeds')}/" in out
    assert "baseline" in out and "0.800 ± 0.058" in out
    assert not (tmp_path / "mlflow.db").exists() and not any(root.glob("**/mlflow*"))
    assert not base.exists("seeds/defenses.png")  # no defenses table, no plot


def test_cli_aggregate_only_plots_the_defenses(tmp_path):
    root = tmp_path / "runs"
    for seed, res in three_seeds().items():
        res = _with_defenses(res, seed)
        Storage(str(root), seed_experiment("exp", 0, seed)).write_json("report/results.json", res)
    assert main(_cli_args(root)) == 0
    base = Storage(str(root), "exp")
    assert "### Defenses side by side" in base.read_bytes("seeds/summary.md").decode()
    assert base.read_bytes("seeds/defenses.png").startswith(b"\x89PNG")


def test_cli_missing_seed(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, res in list(three_seeds().items())[:2]:
        Storage(str(root), seed_experiment("exp", 0, seed)).write_json("report/results.json", res)
    assert main(_cli_args(root)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    missing = Storage(str(root), "exp-seed2").uri("report/results.json")
    assert err.startswith(
        f"raydefense: error: seed 2 has no results at {missing}; run "
        "'raydefense seeds --preset smoke"
    )
    assert err.endswith("--seeds 0,1,2' without --aggregate-only first")
    assert not Storage(str(root), "exp").exists("seeds/summary.json")


def test_cli_refuses_a_seed_directory_holding_another_seeds_run(tmp_path, capsys):
    root = tmp_path / "runs"
    for seed, res in three_seeds().items():
        made_with = 0 if seed == 1 else seed  # seed 0's run moved (or run) into exp-seed1
        res = {**res, "seed": made_with}
        Storage(str(root), seed_experiment("exp", 0, seed)).write_json("report/results.json", res)
    assert main(_cli_args(root)) == 2
    err = capsys.readouterr().err.strip()
    where = Storage(str(root), "exp-seed1").uri("report/results.json")
    assert "\n" not in err
    assert f"{where} holds seed 0's results, not seed 1's" in err
    assert err.endswith("without --aggregate-only to train seed 1 there")
    assert not Storage(str(root), "exp").exists("seeds/summary.json")


def test_a_run_of_another_seed_is_warned_before_it_replaces_a_finished_run(
    tmp_path, caplog, monkeypatch
):
    storage = Storage(str(tmp_path), "exp")
    assert replaced_seed_warning(storage, 1) is None  # nothing there yet
    storage.write_json("report/results.json", {"experiment": "exp"})
    assert replaced_seed_warning(storage, 1) is None  # written before the seed was recorded
    storage.write_json("report/results.json", {"experiment": "exp", "seed": 0})
    assert replaced_seed_warning(storage, 0) is None
    warning = replaced_seed_warning(storage, 1)
    assert warning is not None and "\n" not in warning
    assert "holds seed 0's finished run; this run of seed 1 replaces" in warning
    assert warning.endswith(
        "add --set experiment=exp-seed1 (the name `raydefense seeds` gives seed 1)"
    )
    # `raydefense run` (and every stage verb) logs it before the pipeline starts.
    calls = []
    monkeypatch.setattr(commands, "run_pipeline", lambda ctx, until: calls.append(until) or {})
    ctx = types.SimpleNamespace(storage=storage, cfg=types.SimpleNamespace(seed=1))
    with caplog.at_level("WARNING", logger="raydefense"):
        commands.PipelineCommand(until="report").run(ctx)  # type: ignore[arg-type]
    assert calls == ["report"] and warning in caplog.text


@pytest.mark.parametrize(
    "seeds, needle", [("0,0", "given twice"), ("3", "at least 2 seeds"), ("a,b", "not an integer")]
)
def test_cli_bad_seeds(tmp_path, capsys, seeds, needle):
    argv = ["seeds", "--set", f"storage.root={tmp_path}", "--seeds", seeds, "--aggregate-only"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raydefense: error: ") and needle in err and "\n" not in err


def test_run_seeds_runs_each_seed_then_aggregates(tmp_path, monkeypatch, capsys):
    """Without --aggregate-only: one `execute("run", ...)` per seed with `seed` and `experiment`
    appended to the user's overrides (a fake execute writes the results Ray would)."""
    import raydefense.commands as commands

    root = tmp_path / "runs"
    hand = three_seeds()
    calls = []

    def fake_execute(command, preset, config, overrides, force, executor):
        assert executor == "ray"
        calls.append((command, preset, config, list(overrides), force))
        if command == "report":  # the base report, re-rendered with the seed spread
            return None
        sets = dict(o.split("=", 1) for o in overrides)
        seed, experiment = int(sets["seed"]), json.loads(sets["experiment"])
        Storage(sets["storage.root"], experiment).write_json("report/results.json", hand[seed])
        return hand[seed]

    monkeypatch.setattr(commands, "execute", fake_execute)
    argv = [
        "seeds",
        "--preset",
        "smoke",
        "--preset",
        "cpu2",
        "--set",
        "experiment=exp",
        "--set",
        f"storage.root={root}",
        "--force",
        "evaluate",
        "--seeds",
        "0",
        "2",
        "1",
    ]
    assert main(argv) == 0
    assert [c[3][-2:] for c in calls[:3]] == [
        ["seed=0", 'experiment="exp"'],
        ["seed=2", 'experiment="exp-seed2"'],
        ["seed=1", 'experiment="exp-seed1"'],
    ]
    # every preset (experiment and hardware) reaches each seed's run and the base report
    presets = ["smoke", "cpu2"]
    assert all(c[:3] == ("run", presets, None) and c[4] == ["evaluate"] for c in calls[:3])
    assert calls[3] == ("report", presets, None, ["experiment=exp", f"storage.root={root}"], [])
    assert calls[0][3][:2] == ["experiment=exp", f"storage.root={root}"]
    assert Storage(str(root), "exp").read_json("seeds/summary.json") == aggregate(hand)
    assert "0.800 ± 0.058" in capsys.readouterr().out


def test_seeds_module_does_not_import_ray():
    import subprocess
    import sys

    code = (
        "import sys, raydefense.sweeps.seeds\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_utility_is_aggregated_per_target_and_metric():
    hand = three_seeds()
    for s, fid in ((0, 2.0), (1, 2.5), (2, 3.0)):
        hand[s]["quality"] = [
            {"target": "student", "metric": "domain_fid", "value": fid},
            {"target": "student", "metric": "memorized_count", "value": 9},
        ]
    hand[2]["quality"].append({"target": "dualmd", "metric": "mmd_p_value", "value": 0.04})
    q = aggregate(hand)["quality"]
    assert q["student"]["domain_fid"]["mean"] == pytest.approx(2.5)
    assert q["student"]["domain_fid"]["sd"] == pytest.approx(0.5)
    assert "memorized_count" not in q["student"]  # only QUALITY_METRICS are summarised
    assert q["dualmd"]["mmd_p_value"]["n"] == 1 and q["dualmd"]["mmd_p_value"]["sd"] is None
    md = seeds_markdown(aggregate(hand))
    assert "### Utility" in md and "2.500 ± 0.289 [2.00, 2.50, 3.00]" in md  # 0.5 / sqrt(3)
    # Against each seed's own baseline: per-seed ratios, the budget read per seed.
    for s, base in ((0, 2.0), (1, 2.0), (2, 2.5)):
        hand[s]["quality"].append({"target": "baseline", "metric": "domain_fid", "value": base})
    ratio = aggregate(hand)["utility_ratio"]["student"]["domain_fid"]
    assert ratio["values"] == pytest.approx([1.0, 1.25, 1.2])
    md = seeds_markdown(aggregate(hand))
    assert "| student | 1.15 ± 0.08 [1.00, 1.25, 1.20] |" in md


def _with_defenses(results, seed):
    """Seed `seed`'s results with a DP-SGD variant, the front and the training records."""
    eps = {0: 9.99, 1: 10.01, 2: 10.0}[seed]
    results["privacy"]["baseline_dp"] = {
        "attack": "lira",
        "params": {},
        "auc": 0.5,
        "auc_calibration": 0.55,
        "tpr_at_1pct_fpr_calibrated": 0.01,
        "fpr_at_1pct_fpr_calibrated": 0.01,
        "empirical_epsilon": {"lower": 0.0, "point": 0.1},
    }
    results["privacy"]["baseline"]["empirical_epsilon"] = {"lower": 1.0 + seed, "point": 2.0}
    # the raw-statistic suite's choice: a nested worst case of the privacy table, not a defense
    results["privacy"]["baseline"]["without_calibrated"] = {"attack": "loss", "auc": 0.7}
    results["quality"] = [
        {"target": "baseline", "metric": "domain_fid", "value": 2.0},
        {"target": "baseline_dp", "metric": "domain_fid", "value": 50.0 + seed},
        {"target": "dualmd", "metric": "domain_fid", "value": 2.1},
    ]
    results["privacy_utility"] = {
        "utility_metric": "domain_fid",
        "points": [
            {"label": "baseline", "kind": "target", "pareto": seed == 0},
            {"label": "baseline_dp", "kind": "target", "pareto": True},
            {"label": "dualmd", "kind": "target", "pareto": False},
            {"label": "dualmd (black-box)", "kind": "black-box claim", "pareto": False},
        ],
    }
    plain = {"complete": True, "train_seconds": 100.0 + seed, "cpu_seconds": 200.0, "dp": None}
    results["defenses"] = {
        "baseline": plain,
        "baseline_dp": {**plain, "dp": {"epsilon": eps, "delta": 1e-5, "noise_multiplier": 2.3}},
        # DualMD's records predate training records on seed 1: no cost that seed
        "dualmd": {**plain, "complete": seed != 1, "cpu_seconds": 400.0},
    }
    return results


def test_defenses_are_aggregated_over_seeds():
    hand = {s: _with_defenses(r, s) for s, r in three_seeds().items()}
    s = aggregate(hand)
    assert json.loads(json.dumps(s)) == s
    assert s["utility_metric"] == "domain_fid"
    d = s["defenses"]
    assert list(d) == ["baseline", "baseline_dp", "dualmd"]  # report order
    assert d["baseline"]["front"] == [True, False, False]
    assert d["baseline_dp"]["front"] == [True, True, True]
    assert d["baseline"]["train_seconds"]["values"] == pytest.approx([100.0, 101.0, 102.0])
    assert d["baseline"]["train_seconds"]["se"] == pytest.approx(1 / math.sqrt(3))
    assert "accountant_epsilon" not in d["baseline"]  # never trained with DP-SGD
    assert d["baseline_dp"]["accountant_epsilon"]["mean"] == pytest.approx(10.0)
    assert d["baseline_dp"]["delta"]["values"] == pytest.approx([1e-5] * 3)
    # an incomplete record has no cost that seed, aligned with the entry's seeds
    assert d["dualmd"]["cpu_seconds"]["values"] == [400.0, None, 400.0]
    assert d["dualmd"]["cpu_seconds"]["n"] == 2
    # the empirical epsilon of each seed's worst case
    assert s["privacy"]["baseline"]["empirical_epsilon"]["lower"]["values"] == [1.0, 2.0, 3.0]

    md = seeds_markdown(s)
    assert "### Defenses side by side" in md
    assert (
        "| baseline_dp | 0.500 ± 0.000 [0.50, 0.50, 0.50] | 0.01 ± 0.00 [0.01, 0.01, 0.01] | "
        "0.00 ± 0.00 [0.00, 0.00, 0.00] | 10.00 ± 0.01 [9.99, 10.01, 10.00] | – | "
        "51.00 ± 0.58 [50.00, 51.00, 52.00] | 3 of 3 | 200 ± 0 (101 ± 1) |"
    ) in md
    assert "| 0 of 3 | 400 ± 0 (101 ± 1) (n=2) |" in md  # DualMD: seed 1 has no record
    assert "| baseline | 0.800 ± 0.058 [0.80, 0.90, 0.70] |" in md
    assert "| 1 of 3 | 200 ± 0 (101 ± 1) |" in md  # the baseline: on the front on seed 0
    assert "| dualmd (black-box) |" in md and "(a claim)" in md
    section = md[md.index("### Defenses side by side") : md.index("### Attacks")]
    assert "without-calibrated" not in section and "baseline (without-calibrated)" in md
    # a summary from runs without defenses has no such section
    assert "### Defenses side by side" not in seeds_markdown(aggregate(three_seeds()))
