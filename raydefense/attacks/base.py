"""The attack base classes, access levels and registry.

Every attack orients its output **higher = more likely a member** and declares:
- `name`: its registry name;
- `access`: what it needs from a target, one of ACCESS_LEVELS (weakest first):
  "black-box" (generated images only), "gray-box" (eps(x_t, t) queries), "white-box" (parameters
  and gradients);
- `kind`: how it is computed:
  - "query": per-row scores from eps queries, `score(...) -> [B, S]`, one column per setting;
  - "learned": per-row features (`features(...) -> [B, F]`) that a classifier turns into scores;
    `trains_on` says whether that classifier is fitted on the target's calibration part
    ("calibration", out-of-fold scores there) or on shadow models' rows ("shadow");
  - "generated": scores from the target's generated images (`score_generated(...) -> [B, S]`).
- `settings()`: one params dict per output column (a t sweep is several settings of one attack).

Attacks never touch Ray, MLflow or the file system. `cache` is a per-batch dict that attacks use to
share work (SecMI_stat and SecMI_NN share one DDIM round trip, GSA1 and GSA2 one gradient pass).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch

from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError
from raydefense.registry import Registry

ACCESS_LEVELS = ("black-box", "gray-box", "white-box")
ACCESS_MEANING = {
    "black-box": "generated images only",
    "gray-box": "noise predictions eps(x_t, t)",
    "white-box": "model parameters and gradients",
}


class AccessError(ConfigError):
    """An attack needs more access than a target exposes."""


def check_access(attack: Attack, target: str, target_access: str) -> None:
    """Raise AccessError when `attack` needs more than `target_access` gives."""
    need, have = ACCESS_LEVELS.index(attack.access), ACCESS_LEVELS.index(target_access)
    if need > have:
        raise AccessError(
            f"attack {attack.name!r} needs {attack.access} access "
            f"({ACCESS_MEANING[attack.access]}) but target {target!r} exposes only "
            f"{target_access} access ({ACCESS_MEANING[target_access]}); drop it from "
            f"attacks.enabled or from attacks.targets"
        )


Access = Literal["black-box", "gray-box", "white-box"]
AttackKind = Literal["query", "learned", "generated", "adaptive"]


class Attack(ABC):
    """What every attack declares (class attributes) and offers; subclass one of QueryAttack,
    LearnedAttack, GeneratedAttack (or, for attacks on DualMD's router, set needs_router)."""

    name: ClassVar[str] = ""
    access: ClassVar[Access]
    kind: ClassVar[AttackKind]
    # learned attacks: where their classifier's training rows come from
    trains_on: ClassVar[Optional[Literal["calibration", "shadow"]]] = None
    # applies only to DualMD's step router (raydefense.attacks.adaptive)
    needs_router: ClassVar[bool] = False

    def __init__(self, cfg: Any, num_train_timesteps: int = 1000) -> None:
        """cfg: the attack's config section (raydefense.config.AttacksConfig.<name>) or its
        dict; num_train_timesteps: T of the audited models' schedule."""
        self.cfg = cfg

    @abstractmethod
    def settings(self) -> list[dict[str, Any]]:
        """One params dict per output column."""
        ...

    def weights(self, default: str) -> str:
        """Which weights of a target ("ema" | "raw") the attack reads: attacks.weights
        (`default`) unless its own section says otherwise (GSA: the raw training weights)."""
        return default


class QueryAttack(Attack):
    kind: ClassVar[AttackKind] = "query"

    @abstractmethod
    def score(
        self,
        eps: EpsModel,
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        row_ids: torch.Tensor,
        seed: int,
        cache: Optional[dict] = None,
    ) -> torch.Tensor:
        """Args:
            x0: [B, C, H, W] in [-1, 1]. row_ids: [B] int64 stable row ids (randomness is seeded
                per row, so a batch's composition never changes a score). seed: the base seed.
        Returns:
            [B, S] float32, S = len(settings()), higher = member.
        """
        ...


class LearnedAttack(Attack):
    kind: ClassVar[AttackKind] = "learned"

    @abstractmethod
    def features(
        self,
        eps: EpsModel,
        schedule: NoiseSchedule,
        x0: torch.Tensor,
        row_ids: torch.Tensor,
        seed: int,
        cache: Optional[dict] = None,
    ) -> torch.Tensor:
        """[B, F] float32 features per row (flattened)."""
        ...

    @abstractmethod
    def fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        eval_x: list[np.ndarray],
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> list[np.ndarray]:
        """Fit the attack model on (train_x [N, F], train_y [N] in {0, 1}) and score each
        matrix of eval_x ([M_i, F] -> [M_i], higher = member). image_shape: (C, H, W) of the
        audited images, for features that keep their spatial layout."""
        ...


class CalibrationTrainedAttack(LearnedAttack):
    """A learned attack whose classifier trains on the audited target's calibration part."""

    trains_on: ClassVar[Optional[Literal["calibration", "shadow"]]] = "calibration"

    @abstractmethod
    def cross_fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        eval_x: list[np.ndarray],
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Out-of-fold scores of train_x [N] (each fold scored by a model trained on the
        others) and scores of every eval matrix, as fit_predict's."""
        ...


class GeneratedAttack(Attack):
    kind: ClassVar[AttackKind] = "generated"

    @abstractmethod
    def settings(self, with_features: bool = False) -> list[dict[str, Any]]:
        """One params dict per output column; with_features: a feature extractor is set."""
        ...

    @abstractmethod
    def score_generated(
        self,
        generated: torch.Tensor,
        x0: torch.Tensor,
        feature_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Args: generated [M, C, H, W] and x0 [B, C, H, W], both in [-1, 1]; feature_fn maps
        images to [N, D] features when a feature extractor is configured.
        Returns: [B, S] float32, higher = member."""
        ...


ATTACKS: Registry[type[Attack]] = Registry("attack")


def scaled_timestep(t: int, schedule: NoiseSchedule) -> int:
    """A timestep given for T = 1000 (the papers' schedule), scaled to this schedule's length."""
    T = schedule.num_train_timesteps
    return int(min(T - 1, max(0, round(t * T / 1000))))


def check_timesteps(name: str, timesteps: list[int], schedule: NoiseSchedule) -> None:
    if not timesteps:
        raise ValueError(f"attacks.{name}.timesteps is empty; list at least one timestep")
    for t in timesteps:
        if not 0 <= t < schedule.num_train_timesteps:
            raise ValueError(
                f"attacks.{name}.timesteps has {t}, outside [0, {schedule.num_train_timesteps})"
            )
