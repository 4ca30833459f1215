"""Memorization of training images by generated samples (Carlini et al., 2023).

"Extracting training data from diffusion models" flags a generation as a near-copy when its l2
distance to the closest training image is small *relative to* its distance to the other nearby
training images: an absolute threshold would flag every sample of a low-variance region.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]

# Bound on the entries of one distance block / gathered-neighbour block (float64, 32 MiB).
_BLOCK_ELEMENTS = 1 << 22


def _flat64(x: ArrayLike, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.ndim < 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [N, ...] array")
    return t.reshape(t.shape[0], -1)


def nearest_neighbour_ratio(generated: ArrayLike, train: ArrayLike, k: int = 50) -> np.ndarray:
    """Per generated sample: d(nearest training image) / mean d(k nearest training images).

    generated: [M, ...] float, train: [N, ...] float, same trailing shape (flattened; use the same
    range for both, e.g. [-1, 1]). k is capped at N. Returns float64 [M] in [0, 1]: small means
    the sample is much closer to one training image than to the others (a near-copy); 0 when the
    nearest distance is exactly 0 (an exact copy).
    """
    g = _flat64(generated, "generated")
    t = _flat64(train, "train")
    if g.shape[1] != t.shape[1]:
        raise ValueError(
            f"generated and train differ in size per sample: {g.shape[1]} vs {t.shape[1]}"
        )
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    k = min(k, t.shape[0])
    n, dim = t.shape
    step = max(1, min(_BLOCK_ELEMENTS // n, _BLOCK_ELEMENTS // (k * dim)))
    out = []
    with torch.no_grad():
        for s in range(0, g.shape[0], step):
            gs = g[s : s + step]
            # Fast (matmul-based) distances only select the k neighbours; their distances are then
            # recomputed exactly from differences so an exact copy gives exactly 0, not ~1e-7.
            idx = torch.cdist(gs, t).topk(k, dim=1, largest=False).indices
            exact = (t[idx] - gs[:, None, :]).norm(dim=2)  # [c, k]
            nearest = exact.min(dim=1).values
            mean_k = exact.mean(dim=1)
            ratio = torch.where(
                nearest > 0, nearest / mean_k.clamp_min(1e-300), torch.zeros_like(nearest)
            )
            out.append(ratio)
    return torch.cat(out).numpy()


def memorization_summary(ratios: np.ndarray, threshold: float = 1 / 3) -> dict:
    """Summary of nearest-neighbour ratios [M]: a sample counts as memorized when ratio < threshold.

    Returns {"memorized_count": int, "memorized_fraction": float in [0, 1],
    "nn_ratio_median": float, "nn_ratio_min": float}.
    """
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("memorization_summary needs at least one ratio")
    count = int((r < threshold).sum())
    return {
        "memorized_count": count,
        "memorized_fraction": count / r.size,
        "nn_ratio_median": float(np.median(r)),
        "nn_ratio_min": float(r.min()),
    }
