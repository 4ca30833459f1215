"""Distribution-level membership test: RBF kernel, unbiased MMD^2, permutation test (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from raydefense.quality.mmd import (
    _membership_mmd,
    median_bandwidth,
    membership_mmd_test,
    mmd2_unbiased,
    rbf_kernel,
)


def _naive_mmd2(x: np.ndarray, y: np.ndarray, h: float) -> float:
    """O(n^2) loops straight from Gretton et al. (2012), eq. 3."""

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * h * h))

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def _gaussians(
    seed: int, n_g: int, n_m: int, n_n: int, dim: int, shift_n: float, shift_g: float = 0.0
):
    """G around M's distribution (mean shift_g), M at mean 0, N at mean shift_n."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(n_g, dim)) + shift_g
    m = rng.normal(size=(n_m, dim))
    n = rng.normal(size=(n_n, dim)) + shift_n
    return g, m, n


# ---------------------------------------------------------------- kernel and bandwidth


def test_rbf_kernel_matches_direct_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 5)) * 3 + 10, rng.normal(size=(4, 5)) * 3 + 10
    got = rbf_kernel(a, b, 2.5)
    want = np.array([[np.exp(-np.sum((x - y) ** 2) / (2 * 2.5**2)) for y in b] for x in a])
    assert got.dtype == np.float64 and got.shape == (7, 4)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    k = rbf_kernel(a, a, 1.0)
    assert np.all(k <= 1.0) and np.allclose(np.diagonal(k), 1.0)


def test_median_bandwidth_matches_naive_median():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 1
    x = np.concatenate([a, b])
    d = [np.linalg.norm(x[i] - x[j]) for i in range(len(x)) for j in range(len(x)) if i != j]
    assert median_bandwidth(a, b) == pytest.approx(float(np.median(d)), abs=1e-12)


def test_median_bandwidth_falls_back_to_one_and_subsamples():
    assert median_bandwidth(np.ones((5, 3)), np.ones((4, 3))) == 1.0
    # Above 2,000 rows: deterministic (first rows), positive, and each set still contributes.
    rng = np.random.default_rng(2)
    big, far = rng.normal(size=(3000, 4)), rng.normal(size=(1000, 4)) + 100.0
    h1, h2 = median_bandwidth(big, far), median_bandwidth(big, far)
    assert h1 == h2 > 0
    # Quotas in proportion to set size: the first 1,500 rows of `big`, the first 500 of `far`.
    assert h1 == pytest.approx(median_bandwidth(big[:1500], far[:500]), abs=1e-12)
    assert h1 != pytest.approx(median_bandwidth(big[:2000]))  # not just the first 2,000 overall
    assert median_bandwidth(big) == pytest.approx(median_bandwidth(big[:2000]), abs=1e-12)


# ---------------------------------------------------------------- unbiased MMD^2


def test_mmd2_unbiased_matches_naive_loops():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(7, 4)) + 0.5
    for h in (0.3, 1.0, 4.0):
        assert abs(mmd2_unbiased(x, y, h) - _naive_mmd2(x, y, h)) < 1e-10


def test_mmd2_unbiased_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(4)
    same = [
        mmd2_unbiased(rng.normal(size=(50, 3)), rng.normal(size=(50, 3)), 1.5) for _ in range(200)
    ]
    shifted = mmd2_unbiased(rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 1.0, 1.5)
    se = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 4 * se  # unbiased: mean 0 within sampling error
    assert min(same) < 0 < max(same)  # no positive bias floor, unlike the biased V-statistic
    assert shifted > 10 * np.std(same)


