"""Domain FID: a small CNN classifier whose penultimate features stand in for Inception's.

Inception-v3 features are meaningless for 8x8 grayscale digits, so for small datasets the
evaluation trains this classifier on its non-member pool (never on members, so the feature space
carries no membership signal) and computes FID / precision-recall in its feature space.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ArrayLike = Union[np.ndarray, torch.Tensor]


def _gn(channels: int) -> nn.GroupNorm:
    # GroupNorm rather than BatchNorm: no batch statistics, so train and eval behave identically
    # and features do not depend on batch composition.
    return nn.GroupNorm(8, channels)


class DomainClassifier(nn.Module):
    """Small CNN for [N, C, H, W] float images in [-1, 1], H and W >= 8 (any size: global pooling).

    conv(C->32) -> conv(32->64, stride 2) -> conv(64->64) -> global average pool (64)
    -> linear(64 -> feature_dim) + SiLU (the feature layer) -> linear(feature_dim -> num_classes).
    """

    def __init__(self, in_channels: int, num_classes: int, feature_dim: int = 32) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or feature_dim < 1:
            raise ValueError(
                "DomainClassifier needs in_channels >= 1, num_classes >= 2, feature_dim >= 1"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            _gn(32),
            nn.SiLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            _gn(64),
            nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            _gn(64),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature = nn.Sequential(nn.Linear(64, feature_dim), nn.SiLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels or min(x.shape[2], x.shape[3]) < 8:
            raise ValueError(
                f"expected [N, {self.in_channels}, H>=8, W>=8] images, got {tuple(x.shape)}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [-1, 1] -> penultimate features [N, feature_dim] (post-SiLU)."""
        self._check(x)
        return self.feature(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [-1, 1] -> logits [N, num_classes]."""
        return self.head(self.features(x))

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [-1, 1] -> class probabilities [N, num_classes] (rows sum to 1)."""
        return F.softmax(self.forward(x), dim=1)


def _to_tensor(x: ArrayLike, dtype: torch.dtype) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.detach().to(device="cpu", dtype=dtype)


def train_domain_classifier(
    images: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    feature_dim: int = 32,
) -> tuple[DomainClassifier, float]:
    """Train a DomainClassifier with Adam + cross-entropy; deterministic for a fixed seed (CPU).

    images: [N, C, H, W] float32 in [-1, 1]; labels: [N] int in [0, num_classes).
    The seed fixes both the initialisation (torch.manual_seed, inside a forked RNG so the caller's
    global torch RNG is left untouched) and the per-epoch shuffling (a dedicated torch.Generator).
    Returns (model in eval mode on CPU, accuracy on the training images after training, in [0, 1]).
    """
    x = _to_tensor(images, torch.float32)
    y = _to_tensor(labels, torch.int64)
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"need images [N, C, H, W] and labels [N]; got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]"
        )
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DomainClassifier(x.shape[1], num_classes, feature_dim)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = len(x)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            idx = order[s : s + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x[s : s + 512]).argmax(1) == y[s : s + 512]).sum()) for s in range(0, n, 512)
        )
    return model, correct / n


def embed(model: DomainClassifier, images: ArrayLike, batch_size: int = 512) -> np.ndarray:
    """Penultimate features of images [N, C, H, W] float in [-1, 1] -> [N, feature_dim] float32."""
    x = _to_tensor(images, torch.float32)
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            out.append(model.features(x[s : s + batch_size].to(dev)).cpu())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.feature_dim), dtype=np.float32)
    return torch.cat(out).numpy()
