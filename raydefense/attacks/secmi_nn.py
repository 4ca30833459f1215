"""SecMI_NNs (Duan et al., ICML 2023; spec/attacks.md §2.4): a ResNet-18 regressor on the
pixel-wise absolute error map |x_tilde - x_hat| of SecMI's round trip at t_sec - k.

Trained on the target's calibration part only (trains_on = "calibration"): `cross_fit` gives
out-of-fold calibration scores (thresholds are never chosen on in-sample scores) and
`fit_predict` scores the test part with a model fitted on the whole calibration part.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from raydefense.attacks.base import ATTACKS, CalibrationTrainedAttack, Query
from raydefense.attacks.classifiers import predict_resnet, train_resnet_regressor
from raydefense.attacks.secmi import shared_error_maps
from raydefense.config import SecMINNConfig
from raydefense.seeding import derive_seed


@ATTACKS.register("secmi_nn")
class SecMINN(CalibrationTrainedAttack):
    """SecMI_NNs: features are flattened |x_tilde - x_hat| maps; the score is the regressor's raw
    output (member label 1, so higher = member; the official code negates it only because its
    roc() treats lower as member)."""

    name = "secmi_nn"
    access = "gray-box"

    def __init__(
        self, cfg: SecMINNConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = cfg if isinstance(cfg, SecMINNConfig) else SecMINNConfig.model_validate(cfg)

    def settings(self) -> list[dict[str, Any]]:
        return [{"t_sec": self.cfg.t_sec, "k": self.cfg.k}]

    def features(self, q: Query) -> torch.Tensor:
        """Deterministic (q.row_ids and q.seed unused); the round trip is shared with
        SecMI_stat through q's per-batch cache.
        Returns:
            [B, C*H*W] float32 = |x_tilde - x_hat| flattened, >= 0 (lower for members).
        """
        x_tilde, x_hat = shared_error_maps(q, self.cfg.t_sec, self.cfg.k)
        return (x_tilde - x_hat).abs().flatten(1).float()

    @staticmethod
    def _maps(x: np.ndarray, image_shape: Optional[tuple[int, int, int]]) -> np.ndarray:
        if image_shape is None:
            raise ValueError("secmi_nn needs image_shape=(C, H, W) to rebuild its error maps")
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != math.prod(image_shape):
            raise ValueError(
                f"secmi_nn features must be [N, {math.prod(image_shape)}] for "
                f"image_shape {tuple(image_shape)}; got {x.shape}"
            )
        return x.reshape(-1, *image_shape)

    def fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        eval_x: list[np.ndarray],
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> list[np.ndarray]:
        """Train the ResNet on all of train_x and score every eval matrix.

        Args:
            train_x: [N, C*H*W] float32 error maps, train_y: [N] in {0, 1} (member = 1).
            eval_x: matrices [M_i, C*H*W]. image_shape: (C, H, W), required.
        Returns:
            [M_i] float32 raw regressor outputs per eval matrix, higher = member.
        """
        model = train_resnet_regressor(
            self._maps(train_x, image_shape), np.asarray(train_y), self.cfg, seed
        )
        return [predict_resnet(model, self._maps(e, image_shape)) for e in eval_x]

    def cross_fit(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> np.ndarray:
        """Out-of-fold scores for train_x: cfg.cv_folds stratified, shuffled (seeded) folds; each
        fold is scored by a ResNet trained on the other folds.

        Returns:
            [N] float32, higher = member; row i never scored by a model that saw it.
        """
        from sklearn.model_selection import StratifiedKFold

        maps = self._maps(train_x, image_shape)
        y = np.asarray(train_y).astype(np.int64).reshape(-1)
        out = np.empty(len(y), dtype=np.float32)
        folds = StratifiedKFold(
            n_splits=self.cfg.cv_folds, shuffle=True, random_state=int(seed) % (2**32)
        )
        for f, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y)):
            model = train_resnet_regressor(maps[tr], y[tr], self.cfg, derive_seed(seed, f))
            out[te] = predict_resnet(model, maps[te])
        return out

    def cross_fit_predict(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        eval_x: list[np.ndarray],
        seed: int,
        image_shape: Optional[tuple[int, int, int]] = None,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Cross-fitting: cfg.cv_folds stratified folds (seeded); the model trained on the other
        folds scores each fold, and the mean of the fold models scores every eval matrix.

        Returns:
            (out-of-fold scores [N], [scores [M_i] per eval matrix]), float32, higher = member.
        """
        from sklearn.model_selection import StratifiedKFold

        maps = self._maps(train_x, image_shape)
        y = np.asarray(train_y).astype(np.int64).reshape(-1)
        oof = np.empty(len(y), dtype=np.float32)
        evals = [np.zeros(len(e), dtype=np.float64) for e in eval_x]
        eval_maps = [self._maps(e, image_shape) for e in eval_x]
        folds = StratifiedKFold(
            n_splits=self.cfg.cv_folds, shuffle=True, random_state=int(seed) % (2**32)
        )
        for f, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y)):
            model = train_resnet_regressor(maps[tr], y[tr], self.cfg, derive_seed(seed, f))
            oof[te] = predict_resnet(model, maps[te])
            for acc, m in zip(evals, eval_maps):
                acc += predict_resnet(model, m) / self.cfg.cv_folds
        return oof, [e.astype(np.float32) for e in evals]