def test_mmd2_unbiased_rejects_bad_inputs():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd2_unbiased(x[:1], x, 1.0)
    with pytest.raises(ValueError, match="feature dimension"):
        mmd2_unbiased(x, np.zeros((3, 3)), 1.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2_unbiased(x, x, 0.0)


# ---------------------------------------------------------------- permutation test


def test_detects_members_when_generated_follows_them():
    g, m, n = _gaussians(5, n_g=100, n_m=60, n_n=60, dim=8, shift_n=0.7)
    res = membership_mmd_test(g, m, n, num_permutations=500, seed=0)
    assert res["statistic"] > 0
    assert res["p_value"] < 0.01
    assert res["p_value"] == pytest.approx(1 / 501)  # no relabelling matches the real split


def test_not_significant_when_members_and_nonmembers_share_a_distribution():
    g, m, n = _gaussians(6, n_g=100, n_m=60, n_n=60, dim=8, shift_n=0.0)
    res = membership_mmd_test(g, m, n, num_permutations=500, seed=0)
    assert res["p_value"] > 0.05


def test_p_value_is_roughly_uniform_under_the_null():
    # Small sizes keep it fast; the rejection rate at 0.1 must be near 0.1, not near 0 or 1.
    ps = [
        membership_mmd_test(*_gaussians(100 + s, 20, 15, 15, 3, 0.0), num_permutations=99, seed=s)[
            "p_value"
        ]
        for s in range(60)
    ]
    assert 0.0 < np.mean(np.asarray(ps) <= 0.1) < 0.3


def test_result_fields_and_statistic_definition():
    g, m, n = _gaussians(7, n_g=30, n_m=20, n_n=25, dim=4, shift_n=0.5)
    res = membership_mmd_test(g, m, n, num_permutations=50, seed=3)
    assert set(res) == {
        "statistic",
        "mmd2_members",
        "mmd2_nonmembers",
        "p_value",
        "bandwidth",
        "num_permutations",
        "n_generated",
        "n_members",
        "n_nonmembers",
    }
    for key in ("statistic", "mmd2_members", "mmd2_nonmembers", "p_value", "bandwidth"):
        assert type(res[key]) is float
    for key in ("num_permutations", "n_generated", "n_members", "n_nonmembers"):
        assert type(res[key]) is int
    assert (res["n_generated"], res["n_members"], res["n_nonmembers"]) == (30, 20, 25)
    assert res["statistic"] == res["mmd2_nonmembers"] - res["mmd2_members"]
    h = median_bandwidth(g, m, n)
    assert res["bandwidth"] == h
    assert abs(res["mmd2_members"] - mmd2_unbiased(g, m, h)) < 1e-12
    assert abs(res["mmd2_nonmembers"] - mmd2_unbiased(g, n, h)) < 1e-12
    assert 1 / 51 <= res["p_value"] <= 1.0
    fixed = membership_mmd_test(g, m, n, num_permutations=50, seed=3, bandwidth=2.0)
    assert fixed["bandwidth"] == 2.0
    assert abs(fixed["mmd2_members"] - mmd2_unbiased(g, m, 2.0)) < 1e-12


def test_same_seed_same_p_value():
    g, m, n = _gaussians(8, n_g=40, n_m=25, n_n=25, dim=4, shift_n=0.2)
    a = membership_mmd_test(g, m, n, num_permutations=300, seed=11)
    b = membership_mmd_test(g, m, n, num_permutations=300, seed=11)
    assert a == b
    ps = {membership_mmd_test(g, m, n, num_permutations=300, seed=s)["p_value"] for s in range(5)}
    assert len(ps) > 1  # the seed does drive the permutations


@pytest.mark.parametrize("n_m, n_n", [(4, 5), (6, 6), (3, 8)])
def test_fast_permutation_path_matches_slow_reference(n_m, n_n):
    # Tiny pools so relabellings often reproduce the observed split: exercises ties too.
    g, m, n = _gaussians(9, n_g=7, n_m=n_m, n_n=n_n, dim=3, shift_n=0.4)
    num, seed, h = 200, 4, 1.3
    res, d_obs, d_perm = _membership_mmd(g, m, n, num, seed, h)

    pool = np.concatenate([m, n])
    rng = np.random.default_rng(seed)  # the documented permutation scheme
    slow = []
    for _ in range(num):
        perm = rng.permutation(len(pool))
        pm, pn = pool[perm[:n_m]], pool[perm[n_m:]]
        slow.append(mmd2_unbiased(g, pn, h) - mmd2_unbiased(g, pm, h))
    slow = np.asarray(slow)
    slow_obs = mmd2_unbiased(g, n, h) - mmd2_unbiased(g, m, h)

    assert abs(d_obs - slow_obs) < 1e-10
    assert abs(res["statistic"] - slow_obs) < 1e-10
    np.testing.assert_allclose(d_perm, slow, rtol=0, atol=1e-10)
    expected_p = (1 + np.count_nonzero(slow >= slow_obs - 1e-12)) / (1 + num)
    assert res["p_value"] == expected_p
    # Relabellings that reproduce the observed member set count as ">=" despite rounding.
    same_set = np.abs(slow - slow_obs) < 1e-12
    assert same_set.any()


def test_chunking_does_not_change_results(monkeypatch):
    import raydefense.quality.mmd as mmd

    g, m, n = _gaussians(10, n_g=20, n_m=10, n_n=12, dim=3, shift_n=0.3)
    full = _membership_mmd(g, m, n, 100, 1, None)
    monkeypatch.setattr(mmd, "_BLOCK_ELEMENTS", 22 * 7)  # 7 permutations per chunk
    chunked = _membership_mmd(g, m, n, 100, 1, None)
    assert full[0] == chunked[0]
    np.testing.assert_allclose(full[2], chunked[2], rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(generated=np.zeros(5)), "generated must be a 2-D"),
        (dict(members=np.zeros((4, 3, 1))), "members must be a 2-D"),
        (dict(nonmembers=np.zeros((4, 2))), "feature dimensions differ"),
        (dict(generated=np.zeros((1, 3))), "generated needs at least 2 rows"),
        (dict(members=np.zeros((1, 3))), "members needs at least 2 rows"),
        (dict(nonmembers=np.zeros((0, 3))), "nonmembers needs at least 2 rows"),
        (dict(members=np.array([[0.0, np.nan, 1.0]] * 3)), "members contains non-finite"),
        (dict(nonmembers=np.array([[0.0, np.inf, 1.0]] * 3)), "nonmembers contains non-finite"),
        (dict(num_permutations=0), "num_permutations must be >= 1"),
        (dict(num_permutations=2.5), "num_permutations must be an int"),
        (dict(bandwidth=-1.0), "bandwidth must be a positive"),
        (dict(bandwidth=float("nan")), "bandwidth must be a positive"),
    ],
)
def test_membership_test_rejects_bad_inputs(kwargs, match):
    rng = np.random.default_rng(0)
    args = dict(
        generated=rng.normal(size=(5, 3)),
        members=rng.normal(size=(4, 3)),
        nonmembers=rng.normal(size=(4, 3)),
        num_permutations=10,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as info:
        membership_mmd_test(**args)
    assert "\n" not in str(info.value)
