"""The quantile-regression attack (Tang, Wu, Aydore, Kearns, Roth, ICML 2024, arXiv 2312.05140;
spec/attacks.md §6 item 3 and §6b item 3).

No shadow diffusion model: a small regressor, trained on the attacker's population rows (images
the target never trained on, never audited), predicts from the image alone the distribution of
the target's statistic on non-members. Each audited row then has its own threshold: a member's
statistic lies above what its image predicts. The regressor outputs a Gaussian (mean, log
spread) per base column, fitted by the Gaussian likelihood, so one network serves every column
and any quantile alpha is mean + spread * Phi^-1(alpha). A bag of regressors, each on its own
bootstrap sample of the population, gives the score: their average z-score (`mean`) or the
fraction whose 1 - alpha quantile the statistic exceeds (`vote`, the paper's majority vote).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn

from raydefense.attacks.base import ATTACKS
from raydefense.attacks.lira_rmia import ReferenceAttack, ReferenceData, statistic
from raydefense.config import QuantileConfig


class QuantileRegressor(nn.Module):
    """Image [B, C, H, W] in [-1, 1] -> (mean [B, S], log spread [B, S]) of S statistics."""

    def __init__(self, channels: int, outputs: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(8 * width, 64), nn.GELU(), nn.Linear(64, 2 * outputs))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sd = self.head(self.features(x)).chunk(2, dim=1)
        return mu, log_sd.clamp(-7.0, 7.0)


def fit_regressor(
    images: np.ndarray,
    targets: np.ndarray,
    seed: int,
    epochs: int,
    width: int,
    lr: float,
    batch_size: int = 128,
) -> QuantileRegressor:
    """Fit one regressor by the Gaussian negative log-likelihood.

    Args: images [Z, C, H, W] float32 in [-1, 1]; targets [Z, S] standardised statistics.
    """
    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
    net = QuantileRegressor(x.shape[1], y.shape[1], width)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            idx = order[s : s + batch_size]
            mu, log_sd = net(x[idx])
            nll = (0.5 * ((y[idx] - mu) / log_sd.exp()) ** 2 + log_sd).mean()
            opt.zero_grad(set_to_none=True)
            nll.backward()
            opt.step()
    return net.eval()


@ATTACKS.register("quantile")
class QuantileRegression(ReferenceAttack):
    """Per-example thresholds from regressors trained on the population's target statistics."""

    name = "quantile"
    uses_references = False
    uses_population = True

    def __init__(
        self, cfg: QuantileConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = cfg if isinstance(cfg, QuantileConfig) else QuantileConfig.model_validate(cfg)

    def settings(self) -> list[dict[str, Any]]:
        return [
            {
                "aggregate": a,
                "bag": self.cfg.bag,
                **({"alpha": self.cfg.alpha} if a == "vote" else {}),
            }
            for a in self.cfg.aggregate
        ]

    def score_reference(self, data: ReferenceData, seed: int) -> np.ndarray:
        """One column (data.target [N], data.pop_target [Z]) -> [N, len(settings())]."""
        return self.score_columns(data, seed)[:, 0, :]

    def score_columns(self, data: ReferenceData, seed: int) -> np.ndarray:
        """Every base column at once: one regressor per bag member predicts them all.

        data.target: [N, S] or [N]; data.pop_target: [Z, S] or [Z]; images as ReferenceData
        (references are not read). Returns [N, S, len(settings())] float64, higher = member."""
        if data.pop_target is None or data.pop_images is None or data.images is None:
            raise ValueError("the quantile attack needs the population's images and scores")
        tr = self.cfg.transform
        y_pop = statistic(np.asarray(data.pop_target).reshape(len(data.pop_target), -1), tr)
        y = statistic(np.asarray(data.target).reshape(len(data.target), -1), tr)
        # Standardise per column on the population, so one loss weighs every column alike.
        loc, scale = y_pop.mean(axis=0), y_pop.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        y_pop, y = (y_pop - loc) / scale, (y - loc) / scale
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(np.ascontiguousarray(data.images, dtype=np.float32))
        zs = []
        for b in range(self.cfg.bag):
            idx = rng.integers(0, len(y_pop), len(y_pop))  # a bootstrap sample of the population
            net = fit_regressor(
                data.pop_images[idx],
                y_pop[idx],
                seed + 7919 * (b + 1),
                self.cfg.epochs,
                self.cfg.width,
                self.cfg.lr,
            )
            with torch.no_grad():
                mu, log_sd = net(x)
            zs.append((y - mu.double().numpy()) / log_sd.double().exp().numpy())
        z = np.stack(zs)  # [bag, N, S]
        cut = NormalDist().inv_cdf(1.0 - self.cfg.alpha)
        out = [
            z.mean(axis=0) if a == "mean" else (z > cut).mean(axis=0) for a in self.cfg.aggregate
        ]
        return np.stack(out, axis=2)
