"""Membership metrics: known answers, TPR@FPR rules, calibration, bootstrap, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raydefense.attacks.metrics import (
    TprAtFpr,
    accuracy_at,
    attack_metrics,
    auc,
    best_threshold,
    bootstrap_ci,
    calibrated_operating_point,
    orientation,
    resolvable,
    roc,
    threshold_at_fpr,
    tpr_at_fpr,
)

KEYS = {
    "auc",
    "auc_ci",
    "tpr_at_1pct_fpr",
    "tpr_at_1pct_fpr_ci",
    "tpr_at_0.1pct_fpr",
    "tpr_at_1pct_fpr_closest",
    "orientation",
    "auc_calibration",
    "auc_as_scored",
    "tpr_at_1pct_fpr_calibrated",
    "fpr_at_1pct_fpr_calibrated",
    "tpr_at_0.1pct_fpr_calibrated",
    "fpr_at_0.1pct_fpr_calibrated",
    "resolution_limited",
    "tpr_at_0pct_fpr",
    "asr_calibrated",
    "asr_oracle",
    "tpr_rule",
    "n_members",
    "n_nonmembers",
}


def _split(n_mem: int, n_non: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.normal(shift, 1.0, n_mem), rng.normal(0.0, 1.0, n_non)])
    labels = np.concatenate([np.ones(n_mem, int), np.zeros(n_non, int)])
    return scores, labels


def test_perfect_separator() -> None:
    s = np.array([5.0, 6.0, 7.0, 8.0, 0.0, 1.0, 2.0, 3.0])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    assert auc(s, y) == 1.0
    for rule in ("max_below", "closest", "strict_below"):
        assert tpr_at_fpr(s, y, 0.01, rule) == 1.0
    thr, acc = best_threshold(s, y)
    assert acc == 1.0 and 3.0 < thr <= 5.0
    m = attack_metrics(s, y, s, y, bootstrap=50, seed=0)
    # 4 non-members: 1% FPR cannot be resolved (no number), 0% can.
    assert m["auc"] == 1.0 and m["tpr_at_1pct_fpr"] is None and m["tpr_at_0pct_fpr"] == 1.0
    assert "tpr_at_1pct_fpr" in m["resolution_limited"] and m["tpr_at_1pct_fpr_ci"] is None
    assert m["asr_calibrated"] == 1.0 and m["asr_oracle"] == 1.0
    assert m["auc_ci"] == [1.0, 1.0]


def test_identical_distributions_auc_half() -> None:
    s, y = _split(5000, 5000, 0.0, seed=7)
    assert auc(s, y) == pytest.approx(0.5, abs=0.03)


def test_roc_shape_and_orientation() -> None:
    s = np.array([0.9, 0.1, 0.8, 0.3])
    y = np.array([1, 0, 0, 1])
    fpr, tpr, thr = roc(s, y)
    assert fpr[0] == 0.0 and tpr[0] == 0.0 and np.isinf(thr[0])
    assert fpr[-1] == 1.0 and tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_tpr_rules_differ_on_hand_example() -> None:
    # Sorted by score (higher = member): 8 M, 7 M, 6 N, 5 M, 4 N, 3 M, 2 N, 1 N (4 M, 4 N).
    # ROC (FPR, TPR) by threshold: inf (0,0); 8 (0,.25); 7 (0,.5); 6 (.25,.5); 5 (.25,.75);
    # 4 (.5,.75); 3 (.5,1); 2 (.75,1); 1 (1,1).
    s = np.array([8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    y = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    # alpha = .25 lies on the grid: "<= .25" reaches the top of the FPR=.25 step (.75), the strict
    # "< .25" (PIA) stops at FPR 0 (.5); the closest FPR is .25 itself (.75).
    assert tpr_at_fpr(s, y, 0.25, "max_below") == 0.75
    assert tpr_at_fpr(s, y, 0.25, "strict_below") == 0.5
    assert tpr_at_fpr(s, y, 0.25, "closest") == 0.75
    # alpha = .45: the closest FPR is .5 (above alpha, SecMI-style) with TPR 1; both "below" rules
    # stay at FPR .25 (.75).
    assert tpr_at_fpr(s, y, 0.45, "closest") == 1.0
    assert tpr_at_fpr(s, y, 0.45, "max_below") == 0.75
    assert tpr_at_fpr(s, y, 0.45, "strict_below") == 0.75
    # alpha = .375 is equidistant from FPR .25 and .5: the lower FPR wins (.75).
    assert tpr_at_fpr(s, y, 0.375, "closest") == 0.75
    # alpha = 0: "<= 0" keeps the FPR=0 step (.5); strict "< 0" admits nothing (0).
    assert tpr_at_fpr(s, y, 0.0, "max_below") == 0.5
    assert tpr_at_fpr(s, y, 0.0, "strict_below") == 0.0
    assert tpr_at_fpr(s, y, 0.0, "closest") == 0.5


def test_unknown_rule_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="max_below, closest, strict_below"):
        tpr_at_fpr([1.0, 0.0], [1, 0], 0.01, rule="nearest")


def test_calibrated_threshold_applied_on_test() -> None:
    cal_s, cal_y = np.array([2.0, 3.0, 0.0, 1.0]), np.array([1, 1, 0, 0])
    thr, acc = best_threshold(cal_s, cal_y)
    assert (thr, acc) == (2.0, 1.0)
    test_s, test_y = np.array([1.5, 2.5, 0.5, 2.2]), np.array([1, 1, 0, 0])
    # At threshold 2: member 2.5 hit, member 1.5 missed, non-member 2.2 flagged -> 2/4 correct.
    assert accuracy_at(test_s, test_y, 2.0) == 0.5
    m = attack_metrics(cal_s, cal_y, test_s, test_y, bootstrap=0)
    assert m["asr_calibrated"] == 0.5
    assert m["asr_oracle"] == 0.75  # threshold 2.5 (or 1.5) on the test split itself
    assert m["n_members"] == 2 and m["n_nonmembers"] == 2
    assert set(m) == KEYS - {"auc_ci", "tpr_at_1pct_fpr_ci"}
    assert m["tpr_at_1pct_fpr"] is None and m["tpr_at_1pct_fpr_calibrated"] is None


def test_attack_metrics_keys_and_json() -> None:
    cal_s, cal_y = _split(300, 300, 1.0, seed=1)
    s, y = _split(400, 500, 1.0, seed=2)
    m = attack_metrics(cal_s, cal_y, s, y, bootstrap=200, seed=3)
    assert set(m) == KEYS
    assert m["n_members"] == 400 and m["n_nonmembers"] == 500
    assert m["tpr_rule"].startswith("TPR@FPR = max TPR over ROC points with FPR <= alpha")
    assert m["asr_calibrated"] <= m["asr_oracle"]
    assert m["tpr_at_0pct_fpr"] <= m["tpr_at_1pct_fpr"]
    json.dumps(m)
    # 0.1% of 500 test (300 calibration) non-members is below one false positive: no number.
    assert m["resolution_limited"] == [
        "tpr_at_0.1pct_fpr",
        "tpr_at_0.1pct_fpr_calibrated",
        "fpr_at_0.1pct_fpr_calibrated",
    ]
    for k, v in m.items():
        assert type(v) in (float, int, str, list) or (v is None and k in m["resolution_limited"]), k


def test_orientation_is_chosen_on_calibration_never_on_test() -> None:
    # Calibration says "lower = member" (AUC < 0.5), test says the opposite: the attacker flips
    # on calibration and reports the (bad) flipped test AUC, not the better test orientation.
    cal_s, cal_y = _split(200, 200, -1.0, seed=11)
    s, y = _split(200, 200, 0.5, seed=12)
    assert orientation(cal_s, cal_y) == -1
    m = attack_metrics(cal_s, cal_y, s, y, bootstrap=0)
    assert m["orientation"] == -1
    assert (
        m["auc_calibration"] == pytest.approx(1.0 - auc(cal_s, cal_y))
        and m["auc_calibration"] > 0.5
    )
    assert m["auc"] == pytest.approx(auc(-s, y)) and m["auc"] < 0.5
    assert m["auc_as_scored"] == pytest.approx(auc(s, y)) and m["auc_as_scored"] > 0.5
    same = attack_metrics(-cal_s, cal_y, -s, y, bootstrap=0)  # already flipped: kept as is
    assert same["orientation"] == 1 and same["auc"] == pytest.approx(m["auc"])


def test_threshold_at_fpr_flags_at_most_alpha_of_the_nonmembers() -> None:
    neg = np.arange(200, dtype=float)  # 0..199
    thr = threshold_at_fpr(neg, 0.01)  # 2 false positives allowed: 198 and 199
    assert 197.0 < thr <= 198.0 and np.sum(neg >= thr) == 2
    ties = np.array([5.0, 5.0, 5.0] + [0.0] * 97)
    assert np.sum(ties >= threshold_at_fpr(ties, 0.02)) == 0  # a tie never pushes FPR past alpha
    assert resolvable(0.01, 100) and not resolvable(0.01, 99) and not resolvable(0.001, 128)


def test_calibrated_operating_point_realised_on_test() -> None:
    cal_s = np.r_[np.arange(100, 200, dtype=float), np.arange(100, dtype=float)]
    cal_y = np.r_[np.ones(100), np.zeros(100)].astype(int)
    # Threshold from calibration: flags 1 of 100 non-members (score 99), so thr is just above 98.
    s = np.array([98.5, 99.5, 150.0, 50.0, 98.7, 10.0, 20.0, 30.0])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    op = calibrated_operating_point(cal_s, cal_y, s, y, 0.01)
    assert 98.0 < op["threshold"] <= 99.0 and not op["resolution_limited"]
    assert op["tpr"] == 0.75 and op["fpr"] == 0.25  # realised on test: above the 1% it aimed at
    m = attack_metrics(cal_s, cal_y, s, y, bootstrap=0)
    assert m["tpr_at_1pct_fpr_calibrated"] == 0.75 and m["fpr_at_1pct_fpr_calibrated"] == 0.25
    assert m["tpr_at_1pct_fpr"] is None  # 4 test non-members cannot resolve 1%
    limited = calibrated_operating_point(cal_s[:150], cal_y[:150], s, y, 0.01)  # 50 non-members
    assert limited["resolution_limited"] and limited["tpr"] is None


def test_bootstrap_ci_contains_point_and_is_ordered() -> None:
    s, y = _split(500, 500, 1.0, seed=4)
    for fn in (auc, TprAtFpr(0.01)):
        lo, hi = bootstrap_ci(fn, s, y, n=300, seed=0)
        assert lo <= fn(s, y) <= hi and lo < hi
    assert bootstrap_ci(auc, s, y, n=300, seed=0) == bootstrap_ci(auc, s, y, n=300, seed=0)
    assert bootstrap_ci(auc, s, y, n=0, seed=0) is None


def test_bootstrap_fast_paths_match_generic() -> None:
    # Ties included, so the count-based AUC / TPR must handle equal scores like sklearn does.
    s, y = _split(120, 150, 0.8, seed=5)
    s = np.round(s, 1)
    for fast, generic in (
        (auc, lambda a, b: auc(a, b)),
        (TprAtFpr(0.05), lambda a, b: tpr_at_fpr(a, b, 0.05)),
    ):
        ci_fast = bootstrap_ci(fast, s, y, n=60, seed=9, level=0.9)
        ci_gen = bootstrap_ci(generic, s, y, n=60, seed=9, level=0.9)
        assert ci_fast == pytest.approx(ci_gen, abs=1e-12)


def test_single_class_errors() -> None:
    with pytest.raises(ValueError, match="both members and non-members"):
        auc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="calibration split"):
        attack_metrics([0.1, 0.2], [1, 1], [0.1, 0.2], [1, 0], bootstrap=0)
    with pytest.raises(ValueError, match="test split"):
        attack_metrics([0.1, 0.2], [1, 0], [0.1, 0.2], [0, 0], bootstrap=0)
    with pytest.raises(ValueError, match="non-finite"):
        auc([np.nan, 0.2], [1, 0])
