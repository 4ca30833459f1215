"""The epsilon an attack's operating point proves: exact Clopper-Pearson bounds, the DP
inequalities both ways, and a mechanism with a known epsilon (randomized response)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raydefense.attacks.metrics import clopper_pearson, empirical_epsilon


def test_clopper_pearson_has_its_closed_forms_at_the_ends() -> None:
    # k = 0: the upper bound solves (1 - p)^n = 1 - level; k = n: p^n = 1 - level.
    lo, hi = clopper_pearson(0, 100, 0.975)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9)
    lo, hi = clopper_pearson(50, 50, 0.975)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 50), rel=1e-9)
    lo, hi = clopper_pearson(30, 100, 0.975)
    assert lo < 0.30 < hi
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(5, 4, 0.9)


def test_the_bound_is_below_the_point_estimate_and_tightens_with_counts() -> None:
    small = empirical_epsilon(5, 10, 1, 10)  # TPR 0.5, FPR 0.1: log 5 at face value
    assert small["epsilon_point"] == pytest.approx(math.log(5))
    assert small["epsilon_lower"] == 0.0  # ten rows a side prove nothing
    big = empirical_epsilon(5000, 10000, 1000, 10000)
    assert 1.45 < big["epsilon_lower"] < math.log(5) == pytest.approx(big["epsilon_point"])
    # No false positive: the raw ratio is infinite, the bound is finite and honest.
    none = empirical_epsilon(40, 100, 0, 100)
    assert none["epsilon_point"] is None and 0 < none["epsilon_lower"] < 5
    # delta only lowers the bound; the second inequality (TNR vs FNR) counts too.
    assert (
        empirical_epsilon(5000, 10000, 1000, 10000, delta=0.1)["epsilon_lower"]
        < (big["epsilon_lower"])
    )
    flipped = empirical_epsilon(9990, 10000, 5000, 10000)  # TPR ~1, FPR 0.5: TNR / FNR wins
    assert flipped["epsilon_lower"] > math.log(9990 / 5000) + 1


@pytest.mark.parametrize("eps", [0.5, 1.0, 2.0])
def test_randomized_response_is_never_overclaimed(eps: float) -> None:
    """Randomized response is exactly eps-DP: a member is flagged with probability
    e^eps / (1 + e^eps), a non-member with 1 / (1 + e^eps). Over many trials the 95% bound
    exceeds eps in about 5% of them at most, and on large samples it comes close to eps."""
    rng = np.random.default_rng(int(eps * 10))
    p_in = math.exp(eps) / (1 + math.exp(eps))
    n, trials = 2000, 200
    tp = rng.binomial(n, p_in, size=trials)
    fp = rng.binomial(n, 1 - p_in, size=trials)
    bounds = np.array([empirical_epsilon(int(a), n, int(b), n)["epsilon_lower"]
                       for a, b in zip(tp, fp)])  # fmt: skip
    assert (bounds > eps).mean() <= 0.05
    assert np.median(bounds) > 0.7 * eps


def test_each_worst_case_carries_the_epsilon_its_calibrated_point_proves() -> None:
    from raydefense.audit.selection import operating_point_epsilon, worst_case_privacy

    row = {
        "target": "baseline",
        "attack": "loss",
        "params": {},
        "auc": 0.9,
        "auc_calibration": 0.88,
        "tpr_at_1pct_fpr_calibrated": 0.4,
        "fpr_at_1pct_fpr_calibrated": 0.01,
        "n_members": 500,
        "n_nonmembers": 500,
    }
    entry = worst_case_privacy([row])["baseline"]["empirical_epsilon"]
    want = empirical_epsilon(200, 500, 5, 500)
    assert entry["lower"] == want["epsilon_lower"] and entry["point"] == pytest.approx(math.log(40))
    limited = {**row, "tpr_at_1pct_fpr_calibrated": None, "fpr_at_1pct_fpr_calibrated": None}
    assert operating_point_epsilon(limited) is None
