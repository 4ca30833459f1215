"""Membership-inference metrics (spec/attacks.md §7; DESIGN.md invariant 5).

Scores are oriented higher = member; labels are 1 = member, 0 = non-member. The ROC is sklearn's
exact curve over every distinct score (no grid, no dropped points). Operating-point thresholds are
chosen on a calibration split and applied to a disjoint test split; every reported number is on the
test split; `empirical_epsilon` turns an operating point into the epsilon it proves. Pure numpy +
sklearn (+ scipy for Clopper-Pearson); no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

TPR_RULES = ("max_below", "closest", "strict_below")
# Tolerance in false-positive *counts* so that FPR == alpha is not lost to float rounding.
_COUNT_TOL = 1e-9

TPR_RULE_TEXT = (
    "TPR@FPR = max TPR over ROC points with FPR <= alpha, read off the test split's ROC (its "
    "threshold is picked with test labels; tpr_at_1pct_fpr_closest uses the ROC point whose FPR "
    "is closest to 1%, as SecMI/GSA do); asr_calibrated applies the "
    "accuracy-maximising threshold (member iff score >= threshold) chosen on the calibration split "
    "to the test split; asr_oracle picks that threshold on the test split itself."
)


def _validate(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Returns (scores [N] float64, labels [N] int64 in {0, 1}) or raises ValueError."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1 or s.shape != y.shape:
        raise ValueError(
            f"scores and labels must be 1-D of equal length (got shapes {s.shape} and {y.shape})"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores contain {int(np.sum(~np.isfinite(s)))} non-finite values")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 1 (member) or 0 (non-member)")
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(
            f"need both members and non-members (got {n_pos} members, {y.size - n_pos} non-members)"
        )
    return s, y


def roc(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC curve, member positive.

    Args:
        scores: [N] floats, higher = member. labels: [N] in {0, 1}.
    Returns:
        (fpr, tpr, thresholds), each [M]; fpr and tpr nondecreasing in [0, 1], starting at (0, 0)
        with threshold +inf; point i predicts member iff score >= thresholds[i].
    """
    s, y = _validate(scores, labels)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auc(scores: Any, labels: Any) -> float:
    """Area under the exact ROC curve, in [0, 1] (0.5 = chance)."""
    s, y = _validate(scores, labels)
    return float(roc_auc_score(y, s))


