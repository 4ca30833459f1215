"""Distribution-level membership test with the kernel MMD (pure numpy).

Instance-level membership attacks score one sample at a time and underestimate what a distilled
diffusion model leaks (arXiv 2502.02970): the generator may reproduce the *distribution* of its
training set without copying any single image. This module asks the distribution-level question
directly: given embeddings of generated samples G, of training members M and of non-members N
(drawn from the same population as M), is G closer to M than to N in maximum mean discrepancy?

Statistic: D = MMD^2_u(G, N) - MMD^2_u(G, M) with an RBF kernel (positive = G is closer to the
members). Under the null hypothesis the member/non-member labels are exchangeable with respect
to G, so the p-value comes from a permutation test that relabels the pooled M and N rows.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

# Rows used by the median heuristic: the pairwise distance matrix is O(rows^2).
_MEDIAN_MAX_ROWS = 2000
# Bound on the entries of one [permutations, pool] block in the permutation test (float64, 32 MiB).
_BLOCK_ELEMENTS = 1 << 22
# Permuted statistics within this of the observed one count as ties (>=). Kernel values lie in
# [0, 1], so D is O(1) and float64 rounding of the fast and slow paths is ~1e-15: the same
# member set evaluated twice must count as "as extreme", never fall below by rounding.
_TIE_TOLERANCE = 1e-12


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [rows, features] array, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")
    return a


def _check_bandwidth(bandwidth: float) -> float:
    h = float(bandwidth)
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"bandwidth must be a positive finite number, got {bandwidth!r}")
    return h


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances [n_a, n_b] via ||a||^2 + ||b||^2 - 2 a.b, clipped at 0.

    Both sets are shifted by their common mean first: distances are unchanged, but the norms
    shrink, which reduces cancellation (identical rows then give exactly 0 when the data are
    constant).
    """
    shift = (a.sum(axis=0) + b.sum(axis=0)) / (a.shape[0] + b.shape[0])
    a = a - shift
    b = b - shift
    sq = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(sq, 0.0)


