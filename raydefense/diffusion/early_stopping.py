"""Early stopping on held-out eps-MSE, with the best report's weights kept (pure PyTorch).

A fit that stops early exports the raw and EMA weights of its best report, not its last: the
held-out error rises while a small-shard model memorises, and the attacks read the exported
weights. The state (best value and step, reports since, the best weights) travels in every
checkpoint, so a fit resumed after a failure stops where an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from raydefense.config import EarlyStoppingConfig

METRIC = "val_eps_mse"


def _cpu_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class EarlyStopper:
    """Watches `val_eps_mse` at every report (lower is better).

    `observe` returns True when the fit should stop: `patience` reports in a row without an
    improvement larger than `min_delta`, at or after `min_steps`. The weights of the best report
    (raw and EMA, CPU copies) are kept for `restore`.
    """

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        self.cfg = cfg
        self.best: Optional[float] = None
        self.best_step = 0
        self.since_best = 0
        self.stopped = False
        self._raw: Optional[dict[str, torch.Tensor]] = None
        self._ema: Optional[dict[str, torch.Tensor]] = None

    def observe(
        self, step: int, value: float, net: torch.nn.Module, ema_net: torch.nn.Module
    ) -> bool:
        if self.best is None or value < self.best - self.cfg.min_delta:
            self.best, self.best_step, self.since_best = value, step, 0
            self._raw, self._ema = _cpu_copy(net), _cpu_copy(ema_net)
        else:
            self.since_best += 1
        return self.since_best >= self.cfg.patience and step >= self.cfg.min_steps

    def restore(self, net: torch.nn.Module, ema_net: torch.nn.Module) -> None:
        """Load the best report's weights into net and ema_net (in place, on their devices)."""
        if self._raw is None or self._ema is None:
            raise RuntimeError("early stopping has seen no report to restore")
        net.load_state_dict(self._raw)
        ema_net.load_state_dict(self._ema)

    def metrics(self) -> dict[str, Any]:
        """What a report adds: the best value and its step."""
        return {f"best_{METRIC}": self.best, "best_step": self.best_step}

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "since_best": self.since_best,
            "stopped": self.stopped,
            "raw": self._raw,
            "ema": self._ema,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], int(state["best_step"])
        self.since_best, self.stopped = int(state["since_best"]), bool(state["stopped"])
        self._raw, self._ema = state["raw"], state["ema"]
