"""Black-box nearest-neighbour attack: the unconditional counterpart of the paper's black-box
setting. Only the target's public sampling interface is used (for DualMD: the alternating sampler).
A query image close to one of the M generated images is more likely a member:
score(x) = -min_m ||phi(x) - phi(g_m)||_2, with phi the identity (pixel space) and, when a feature
extractor is configured, the domain classifier's embedding."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch

from raydefense.attacks.base import ATTACKS, GeneratedAttack
from raydefense.config import BlackboxNNConfig


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """l2 distance of each query [B, D] to its nearest neighbour in bank [M, D] -> [B]."""
    q, g = queries.flatten(1).double(), bank.flatten(1).double()
    out = torch.empty(len(q), dtype=torch.float64)
    for s in range(0, len(q), chunk):
        out[s : s + chunk] = torch.cdist(q[s : s + chunk], g).min(dim=1).values
    return out


@ATTACKS.register("blackbox_nn")
class BlackboxNN(GeneratedAttack):
    """One score column per feature space ("pixel" always; "domain" when a feature_fn exists)."""

    name = "blackbox_nn"
    access = "black-box"

    def __init__(
        self, cfg: BlackboxNNConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = (
            cfg if isinstance(cfg, BlackboxNNConfig) else BlackboxNNConfig.model_validate(cfg)
        )

    def settings(self, with_features: bool = True) -> list[dict[str, Any]]:
        spaces = [f for f in self.cfg.features if f == "pixel" or with_features]
        return [{"space": f, "num_generated": self.cfg.num_generated} for f in spaces]

    @torch.no_grad()
    def score_generated(
        self,
        generated: torch.Tensor,
        x0: torch.Tensor,
        feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Args: generated [M, C, H, W], x0 [B, C, H, W], both in [-1, 1]; feature_fn: images ->
        [N, D] (None: the "domain" space is skipped).
        Returns: [B, S] float32 = -nearest distance per space of settings(feature_fn given)."""
        cols = []
        for s in self.settings(with_features=feature_fn is not None):
            if s["space"] == "pixel":
                cols.append(-nearest_distance(x0, generated))
            else:
                assert feature_fn is not None  # settings() lists other spaces only with it
                cols.append(-nearest_distance(feature_fn(x0), feature_fn(generated)))
        return torch.stack(cols, dim=1).float()