def median_bandwidth(*sets: np.ndarray) -> float:
    """Median heuristic: median pairwise Euclidean distance over the union of `sets`.

    sets: [n_i, D] float arrays with the same D. The diagonal (zero self-distances) is
    excluded. To stay cheap at most 2,000 rows are used, chosen deterministically: the first
    rows of each set, in proportion to the set sizes (at least one per set), so that no set is
    dropped when an early set alone is large. Returns a positive float; 1.0 when the median is 0
    (e.g. all rows identical).
    """
    if not sets:
        raise ValueError("median_bandwidth needs at least one array")
    mats = [_as_matrix(s, f"set {i}") for i, s in enumerate(sets)]
    dims = {m.shape[1] for m in mats}
    if len(dims) != 1:
        raise ValueError(f"sets differ in feature dimension: {[m.shape[1] for m in mats]}")
    total = sum(m.shape[0] for m in mats)
    if total > _MEDIAN_MAX_ROWS:
        quotas = [
            max(1, (_MEDIAN_MAX_ROWS * m.shape[0]) // total) if m.shape[0] else 0 for m in mats
        ]
        mats = [m[:q] for m, q in zip(mats, quotas)]
    x = np.concatenate(mats, axis=0)
    if x.shape[0] < 2:
        raise ValueError(f"median_bandwidth needs at least 2 rows in total, got {x.shape[0]}")
    iu = np.triu_indices(x.shape[0], k=1)  # each pair once, no diagonal: same median
    median = float(np.median(np.sqrt(_sq_distances(x, x)[iu])))
    return median if median > 0 else 1.0


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian kernel exp(-||a_i - b_j||^2 / (2 bandwidth^2)).

    a: [n_a, D], b: [n_b, D]; returns float64 [n_a, n_b]. Computed in float64 with the expanded
    squared distance (one matmul) clipped at 0 so rounding can never give a kernel value > 1.
    """
    a = _as_matrix(a, "a")
    b = _as_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b differ in feature dimension: {a.shape[1]} vs {b.shape[1]}")
    h = _check_bandwidth(bandwidth)
    return np.exp(_sq_distances(a, b) / (-2.0 * h * h))


def _offdiag_mean(k: np.ndarray) -> float:
    n = k.shape[0]
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


def _mmd2_from_blocks(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    return _offdiag_mean(kxx) + _offdiag_mean(kyy) - 2.0 * float(kxy.mean())


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD^2 estimate (Gretton et al., 2012, eq. 3) with an RBF kernel.

    x: [m, D], y: [n, D], m, n >= 2. The within-set terms average over i != j (the diagonal
    would add a constant bias); the estimate can be slightly negative when x and y come from the
    same distribution, and is 0 in expectation then.
    """
    x = _as_matrix(x, "x")
    y = _as_matrix(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y differ in feature dimension: {x.shape[1]} vs {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            f"unbiased MMD^2 needs at least 2 rows per set, got {x.shape[0]} and {y.shape[0]}"
        )
    h = _check_bandwidth(bandwidth)
    return _mmd2_from_blocks(rbf_kernel(x, x, h), rbf_kernel(y, y, h), rbf_kernel(x, y, h))


def _permuted_statistics(
    k_pool: np.ndarray, col_mean_g: np.ndarray, member_mask: np.ndarray, n_members: int
) -> np.ndarray:
    """D for each row of `member_mask` (the G-G term cancels and is left out).

    k_pool: [p, p] kernel over the pooled rows; col_mean_g: [p] mean of K(G, pool) over G;
    member_mask: [B, p] 0/1 float, n_members ones per row. Returns [B].

    With z the member indicator and w = 1 - z, the within-set sums are quadratic forms:
    sum_{i != j in M} K = z'Kz - z'diag(K), and w'K = 1'K - z'K, so one [B, p] x [p, p] matmul
    gives every term for B relabellings at once.
    """
    n_pool = k_pool.shape[0]
    n_non = n_pool - n_members
    z = member_mask
    w = 1.0 - z
    zk = z @ k_pool
    wk = k_pool.sum(axis=0)[None, :] - zk
    diag = np.diagonal(k_pool)
    zdiag = z @ diag
    within_m = ((zk * z).sum(axis=1) - zdiag) / (n_members * (n_members - 1))
    within_n = ((wk * w).sum(axis=1) - (diag.sum() - zdiag)) / (n_non * (n_non - 1))
    cross_m = (z @ col_mean_g) / n_members
    cross_n = (col_mean_g.sum() - z @ col_mean_g) / n_non
    # MMD^2(G, N) - MMD^2(G, M) without the shared G-G term.
    return (within_n - 2.0 * cross_n) - (within_m - 2.0 * cross_m)


def membership_mmd_test(
    generated: np.ndarray,
    members: np.ndarray,
    nonmembers: np.ndarray,
    num_permutations: int = 1000,
    seed: int = 0,
    bandwidth: Optional[float] = None,
) -> dict:
    """Permutation test: are the generated samples closer to the members than to non-members?

    generated: [n_g, D], members: [n_m, D], nonmembers: [n_n, D] float embeddings, finite,
    at least 2 rows each. Statistic D = MMD^2_u(G, N) - MMD^2_u(G, M) (positive = closer to the
    members). Null: members and non-members are exchangeable with respect to G. Each permutation
    draws `rng.permutation(n_m + n_n)` from `numpy.random.default_rng(seed)` over the pooled rows
    [M; N] and takes its first n_m indices as the "members"; p = (1 + #{D_perm >= D_obs}) /
    (1 + num_permutations), ties up to float rounding counting as >=. bandwidth None = the median
    heuristic over G, M and N.

    One kernel matrix over [G; M; N] is computed once (memory O((n_g + n_m + n_n)^2)); each
    permutation only re-weights its blocks. Returns plain Python numbers: statistic,
    mmd2_members, mmd2_nonmembers, p_value, bandwidth, num_permutations, n_generated, n_members,
    n_nonmembers.
    """
    return _membership_mmd(generated, members, nonmembers, num_permutations, seed, bandwidth)[0]


def _membership_mmd(
    generated: np.ndarray,
    members: np.ndarray,
    nonmembers: np.ndarray,
    num_permutations: int,
    seed: int,
    bandwidth: Optional[float],
) -> tuple[dict, float, np.ndarray]:
    """membership_mmd_test, plus the fast-path observed D and the permuted Ds [num_permutations]
    (for tests that check the fast path against a direct recomputation)."""
    g = _as_matrix(generated, "generated")
    m = _as_matrix(members, "members")
    n = _as_matrix(nonmembers, "nonmembers")
    if not (g.shape[1] == m.shape[1] == n.shape[1]):
        raise ValueError(
            f"feature dimensions differ: generated {g.shape[1]}, members "
            f"{m.shape[1]}, nonmembers {n.shape[1]}"
        )
    for name, a in (("generated", g), ("members", m), ("nonmembers", n)):
        if a.shape[0] < 2:
            raise ValueError(f"{name} needs at least 2 rows, got {a.shape[0]}")
    if isinstance(num_permutations, bool) or not isinstance(num_permutations, (int, np.integer)):
        raise ValueError(f"num_permutations must be an int, got {num_permutations!r}")
    if num_permutations < 1:
        raise ValueError(f"num_permutations must be >= 1, got {num_permutations}")
    h = median_bandwidth(g, m, n) if bandwidth is None else _check_bandwidth(bandwidth)

    n_g, n_m, n_n = g.shape[0], m.shape[0], n.shape[0]
    n_pool = n_m + n_n
    stacked = np.concatenate([g, m, n], axis=0)
    k = rbf_kernel(stacked, stacked, h)  # the only kernel evaluation: [n_g + p, n_g + p]
    k_gg, k_gp, k_pp = k[:n_g, :n_g], k[:n_g, n_g:], k[n_g:, n_g:]

    # Reported values: the plain estimator on the observed split.
    mmd2_m = _mmd2_from_blocks(k_gg, k_pp[:n_m, :n_m], k_gp[:, :n_m])
    mmd2_n = _mmd2_from_blocks(k_gg, k_pp[n_m:, n_m:], k_gp[:, n_m:])
    statistic = mmd2_n - mmd2_m

    # The test compares like with like: the observed D through the same fast path as the
    # permuted ones (it differs from `statistic` only by rounding of the cancelled G-G term).
    col_mean_g = k_gp.mean(axis=0)
    observed_mask = np.zeros((1, n_pool))
    observed_mask[0, :n_m] = 1.0
    d_obs = _permuted_statistics(k_pp, col_mean_g, observed_mask, n_m)[0]

    rng = np.random.default_rng(seed)
    chunk = max(1, _BLOCK_ELEMENTS // n_pool)
    d_perm = np.empty(num_permutations)
    for start in range(0, num_permutations, chunk):
        b = min(chunk, num_permutations - start)
        # One rng.permutation per relabelling (cheap next to the matmul) keeps the draws
        # independent of the chunk size, so results do not depend on _BLOCK_ELEMENTS.
        idx = np.stack([rng.permutation(n_pool)[:n_m] for _ in range(b)])
        mask = np.zeros((b, n_pool))
        mask[np.repeat(np.arange(b), n_m), idx.ravel()] = 1.0
        d_perm[start : start + b] = _permuted_statistics(k_pp, col_mean_g, mask, n_m)
    exceed = int(np.count_nonzero(d_perm >= d_obs - _TIE_TOLERANCE))

    result = {
        "statistic": float(statistic),
        "mmd2_members": float(mmd2_m),
        "mmd2_nonmembers": float(mmd2_n),
        "p_value": float((1 + exceed) / (1 + num_permutations)),
        "bandwidth": float(h),
        "num_permutations": int(num_permutations),
        "n_generated": int(n_g),
        "n_members": int(n_m),
        "n_nonmembers": int(n_n),
    }
    return result, float(d_obs), d_perm
