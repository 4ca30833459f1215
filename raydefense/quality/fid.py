"""Feature-space quality metrics: Frechet distance, improved precision/recall, Inception Score.

All functions take precomputed features (Inception pool3, or the domain classifier's penultimate
layer), so they are independent of the feature extractor. Statistics are computed in float64.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from scipy.special import rel_entr

# Bound on the number of entries of one distance block (float64: 8 bytes each -> 32 MiB).
_BLOCK_ELEMENTS = 1 << 22


def _as_2d_float64(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf")
    return a


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features.

    feats: [N, D] real, N >= 2. Returns (mu [D] float64, sigma [D, D] float64), sigma unbiased
    (ddof=1), as in the reference FID implementations.
    """
    a = _as_2d_float64(feats, "feats")
    if a.shape[0] < 2:
        raise ValueError("feature_stats needs at least 2 samples for a covariance")
    mu = a.mean(axis=0)
    # np.cov returns a 0-d array when D == 1; keep the [D, D] shape.
    sigma = np.atleast_2d(np.cov(a, rowvar=False, ddof=1))
    return mu, sigma


def _sqrtm_checked(m: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy sqrtm; the flag says whether the result is usable (finite, no singularity warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = scipy.linalg.sqrtm(m)
    ok = bool(np.isfinite(root).all()) and not any(
        issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught
    )
    return root, ok


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 @ sigma2)).
    mu*: [D]; sigma*: [D, D] symmetric PSD. Returns a float >= 0 (up to round-off).

    A singular product (e.g. fewer samples than dimensions) is handled as in pytorch-fid: eps * I
    is added to both covariances and the root recomputed. A negligible imaginary part (round-off
    of the Schur method) is dropped; a large one raises ValueError since the result would be
    meaningless.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must be [{d}, {d}], got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    covmean, ok = _sqrtm_checked(sigma1 @ sigma2)
    if not ok:
        offset = np.eye(d) * eps
        covmean, ok = _sqrtm_checked((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("sqrtm(sigma1 @ sigma2) is not finite even after adding eps * I")
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=1e-3):
            m = float(np.max(np.abs(covmean.imag)))
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has a large imaginary component ({m:.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to real [N, D] and fake [M, D] features.

    N, M >= 2. Returns a float >= 0 (up to round-off); lower is better.
    """
    r = _as_2d_float64(real, "real")
    f = _as_2d_float64(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dims differ: real {r.shape[1]} vs fake {f.shape[1]}")
    return frechet_distance(*feature_stats(r), *feature_stats(f))


def _chunk_rows(n_cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_cols))


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of x [N, D] to its k-th nearest neighbour in x, self excluded: [N]."""
    n = x.shape[0]
    step = _chunk_rows(n)
    out = []
    for s in range(0, n, step):
        d = torch.cdist(x[s : s + step], x)
        # The k+1 smallest include the point itself (distance 0), so index k is the k-th neighbour.
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def _covered(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each query row: does it lie in the union of balls B(ref_j, radii_j)? -> bool [Q]."""
    step = _chunk_rows(ref.shape[0])
    out = []
    for s in range(0, query.shape[0], step):
        d = torch.cdist(query[s : s + step], ref)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019) in feature space.

    real: [N, D], fake: [M, D] features; k < N and k < M. Each sample's ball has radius equal to the
    distance to its k-th nearest neighbour within its own set (self excluded).
    precision = fraction of fake samples inside the union of real balls (fidelity);
    recall = fraction of real samples inside the union of fake balls (coverage). Both in [0, 1].
    """
    r = _as_2d_float64(real, "real")
    f = _as_2d_float64(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dims differ: real {r.shape[1]} vs fake {f.shape[1]}")
    if k < 1 or k >= min(len(r), len(f)):
        raise ValueError(f"k={k} must be in [1, min(N, M) - 1] = [1, {min(len(r), len(f)) - 1}]")
    rt, ft = torch.from_numpy(r), torch.from_numpy(f)
    with torch.no_grad():
        precision = _covered(ft, rt, _knn_radii(rt, k)).double().mean().item()
        recall = _covered(rt, ft, _knn_radii(ft, k)).double().mean().item()
    return float(precision), float(recall)


def inception_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """Inception Score exp(E_x KL(p(y|x) || p(y))), with p(y) the marginal within each split.

    probs: [N, K] class probabilities (rows non-negative, summing to 1). The N rows are cut, in
    order, into `splits` nearly equal parts. Returns (mean, std) over splits (std with ddof=0, as in
    the original implementation; 0.0 for one split). IS lies in [1, K].
    """
    p = _as_2d_float64(probs, "probs")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs rows must be non-negative and sum to 1 (apply softmax first)")
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits={splits} must be in [1, N={len(p)}]")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        # rel_entr(p, q) = p log(p / q), defined as 0 where p == 0.
        kl = rel_entr(part, py).sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores))
