"""The report's privacy section (the defender's worst case, sweeps included) and its
privacy-utility scatter / Pareto front."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from raydefense.audit.selection import tradeoff, worst_case_privacy
from raydefense.report import write_report
from raydefense.report.tradeoff import TRADEOFF_PNG


def _row(target, attack, params, auc, auc_cal, tpr=0.01):
    return {
        "target": target,
        "attack": attack,
        "params": params,
        "auc": auc,
        "auc_calibration": auc_cal,
        "tpr_at_1pct_fpr": tpr,
        "tpr_rule": "r",
        "n_members": 10,
        "n_nonmembers": 10,
    }


def _results():
    attacks = [
        _row("baseline", "loss", {"t": 100}, 0.80, 0.82, 0.2),
        _row("baseline", "pia", {"t": 200}, 0.90, 0.78, 0.3),  # higher test, lower cal
        _row("teacher_1", "loss", {"t": 100}, 0.70, 0.71),
        _row("dualmd", "loss", {"t": 100}, 0.58, 0.60),
        _row("student", "loss", {"t": 100}, 0.52, 0.53),
    ]
    quality = [
        {"target": t, "metric": "domain_fid", "value": v}
        for t, v in (("baseline", 1.0), ("teacher_1", 1.6), ("dualmd", 1.4), ("student", 1.8))
    ]
    quality.append({"target": "student", "metric": "heldout_eps_mse", "value": 0.3})
    return {
        "experiment": "unit",
        "config_fingerprint": "f",
        "versions": {},
        "timings": {},
        "attacks": attacks,
        "quality": quality,
        "skipped": [],
    }


def test_worst_case_is_chosen_by_calibration_auc_and_a_sweep_can_raise_it() -> None:
    res = _results()
    w = worst_case_privacy(res["attacks"])
    assert (w["baseline"]["attack"], w["baseline"]["auc"]) == ("loss", 0.80)  # not pia's 0.90
    sweep = {
        "sweep": "s",
        "worst_case": {
            "student": {
                "attack": "secmi_stat",
                "params": {"t_sec": 40},
                "auc": 0.61,
                "auc_calibration": 0.64,
                "tpr_at_1pct_fpr": 0.05,
            },
            "baseline": {
                "attack": "secmi_stat",
                "params": {},
                "auc": 0.99,
                "auc_calibration": 0.5,
                "tpr_at_1pct_fpr": 0.5,
            },
        },
    }
    w = worst_case_privacy(res["attacks"], sweep)
    assert w["student"] == {
        "attack": "secmi_stat",
        "params": {"t_sec": 40},
        "source": "sweep s",
        "access": None,
        "family": None,
        "auc": 0.61,
        "auc_calibration": 0.64,
        "tpr_at_1pct_fpr": 0.05,
        "auc_ci": None,
        "orientation": None,
        "tpr_at_1pct_fpr_calibrated": None,
        "fpr_at_1pct_fpr_calibrated": None,
        "empirical_epsilon": None,  # no calibrated operating point to prove one
    }
    assert w["baseline"]["source"] == "evaluate"  # the sweep's weaker setting does not win


def test_points_and_pareto_front_of_targets_and_training_trials() -> None:
    res = _results()
    training = {
        "sweep": "tr",
        "target": "student",
        "utility_metric": "domain_fid",
        "num_trials": 3,
        "num_stopped": 1,
        "trials": [
            {
                "key": "p000-a",
                "setting": "{}",
                "status": "completed",
                "privacy_auc": 0.5,
                "utility": 2.0,
                "pareto": True,
            },
            {"key": "p001-b", "setting": "{}", "status": "stopped"},
            {
                "key": "p002-c",
                "setting": "{}",
                "status": "completed",
                "privacy_auc": 0.6,
                "utility": 2.5,
                "pareto": False,
            },
        ],
    }
    out = tradeoff(res, None, training)
    pu = out["privacy_utility"]
    assert pu["utility_metric"] == "domain_fid"
    by = {p["label"]: p for p in pu["points"]}
    assert set(by) == {"baseline", "teacher_1", "dualmd", "student", "p000-a", "p002-c"}
    # teacher_1 (0.70, 1.6) is dominated by dualmd (0.58, 1.4); the others trade off.
    assert {k for k, p in by.items() if p["kind"] == "target" and p["pareto"]} == {
        "baseline",
        "dualmd",
        "student",
    }
    assert by["p000-a"]["pareto"] and not by["p002-c"]["pareto"]
    # A training sweep measured with another utility is not mixed into the same axes.
    training["utility_metric"] = "heldout_eps_mse"
    pts = tradeoff(res, None, training)["privacy_utility"]["points"]
    assert {p["kind"] for p in pts} == {"target"}


def test_report_has_the_privacy_sections_and_the_figure(tmp_path) -> None:
    res = _results()
    res.update(tradeoff(res))
    write_report(str(tmp_path), res)
    md = (tmp_path / "report.md").read_text()
    assert "## Privacy: the defender's worst case" in md
    assert "## Privacy-utility trade-off" in md and f"![privacy-utility]({TRADEOFF_PNG})" in md
    assert '| student |  | loss {"t": 100} | evaluate | 0.530 | **0.520** | 0.01 |' in md
    with Image.open(tmp_path / TRADEOFF_PNG) as im:
        assert im.size[0] > 600 and im.size[1] > 400
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and TRADEOFF_PNG not in html.split("<body")[1]


@pytest.mark.parametrize(
    "quality", [[], [{"target": "student", "metric": "memorized", "value": 1}]]
)
def test_no_utility_metric_means_no_figure(tmp_path, quality) -> None:
    res = _results()
    res["quality"] = quality
    res.update(tradeoff(res))
    assert res["privacy_utility"]["points"] == []
    write_report(str(tmp_path), res)
    assert not os.path.exists(tmp_path / TRADEOFF_PNG)
    assert "No utility metric" in (tmp_path / "report.md").read_text()


def test_dualmd_worst_case_is_the_adaptive_attack_and_black_box_is_its_own_line(tmp_path) -> None:
    res = _results()
    res["attacks"] += [
        {
            **_row(
                "dualmd",
                "dualmd_adaptive",
                {"base": "sima", "combine": "max", "timesteps": [60, 50]},
                0.99,
                0.98,
                0.9,
            ),
            "access": "gray-box",
            "tpr_at_1pct_fpr_calibrated": 0.85,
            "fpr_at_1pct_fpr_calibrated": 0.02,
            "orientation": 1,
        },
        {
            **_row("dualmd", "blackbox_nn", {"space": "pixel"}, 0.75, 0.70, 0.1),
            "access": "black-box",
        },
        # PIAN-like: scores inverted (calibration AUC below 0.5 before orientation): once
        # oriented its calibration AUC (0.9) beats the loss row and it is the worst case.
        {**_row("teacher_1", "pian", {"t": 20}, 0.88, 0.90, 0.4), "orientation": -1},
    ]
    out = tradeoff(res)
    w = out["privacy"]
    assert (w["dualmd"]["attack"], w["dualmd"]["auc"]) == ("dualmd_adaptive", 0.99)
    assert (w["dualmd"]["black_box"]["attack"], w["dualmd"]["black_box"]["auc"]) == (
        "blackbox_nn",
        0.75,
    )
    assert "black_box" not in w["baseline"]  # no black-box rows: no claim line
    assert (w["teacher_1"]["attack"], w["teacher_1"]["orientation"]) == ("pian", -1)
    kinds = {p["label"]: p["kind"] for p in out["privacy_utility"]["points"]}
    assert kinds["dualmd (black-box)"] == "black-box claim"
    res.update(out)
    write_report(str(tmp_path), res)
    md = (tmp_path / "report.md").read_text()
    assert "| dualmd, black-box only | black-box | blackbox_nn" in md
    assert "0.85 / 0.02" in md and "(flipped)" in md
    assert "DualMD protects against **black-box** attackers only" in md


def test_pareto_front_of_targets_is_chosen_on_calibration_auc() -> None:
    res = _results()
    # dualmd: lower test AUC than the student would make it dominate; on calibration it does not.
    res["attacks"] = [r for r in res["attacks"] if r["target"] in ("dualmd", "student")]
    res["attacks"][0].update(auc=0.50, auc_calibration=0.70)  # dualmd (fid 1.4)
    res["attacks"][1].update(auc=0.52, auc_calibration=0.53)  # student (fid 1.8)
    pts = {p["label"]: p for p in tradeoff(res)["privacy_utility"]["points"]}
    assert pts["dualmd"]["pareto"] and pts["student"]["pareto"]  # both on the calibration front


def _trial(key, seed, lr, cal, auc, util):
    return {
        "key": key,
        "setting": f'{{"seed":{seed},"train.lr":{lr}}}',
        "values": {"seed": seed, "train.lr": lr},
        "status": "completed",
        "privacy_auc_calibration": cal,
        "privacy_auc": auc,
        "utility": util,
    }


SEEDED = [
    _trial("p000-a", 0, 0.001, 0.60, 0.61, 1.00),
    _trial("p001-b", 0, 0.002, 0.52, 0.54, 1.30),
    _trial("p002-c", 1, 0.001, 0.62, 0.63, 1.04),
    _trial("p003-d", 1, 0.002, 0.54, 0.52, 1.10),
    {"key": "p004-e", "setting": "{}", "values": {"seed": 2}, "status": "stopped"},
]


def test_settings_average_over_seeds_and_the_recommendation_respects_the_budget() -> None:
    from raydefense.audit.selection import recommend, settings_over_seeds

    settings = settings_over_seeds(SEEDED)
    assert [s["setting"] for s in settings] == ['{"train.lr":0.001}', '{"train.lr":0.002}']
    slow, fast = settings
    assert slow["trials"] == ["p000-a", "p002-c"] and slow["seeds"] == [0, 1]
    assert fast["privacy_auc_calibration"] == pytest.approx(0.53)
    assert fast["privacy_auc"] == pytest.approx(0.53) and fast["utility"] == pytest.approx(1.2)
    assert fast["privacy_auc_sd"] == pytest.approx(0.01414, abs=1e-4)
    assert slow["pareto"] and fast["pareto"]  # a trade-off: neither dominates
    # Budget 1.1 x 1.0: lr 0.002's mean utility 1.2 is over it, so lr 0.001 is recommended.
    rec = recommend(settings, 1.0, 1.1)
    assert rec["key"] == '{"train.lr":0.001}' and rec["within_budget"]
    # Budget 1.25: both are within, and the more private (by calibration AUC) wins.
    assert recommend(settings, 1.0, 1.25)["key"] == '{"train.lr":0.002}'
    # No setting within budget: none recommended, the closest front setting named.
    none = recommend(settings, 0.5, 1.1)
    assert none["key"] is None and none["closest"] == '{"train.lr":0.001}'
    # Without a baseline utility: the most private on the front.
    assert recommend(settings, None, 1.1)["key"] == '{"train.lr":0.002}'


def test_the_report_marks_the_recommended_trials_and_draws_the_budget(tmp_path) -> None:
    from raydefense.sweeps.training_sweep import summary, with_recommendation

    res = _results()  # baseline domain FID 1.0
    sweep = {
        "sweep": "tr",
        "target": "student",
        "utility_metric": "domain_fid",
        "num_trials": 5,
        "num_stopped": 1,
        "num_completed": 4,
        "trials": [dict(t) for t in SEEDED],
        "utility_budget": 1.1,
    }
    out = tradeoff(res, None, sweep)
    by = {p["label"]: p for p in out["privacy_utility"]["points"]}
    assert {k for k, p in by.items() if p.get("recommended")} == {"p000-a", "p002-c"}
    rec = out["privacy_utility"]["training_sweep"]["recommended"]
    assert rec["reference_utility"] == 1.0 and rec["setting"]["utility"] == pytest.approx(1.02)
    res.update(out)
    write_report(str(tmp_path), res)
    md = (tmp_path / "report.md").read_text()
    assert '**Recommended setting:** `{"train.lr":0.001}`: worst-case AUC 0.620 ± 0.014' in md
    assert "(1.02x the baseline's 1.000), over 2 trials" in md
    assert "| 0.610 | 1.000 |  (recommended) |" in md
    assert (tmp_path / TRADEOFF_PNG).stat().st_size > 10_000
    # The sweep's own results.json carries the same choice against its reference.
    for t in sweep["trials"]:
        t.setdefault("pareto", False)
    sweep.update(with_recommendation(sweep["trials"], {"utility": 1.0}, 1.1))
    assert sweep["recommended"]["key"] == '{"train.lr":0.001}'
    assert [t["key"] for t in sweep["trials"] if t["recommended"]] == ["p000-a", "p002-c"]
    text = summary({**sweep, "experiment": "unit"}, "/x")
    assert 'recommended: {"train.lr":0.001}: worst-case AUC 0.620 (test), domain_fid 1.020' in text
    assert "1.02x the baseline's over 2 trials" in text


def test_each_trials_own_baseline_is_the_budgets_reference_when_measured() -> None:
    from raydefense.audit.selection import recommend, settings_over_seeds

    trials = [dict(t) for t in SEEDED]
    # lr 0.002's seeds each had a worse baseline (1.2, 1.0): ratios 1.083 and 1.1, mean 1.092
    for t, ref in zip(trials, (1.0, 1.2, 1.0, 1.0)):
        t["utility_reference"] = ref
    settings = settings_over_seeds(trials)
    assert settings[1]["utility_ratio"] == pytest.approx((1.3 / 1.2 + 1.1) / 2)
    rec = recommend(settings, 5.0, 1.1)  # the experiment's baseline is not what decides
    assert rec["key"] == '{"train.lr":0.002}' and "of the same trial" in rec["rule"]
    assert recommend(settings, None, 1.01)["closest"] == '{"train.lr":0.001}'


def test_a_training_sweep_draws_every_trial_and_its_own_baseline(tmp_path) -> None:
    from raydefense.storage import Storage
    from raydefense.sweeps.training_sweep import SWEEP_PNG, sweep_figure_section, write_sweep_figure

    trials = [dict(t) for t in SEEDED]
    for t in trials[:4]:
        t.update(utility_reference=1.0, reference_privacy_auc=0.99, pareto=True)
    trials[0]["recommended"] = True
    trials[3]["reference_privacy_auc"] = 0.98  # p003's own baseline differs
    results = {"utility_metric": "domain_fid", "reference_target": "baseline", "trials": trials}
    results["utility_budget"] = 1.1
    section = sweep_figure_section(results)
    pts = section["points"]
    # the stopped trial has no point; trials that share one baseline share its point
    assert [p["kind"] for p in pts] == ["trial"] * 4 + ["reference"] * 2
    assert [p["label"] for p in pts[4:]] == ["baseline (p000, p001, p002)", "baseline (p003)"]
    assert pts[0]["recommended"] and "budget_line" not in section
    one = sweep_figure_section({**results, "trials": trials[:3]})
    assert one["budget_line"] == (1.1, pytest.approx(1.1))
    storage = Storage(str(tmp_path), "exp")
    assert write_sweep_figure(storage, "training_sweeps/s", results) is not None
    with Image.open(storage.path(f"training_sweeps/s/{SWEEP_PNG}")) as im:
        assert im.size[0] > 600
    assert write_sweep_figure(storage, "x", {**results, "trials": trials[4:]}) is None


def test_worst_case_names_the_suite_and_the_raw_statistic_choice_beside_it() -> None:
    """With reference-calibrated rows the worst case keeps the raw-statistic choice beside it
    (the before/after of #27), and results name the families covered and those not covered."""
    from raydefense.attacks.base import FAMILIES, variants_not_run
    from raydefense.audit.selection import suite_coverage
    from raydefense.report.tradeoff import privacy_markdown, suite_markdown

    rows = [
        {**_row("student", "loss", {}, 0.60, 0.62), "family": "threshold"},
        {**_row("student", "lira", {"base": "loss"}, 0.70, 0.71), "family": "reference"},
        {**_row("baseline", "loss", {}, 0.80, 0.82), "family": "threshold"},
    ]
    w = worst_case_privacy(rows)
    assert w["student"]["attack"] == "lira" and w["student"]["family"] == "reference"
    assert w["student"]["without_calibrated"]["attack"] == "loss"
    # The combination stacks the calibrated columns: it is left out of the "before" as well.
    stacked = rows + [{**_row("student", "combined", {}, 0.72, 0.73), "family": "combined"}]
    assert worst_case_privacy(stacked)["student"]["attack"] == "combined"
    assert worst_case_privacy(stacked)["student"]["without_calibrated"]["attack"] == "loss"
    assert "without_calibrated" not in w["baseline"]  # no calibrated attack ran on it
    text = privacy_markdown(w)
    assert "student, without reference/population/combined attacks" in text
    refs = {
        "student": {
            "models": {"shadow_1_student": {}},
            "online": {"models": {"online_1_student": {}, "online_2_student": {}}},
            "population_rows": 512,
        }
    }
    suite = suite_coverage(rows, FAMILIES, variants_not_run(0, lira_enabled=True), refs)
    assert suite["reference_models"] == {
        "student": {"offline": 1, "online": 2, "population_rows": 512}
    }
    assert [f["family"] for f in suite["covered"]] == ["threshold", "reference"]
    assert suite["covered"][1]["attacks"] == ["lira"]
    assert any(m.startswith("learned:") for m in suite["not_covered"])
    assert any("online LiRA" in m and "online_models = 0" in m for m in suite["not_covered"])
    assert variants_not_run(2, lira_enabled=True) == variants_not_run(0, lira_enabled=False) == []
    md = suite_markdown(suite)
    assert "strongest attack in the suite, chosen on calibration" in md and "online LiRA" in md
    assert "student 1 OUT + 2 online (IN/OUT); population rows: 512" in md
