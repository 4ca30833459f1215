"""Router-aware gray-box attack on DualMD (`dualmd_adaptive`).

DualMD's step router answers eps(x_t, t) with the teacher that the alternating sampler assigns to
timestep t, and that assignment is public (it follows from the sampler's step count). An attacker
who knows it queries, for every teacher, a timestep that teacher serves: each such query sees
that teacher's members exactly as the teacher alone would. Per teacher it keeps the base
attack's setting with the best calibration AUC, standardises its score on the calibration
non-members (z-score, orientation fixed on calibration), and combines the K standardised scores:

- `max`: max_k z_k (a member of shard k stands out in z_k, a non-member in none);
- `learned`: logistic regression on [z_1 .. z_K] fitted on the calibration part (out-of-fold
  scores there, `cv_folds` stratified folds; the test part is scored by the model fitted on all
  of the calibration part).

It needs no model queries of its own: it recombines the per-timestep score columns that the base
query attacks (SimA, PIA, PIAN, loss with one timestep) already computed against DualMD's router.
Only DualMD has a router; asking for it against any other target is an error. Pure numpy +
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from raydefense.attacks.base import ATTACKS, AccessError, Attack
from raydefense.attacks.metrics import auc
from raydefense.config import DualMDAdaptiveConfig

ROUTER_TARGET = "dualmd"


def served_timestep(params: dict[str, Any]) -> Optional[int]:
    """The one timestep a query-attack setting asks eps about (SimA/PIA/PIAN: `t`; loss: a
    single-element `timesteps`), or None when it spans several (SecMI's round trip, a multi-t
    loss) and so may mix teachers."""
    if "t" in params:
        return int(params["t"])
    ts = params.get("timesteps")
    if isinstance(ts, (list, tuple)) and len(ts) == 1:
        return int(ts[0])
    return None


def settings_by_teacher(
    settings: Sequence[dict[str, Any]], owners: Sequence[int], num_teachers: int
) -> dict[int, list[int]]:
    """Indices of `settings` grouped by the teacher that serves their timestep (owners[t]);
    settings without a single timestep are left out."""
    out: dict[int, list[int]] = {k: [] for k in range(num_teachers)}
    for i, p in enumerate(settings):
        t = served_timestep(p)
        if t is not None:
            out[int(owners[t])].append(i)
    return out


def standardise(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(scores - mean) / sd of the reference scores (calibration non-members). -> [N]."""
    sd = float(np.std(reference))
    return (scores - float(np.mean(reference))) / (sd if sd > 0 else 1.0)


@ATTACKS.register("dualmd_adaptive")
class DualMDAdaptive(Attack):
    """Combines per-teacher query scores through DualMD's public step routing."""

    name = "dualmd_adaptive"
    access = "gray-box"
    kind = "adaptive"
    needs_router = True

    def __init__(
        self, cfg: DualMDAdaptiveConfig | dict[str, Any], num_train_timesteps: int = 1000
    ) -> None:
        self.cfg = (
            cfg
            if isinstance(cfg, DualMDAdaptiveConfig)
            else DualMDAdaptiveConfig.model_validate(cfg)
        )

    def settings(self) -> list[dict[str, Any]]:
        return [{"combine": c} for c in self.cfg.combine]

    def combine(
        self,
        base: str,
        settings: Sequence[dict[str, Any]],
        columns: np.ndarray,
        owners: Sequence[int],
        num_teachers: int,
        member: np.ndarray,
        calibration: np.ndarray,
        seed: int,
    ) -> list[tuple[dict[str, Any], np.ndarray]]:
        """Scores of every `combine` rule for one base attack.

        Args:
            base: the base attack's name. settings: its settings (one per column).
            columns: [N, S] its scores against DualMD's router, higher = member, N audited rows.
            owners: [T] teacher index per timestep (`timestep_owners`).
            member: [N] bool. calibration: [N] bool, the calibration part (labels usable).
            seed: seeds the cross-fitting folds.
        Returns:
            [(params, scores [N] float64, higher = member)] per rule; params name the base, the
            rule and the timestep chosen per teacher (teacher order).
        Raises:
            ValueError: some teacher serves none of the base's settings.
        """
        groups = settings_by_teacher(settings, owners, num_teachers)
        missing = [k + 1 for k, idx in groups.items() if not idx]
        if missing:
            raise ValueError(f"{base} has no setting whose timestep teacher(s) {missing} serve")
        y = member.astype(np.int64)
        cal_y, ref = y[calibration], calibration & ~member
        z, chosen = [], []
        for k in range(num_teachers):
            # Best setting for teacher k by calibration AUC, either orientation.
            aucs = [auc(columns[calibration, i], cal_y) for i in groups[k]]
            j = int(np.argmax([max(a, 1.0 - a) for a in aucs]))
            i = groups[k][j]
            sign = 1.0 if aucs[j] >= 0.5 else -1.0
            col = sign * columns[:, i].astype(np.float64)
            z.append(standardise(col, col[ref]))
            chosen.append(served_timestep(settings[i]))
        Z = np.stack(z, axis=1)  # [N, K]
        out = []
        for rule in self.cfg.combine:
            params = {"base": base, "combine": rule, "timesteps": chosen}
            if rule == "max":
                out.append((params, Z.max(axis=1)))
            else:
                out.append((params, self._learned(Z, y, calibration, seed)))
        return out

    def _learned(
        self, Z: np.ndarray, y: np.ndarray, calibration: np.ndarray, seed: int
    ) -> np.ndarray:
        """Logistic regression on the calibration part: out-of-fold there, fitted on all of it
        for the rest. -> [N] decision values."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        cal = np.flatnonzero(calibration)
        out = np.empty(len(y), dtype=np.float64)
        folds = StratifiedKFold(
            n_splits=self.cfg.cv_folds, shuffle=True, random_state=int(seed) % (2**32)
        )
        for tr, te in folds.split(Z[cal], y[cal]):
            m = LogisticRegression().fit(Z[cal[tr]], y[cal[tr]])
            out[cal[te]] = m.decision_function(Z[cal[te]])
        rest = np.flatnonzero(~calibration)
        if rest.size:
            out[rest] = LogisticRegression().fit(Z[cal], y[cal]).decision_function(Z[rest])
        return out


def check_router(attack: Attack, target: str) -> None:
    """AccessError when a router-only attack is asked for against a target without a router."""
    if attack.needs_router and target != ROUTER_TARGET:
        raise AccessError(
            f"attack {attack.name!r} attacks DualMD's step router, but target {target!r} is a "
            f"single model with no router; drop it from attacks.targets or from "
            f"attacks.enabled (it only applies to target {ROUTER_TARGET!r})"
        )