def tpr_at_fpr(scores: Any, labels: Any, alpha: float, rule: str = "max_below") -> float:
    """TPR at a false-positive rate alpha, in [0, 1].

    Rules:
        "max_below":    max TPR over ROC points with FPR <= alpha (canonical, conservative).
        "closest":      TPR at the ROC point whose FPR is closest to alpha (SecMI; the FPR may
                        exceed alpha).
                        The ROC is read as a curve: at that FPR the highest TPR counts; if two
                        FPRs are equally close, the lower one wins.
        "strict_below": TPR at the last ROC point with FPR < alpha (PIA); 0.0 when alpha = 0.
    """
    if rule not in TPR_RULES:
        raise ValueError(f"unknown TPR@FPR rule {rule!r}; choose one of: {', '.join(TPR_RULES)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    s, y = _validate(scores, labels)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    n_neg = int(y.size - y.sum())
    fp = np.rint(fpr * n_neg)  # exact false-positive counts
    target = alpha * n_neg
    if rule == "max_below":
        return float(tpr[fp <= target + _COUNT_TOL].max())  # fp[0] = 0 is always included
    if rule == "strict_below":
        mask = fp < target - _COUNT_TOL
        return float(tpr[mask].max()) if mask.any() else 0.0
    dist = np.abs(fp - target)
    f_star = fp[dist <= dist.min() + _COUNT_TOL].min()  # equidistant: the FPR below alpha wins
    return float(tpr[fp == f_star].max())  # the curve's TPR at that FPR (top of a vertical step)


def best_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """The accuracy-maximising threshold (predict member iff score >= threshold).

    Candidates are +inf (nobody is a member) and every distinct score; ties go to the highest.
    Returns:
        (threshold, accuracy in [0, 1]) on the given data.
    """
    s, y = _validate(scores, labels)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    acc = (tpr * n_pos + (1.0 - fpr) * n_neg) / y.size
    i = int(np.argmax(acc))
    return float(thr[i]), float(acc[i])


def accuracy_at(scores: Any, labels: Any, threshold: float) -> float:
    """Accuracy in [0, 1] of "member iff score >= threshold"."""
    s, y = _validate(scores, labels)
    return float(np.mean((s >= threshold) == (y == 1)))


@dataclass(frozen=True)
class TprAtFpr:
    """tpr_at_fpr with fixed (alpha, rule) as a metric callable (scores, labels) -> float.

    bootstrap_ci recognises it (and `auc`) and evaluates all resamples at once from counts.
    """

    alpha: float
    rule: str = "max_below"

    def __call__(self, scores: Any, labels: Any) -> float:
        return tpr_at_fpr(scores, labels, self.alpha, self.rule)


def _resample_chunks(y: np.ndarray, n: int, seed: int) -> Iterator[np.ndarray]:
    """Stratified bootstrap indices into the original arrays, in chunks of shape [m, N].

    Columns 0..n_pos-1 are resampled members, the rest resampled non-members, so the label row of
    every resample is the fixed vector [1]*n_pos + [0]*n_neg. Chunks bound memory to ~2M indices.
    """
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n, 2_000_000 // y.size))
    done = 0
    while done < n:
        m = min(chunk, n - done)
        yield np.concatenate(
            [
                pos[rng.integers(0, pos.size, (m, pos.size))],
                neg[rng.integers(0, neg.size, (m, neg.size))],
            ],
            axis=1,
        )
        done += m


def _group_counts(
    group: np.ndarray, n_groups: int, n_pos: int, idx: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-resample member / non-member multiplicities of each distinct score.

    Args:
        group: [N] rank of each sample's score among the distinct scores (ascending).
        n_groups: number of distinct scores G. n_pos: members (the first n_pos columns of idx).
        idx: [m, N] resample indices from _resample_chunks.
    Returns:
        (w_pos, w_neg), each [m, G] float64.
    """
    m = idx.shape[0]
    keys = np.arange(m)[:, None] * n_groups + group[idx]  # one bincount for all resamples
    size = m * n_groups
    w_pos = np.bincount(keys[:, :n_pos].ravel(), minlength=size).reshape(m, n_groups)
    w_neg = np.bincount(keys[:, n_pos:].ravel(), minlength=size).reshape(m, n_groups)
    return w_pos.astype(np.float64), w_neg.astype(np.float64)


def _auc_counts(w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC (ties count 1/2) per resample: [m]."""
    below = np.cumsum(w_neg, axis=1) - w_neg  # non-members strictly below each distinct score
    return (w_pos * (below + 0.5 * w_neg)).sum(1) / (w_pos.sum(1) * w_neg.sum(1))


def _tpr_max_below_counts(w_pos: np.ndarray, w_neg: np.ndarray, alpha: float) -> np.ndarray:
    """max TPR over thresholds (distinct scores, member iff >=) with FPR <= alpha: [m]."""
    n_pos, n_neg = w_pos.sum(1, keepdims=True), w_neg.sum(1, keepdims=True)
    tp = np.cumsum(w_pos[:, ::-1], axis=1)[:, ::-1]  # members with score >= each distinct score
    fp = np.cumsum(w_neg[:, ::-1], axis=1)[:, ::-1]
    ok = fp <= alpha * n_neg + _COUNT_TOL
    return np.where(ok, tp, 0.0).max(1) / n_pos[:, 0]  # 0.0 stands for the +inf threshold


def bootstrap_ci(
    fn: Callable[[np.ndarray, np.ndarray], float],
    scores: Any,
    labels: Any,
    n: int,
    seed: int,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile CI of fn(scores, labels) under a stratified bootstrap.

    Members and non-members are resampled separately (with replacement, own sizes), so every
    resample keeps both classes and the original class balance. `auc` and
    `TprAtFpr(alpha, "max_below")` are evaluated for all resamples at once from per-score counts
    (no per-resample sort); any other fn is called once per resample on the same resamples.

    Args:
        fn: metric of (scores [N], labels [N]) -> float. n: resamples (0 -> None).
        seed: numpy seed; the same seed gives the same resamples. level: in (0, 1).
    Returns:
        [lo, hi] with lo <= hi, or None when n == 0.
    """
    if n < 0:
        raise ValueError(f"bootstrap resamples must be >= 0 (got {n})")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    if n == 0:
        return None
    s, y = _validate(scores, labels)
    n_pos = int(y.sum())
    lab = np.concatenate([np.ones(n_pos, np.int64), np.zeros(y.size - n_pos, np.int64)])
    fast = fn is auc or (isinstance(fn, TprAtFpr) and fn.rule == "max_below")
    uniq, group = np.unique(s, return_inverse=True)
    parts: list[np.ndarray] = []
    for idx in _resample_chunks(y, n, seed):
        if fast:
            w_pos, w_neg = _group_counts(group, uniq.size, n_pos, idx)
            # on the fast path fn is either `auc` or a max_below TprAtFpr
            parts.append(
                _tpr_max_below_counts(w_pos, w_neg, fn.alpha)
                if isinstance(fn, TprAtFpr)
                else _auc_counts(w_pos, w_neg)
            )
        else:
            parts.append(np.array([fn(row, lab) for row in s[idx]], dtype=np.float64))
    values = np.concatenate(parts)
    lo, hi = np.quantile(values, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return [float(lo), float(hi)]


def orientation(cal_scores: Any, cal_labels: Any) -> int:
    """+1 when the scores separate members upward on the calibration split (AUC >= 0.5), -1 when
    an attacker who sees the calibration labels would flip them. Ties keep the attack's sign."""
    return 1 if auc(cal_scores, cal_labels) >= 0.5 else -1


def resolvable(alpha: float, n_nonmembers: int) -> bool:
    """An FPR level alpha is resolvable with n non-members when it allows at least one false
    positive (alpha * n >= 1); below that every threshold means 0% FPR."""
    return alpha * n_nonmembers >= 1.0 - _COUNT_TOL


def threshold_at_fpr(nonmember_scores: Any, alpha: float) -> float:
    """The lowest threshold ("member iff score >= threshold") that flags at most
    floor(alpha * n) of the given non-members: just above the (floor(alpha * n) + 1)-th largest
    non-member score. Ties at that score are all excluded, so the FPR never exceeds alpha on
    these scores.

    Args: nonmember_scores [N] finite floats; alpha in [0, 1).
    Returns: a float threshold (+inf-free: the next float above a score)."""
    s = np.sort(np.asarray(nonmember_scores, dtype=np.float64))[::-1]
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("threshold_at_fpr needs finite non-member scores")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1) (got {alpha})")
    k = int(np.floor(alpha * s.size + _COUNT_TOL))  # false positives allowed
    return float(np.nextafter(s[k], np.inf))


def calibrated_operating_point(
    cal_scores: Any, cal_labels: Any, test_scores: Any, test_labels: Any, alpha: float
) -> dict[str, Any]:
    """TPR and FPR realised on the test split by the threshold fixed at FPR <= alpha on the
    calibration split's non-members (what an attacker without test labels can do).

    Returns {"tpr", "fpr", "threshold"}; all None (and "resolution_limited": True) when alpha is
    below 1 / (calibration non-members): no threshold can aim at that level."""
    cal_s, cal_y = _validate(cal_scores, cal_labels)
    s, y = _validate(test_scores, test_labels)
    neg = cal_s[cal_y == 0]
    if not resolvable(alpha, neg.size):
        return {"tpr": None, "fpr": None, "threshold": None, "resolution_limited": True}
    thr = threshold_at_fpr(neg, alpha)
    flagged = s >= thr
    return {
        "tpr": float(flagged[y == 1].mean()),
        "fpr": float(flagged[y == 0].mean()),
        "threshold": thr,
        "resolution_limited": False,
    }


OPERATING_LEVELS = ((0.01, "1pct"), (0.001, "0.1pct"))

CALIBRATED_RULE_TEXT = (
    "Scores are oriented on the calibration split (flipped when its AUC < 0.5; `orientation`). "
    "tpr_at_<a>_fpr_calibrated / fpr_at_<a>_fpr_calibrated: the threshold that flags at most a of "
    "the calibration non-members, applied to the test split (realised TPR and FPR). A level below "
    "1 / n_nonmembers of its split is resolution-limited: no number is given."
)


def attack_metrics(
    cal_scores: Any,
    cal_labels: Any,
    test_scores: Any,
    test_labels: Any,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The results.json metric fields for one (target, attack setting).

    The score orientation is fixed on the calibration split (`orientation`: -1 flips an attack
    whose calibration AUC is below 0.5, as an attacker holding calibration labels would); every
    metric below is of the oriented scores. Choices (orientation, thresholds) use the calibration
    split only; every reported number is on the test split, except `auc_calibration`.

    Args:
        cal_scores, cal_labels: calibration split ([N_cal]). test_scores, test_labels: disjoint
            test split ([N_test]). Labels 1 = member.
        bootstrap: stratified resamples for the *_ci keys (0 -> the keys are omitted).
        seed: bootstrap seed.
    Returns:
        JSON-serialisable dict with keys orientation, auc_calibration, auc, auc_as_scored, auc_ci,
        tpr_at_1pct_fpr, tpr_at_1pct_fpr_ci, tpr_at_1pct_fpr_closest, tpr_at_0.1pct_fpr,
        tpr_at_0pct_fpr, tpr_at_{1,0.1}pct_fpr_calibrated, fpr_at_{1,0.1}pct_fpr_calibrated,
        resolution_limited (the keys left None because their FPR level is below
        1 / n_nonmembers), asr_calibrated, asr_oracle, tpr_rule, n_members, n_nonmembers.
    """
    try:
        cal_s, cal_y = _validate(cal_scores, cal_labels)
    except ValueError as e:
        raise ValueError(f"calibration split: {e}") from None
    try:
        s, y = _validate(test_scores, test_labels)
    except ValueError as e:
        raise ValueError(f"test split: {e}") from None

    sign = orientation(cal_s, cal_y)
    auc_as_scored = auc(s, y)
    cal_s, s = sign * cal_s, sign * s
    n_neg = int(y.size - y.sum())
    limited: list[str] = []
    tpr1 = TprAtFpr(0.01)
    threshold, _ = best_threshold(cal_s, cal_y)
    out: dict[str, Any] = {
        "orientation": sign,
        "auc_calibration": auc(cal_s, cal_y),
        "auc": auc(s, y),
        "auc_as_scored": auc_as_scored,
    }
    if bootstrap:
        out["auc_ci"] = bootstrap_ci(auc, s, y, bootstrap, seed)
    for alpha, tag in OPERATING_LEVELS:
        key = f"tpr_at_{tag}_fpr"
        if resolvable(alpha, n_neg):
            out[key] = tpr_at_fpr(s, y, alpha)
            if bootstrap and alpha == 0.01:
                out[f"{key}_ci"] = bootstrap_ci(tpr1, s, y, bootstrap, seed)
        else:
            out[key] = None
            limited.append(key)
            if bootstrap and alpha == 0.01:
                out[f"{key}_ci"] = None
                limited.append(f"{key}_ci")
        if alpha == 0.01:
            out["tpr_at_1pct_fpr_closest"] = tpr_at_fpr(s, y, 0.01, "closest")  # SecMI/GSA's rule
    out["tpr_at_0pct_fpr"] = tpr_at_fpr(s, y, 0.0)
    for alpha, tag in OPERATING_LEVELS:
        op = calibrated_operating_point(cal_s, cal_y, s, y, alpha)
        out[f"tpr_at_{tag}_fpr_calibrated"] = op["tpr"]
        out[f"fpr_at_{tag}_fpr_calibrated"] = op["fpr"]
        if op["resolution_limited"]:
            limited += [f"tpr_at_{tag}_fpr_calibrated", f"fpr_at_{tag}_fpr_calibrated"]
    out["resolution_limited"] = limited
    out["asr_calibrated"] = accuracy_at(s, y, threshold)
    out["asr_oracle"] = best_threshold(s, y)[1]
    out["tpr_rule"] = f"{TPR_RULE_TEXT} {CALIBRATED_RULE_TEXT}"
    out["n_members"] = int(y.sum())
    out["n_nonmembers"] = n_neg
    return out


# ------------------------------------------------------------------------- empirical epsilon


def clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds of a binomial proportion k / n, each holding with
    probability >= level: (lower, upper), exact (Beta quantiles), 0 / 1 at the ends."""
    from scipy.stats import beta

    if not 0 <= k <= n or n < 1:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n and n >= 1 (got k={k}, n={n})")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    lower = 0.0 if k == 0 else float(beta.ppf(1.0 - level, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(level, k + 1, n - k))
    return lower, upper


def empirical_epsilon(
    true_positives: int,
    n_members: int,
    false_positives: int,
    n_nonmembers: int,
    delta: float = 0.0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The lower bound on epsilon an attack's operating point proves (Jagielski et al. 2020;
    Nasr et al. 2021): an (epsilon, delta)-DP training forces TPR <= e^eps FPR + delta and
    TNR <= e^eps FNR + delta at any threshold, so
    eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR))).
    With counts, TPR is replaced by its Clopper-Pearson lower bound and FPR by its upper bound,
    each one-sided at (1 + confidence) / 2, so the bound holds with probability >= confidence
    (a union bound): small counts give a small, honest epsilon, never an infinite one. The
    threshold must be chosen without these rows (the calibrated operating point is).

    Returns: {"epsilon_lower": the bound (>= 0), "epsilon_point": log(TPR / FPR) of the raw
    rates (None when FPR = 0), "tpr_lower", "fpr_upper", "confidence", "delta"}.
    """
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1) (got {delta})")
    level = (1.0 + confidence) / 2.0
    tpr_lo, _ = clopper_pearson(true_positives, n_members, level)
    _, fpr_hi = clopper_pearson(false_positives, n_nonmembers, level)
    bounds = [0.0]
    if tpr_lo - delta > 0 and fpr_hi > 0:
        bounds.append(math.log((tpr_lo - delta) / fpr_hi))
    if 1.0 - fpr_hi - delta > 0 and tpr_lo < 1.0:
        bounds.append(math.log((1.0 - fpr_hi - delta) / (1.0 - tpr_lo)))
    tpr, fpr = true_positives / n_members, false_positives / n_nonmembers
    return {
        "epsilon_lower": max(bounds),
        "epsilon_point": math.log(tpr / fpr) if fpr > 0 and tpr > 0 else None,
        "tpr_lower": tpr_lo,
        "fpr_upper": fpr_hi,
        "confidence": confidence,
        "delta": delta,
    }
