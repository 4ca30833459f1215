"""Router-aware gray-box attack on DualMD (`dualmd_adaptive`).

DualMD's step router answers eps(x_t, t) with the teacher that the alternating sampler assigns to
timestep t, and that assignment is public (it follows from the sampler's step count). An attacker
who knows it queries, for every teacher, a timestep that teacher serves: each such query sees
that teacher's members exactly as the teacher alone would. Per teacher it keeps the base
attack's setting with the best calibration AUC, standardises its score on the calibration
non-members (z-score, orientation fixed on calibration), and combines the K standardised scores:

- `max`: max_k z_k (a member of shard k stands out in z_k, a non-member in none);
- `learned`: logistic regression on [z_1 .. z_K] fitted on the calibration part;
- `contrast`: max_k (z_k - the mean of the other teachers' z), |z_1 - z_2| for two teachers:
  a member of one shard stands out in its own teacher only, so the row's difficulty cancels.

Every label-reading choice (setting, sign, standardisation, weights) is cross-fitted: the
calibration part is scored out-of-fold (`cv_folds` stratified folds), the test part by choices
made on all of the calibration part.

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

        Every choice that reads labels (each teacher's setting and sign, the standardisation on
        non-members, the learned weights) is made on calibration rows other than those it
        scores: out-of-fold on the calibration part (`cv_folds` stratified folds), on all of
        it for the rest. So the calibration AUC that selection reads is not in-sample.

        Args:
            base: the base attack's name. settings: its settings (one per column).
            columns: [N, S] its scores against DualMD's router, higher = member, N audited rows.
            owners: [T] teacher index per timestep (`timestep_owners`).
            member: [N] bool. calibration: [N] bool, the calibration part (labels usable).
            seed: seeds the folds.
        Returns:
            [(params, scores [N] float64, higher = member)] per rule; params name the base, the
            rule and the timestep chosen per teacher on all of the calibration part.
        Raises:
            ValueError: some teacher serves none of the base's settings.
        """
        from sklearn.model_selection import StratifiedKFold

        groups = settings_by_teacher(settings, owners, num_teachers)
        missing = [k + 1 for k, idx in groups.items() if not idx]
        if missing:
            raise ValueError(f"{base} has no setting whose timestep teacher(s) {missing} serve")
        y = member.astype(np.int64)
        cal = np.flatnonzero(calibration)
        rest = np.flatnonzero(~calibration)
        rules = list(self.cfg.combine)
        out = {r: np.empty(len(y), dtype=np.float64) for r in rules}

        def fill(fit_rows: np.ndarray, score_rows: np.ndarray) -> list[int]:
            chosen, z_fit, z_score = self._fit(columns, groups, y, fit_rows, score_rows)
            for r in rules:
                out[r][score_rows] = self._rule(r, z_fit, y[fit_rows], z_score)
            return chosen

        folds = StratifiedKFold(
            n_splits=self.cfg.cv_folds, shuffle=True, random_state=int(seed) % (2**32)
        )
        for tr, te in folds.split(cal, y[cal]):
            fill(cal[tr], cal[te])
        chosen = fill(cal, rest)
        ts = [served_timestep(settings[i]) for i in chosen]
        return [({"base": base, "combine": r, "timesteps": ts}, out[r]) for r in rules]

    @staticmethod
    def _fit(
        columns: np.ndarray,
        groups: dict[int, list[int]],
        y: np.ndarray,
        fit_rows: np.ndarray,
        score_rows: np.ndarray,
    ) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Per teacher the best setting by AUC on `fit_rows` (either orientation), oriented and
        standardised on their non-members. -> (chosen column per teacher, Z [fit, K],
        Z [score, K])."""
        chosen, zf, zs = [], [], []
        ref = fit_rows[y[fit_rows] == 0]
        for k in sorted(groups):
            aucs = [auc(columns[fit_rows, i], y[fit_rows]) for i in groups[k]]
            j = int(np.argmax([max(a, 1.0 - a) for a in aucs]))
            i = groups[k][j]
            sign = 1.0 if aucs[j] >= 0.5 else -1.0
            col = sign * columns[:, i].astype(np.float64)
            z = standardise(col, col[ref])
            chosen.append(i)
            zf.append(z[fit_rows])
            zs.append(z[score_rows])
        return chosen, np.stack(zf, axis=1), np.stack(zs, axis=1)

    @staticmethod
    def _rule(rule: str, z_fit: np.ndarray, y_fit: np.ndarray, z: np.ndarray) -> np.ndarray:
        """One combination of standardised per-teacher scores Z [n, K] -> [n]."""
        if rule == "max":
            out: np.ndarray = z.max(axis=1)
            return out
        if rule == "contrast":
            return contrast(z)
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression().fit(z_fit, y_fit)
        learned: np.ndarray = model.decision_function(z)
        return learned


def contrast(z: np.ndarray) -> np.ndarray:
    """The cross-teacher contrast (spec/attacks.md §6b item 5): a member of shard k lowers only
    teacher k's error, so its z_k stands out from the other teachers' z on the same row, which
    removes the row's difficulty as a reference model would. The shard is unknown to the
    attacker: max_k (z_k - mean of the other z), which is |z_1 - z_2| for two teachers.
    z: [N, K], K >= 2 -> [N]."""
    k = z.shape[1]
    others = (z.sum(axis=1, keepdims=True) - z) / (k - 1)
    out: np.ndarray = (z - others).max(axis=1)
    return out


def check_router(attack: Attack, target: str) -> None:
    """AccessError when a router-only attack is asked for against a target without a router."""
    if attack.needs_router and target != ROUTER_TARGET:
        raise AccessError(
            f"attack {attack.name!r} attacks DualMD's step router, but target {target!r} is a "
            f"single model with no router; drop it from attacks.targets or from "
            f"attacks.enabled (it only applies to target {ROUTER_TARGET!r})"
        )
