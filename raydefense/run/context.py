"""What a stage or sweep is handed: the config, storage, tracker, and the roles that place heavy
work (Ray in production: `raydefense.distributed.backend`; in-process in tests).

Each role is a narrow protocol; a run only needs the roles of the stages it runs (`prepare`
needs none).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from raydefense.audit.scoring import PoolScorer, Scorer
from raydefense.config import ExperimentConfig
from raydefense.errors import RaydefenseError
from raydefense.placement import WorkerPool
from raydefense.run.labelling import PoolLabeller
from raydefense.storage import Storage
from raydefense.tracking.tracker import NullTracker, Tracker


@dataclass(frozen=True)
class FitSpec:
    """One model to train: kind "ddpm" reads its member rows (or latents), "distill" its soft
    targets. run_name names the fit's resumable run (deterministic per fingerprint);
    mlflow_run_id is the run its metrics go to (None: not tracked)."""

    model: str
    kind: str
    model_index: int
    run_name: str
    mlflow_run_id: Optional[str] = None


class Fitter(Protocol):
    """Trains models (Ray Train in production)."""

    def check_resources(self, cfg: ExperimentConfig) -> None:
        """Raise ResourceError when one fit can never be placed (before anything is written)."""
        ...

    def fit(self, cfg: ExperimentConfig, storage: Storage, specs: list[FitSpec]) -> None:
        """Train the models of specs and leave each final checkpoint under models/<model>.

        Raises:
            FitsFailed: some fits failed; the others finished and kept their models.
        """
        ...


class Labeller(Protocol):
    """Writes DistillMD soft targets (a Ray Data actor pool in production)."""

    def label_soft_targets(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        teachers: list[str],
        owners: dict[int, list[str]],
        draws: int,
        out_dir: str,
        groups: Optional[dict[int, int]] = None,
        extra_rows: Sequence[str] = (),
    ) -> int:
        """Write `draws` soft targets for every row of `owners` (row_id -> the teachers that
        trained on it) under out_dir, labelled by the other `teachers`, `groups` (row_id ->
        shard index; default: the index of its first owner) in the "shard" column; returns the
        rows written. extra_rows: tables of rows outside the plan (synthesize's)."""
        ...

    def synthesize(
        self, cfg: ExperimentConfig, teachers: list[str], n: int, out_dir: str
    ) -> dict[str, list[int]]:
        """n synthetic rows per teacher (distill.synthetic_per_teacher) written to
        out_dir/<teacher>.parquet; returns teacher -> its rows' ids."""
        ...


@dataclass(frozen=True)
class TrainingTrial:
    """What a training sweep's trials run, handed to the trial runner, which only places them
    (each callable runs on a trial worker, so it and its arguments must pickle).

    run(i, backend): grid point i's pipeline on `backend` (the runner's, with the scheduler's
    callback on the `watched` model's fit), returning its objectives (numbers and strings).
    final_value(i): the watched model's final `metric` as stored (every trial's last report
    carries it, also when its fit was complete before this attempt). label(i): the point's key
    for log lines. max_t: the most reports a trial makes (the scheduler's last rung)."""

    points: int
    watched: str
    metric: str
    max_t: int
    run: Callable[[int, Backend], dict[str, Any]]
    final_value: Callable[[int], float]
    label: Callable[[int], str]


class TrialRunner(Protocol):
    """Runs sweep trials (Ray Tune in production)."""

    def attack_trials(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        rel_path: str,
        run_name: str,
        settings: list[str],
        evaluate: Callable[[str], dict[str, float]],
    ) -> list[dict[str, Any]]:
        """One trial per setting, run or resumed under rel_path/run_name; `evaluate(setting)`
        gives a trial's flat metrics (it runs on a trial worker: it must pickle). Returns per
        setting, in order: {trial_id, reported_at, metrics (as reported, flat)}."""
        ...

    def training_trials(
        self,
        cfg: ExperimentConfig,
        storage: Storage,
        rel_path: str,
        run_name: str,
        trial: TrainingTrial,
    ) -> list[dict[str, Any]]:
        """One trial per grid point (`trial.run`), early-stopped on `trial.metric`; returns
        per point {status: completed | stopped, trial_id, metrics (the last result), history:
        [{iteration, <metric>}]}."""
        ...


@dataclass
class Backend:
    """The roles a run places work through; None where this run does not need one. Scoring and
    labelling run on `pool` (`audit.scoring.PoolScorer`, `run.labelling.PoolLabeller`) unless a
    `scorer` or a `labeller` is given (an in-process SerialScorer, a test's recorder)."""

    fitter: Optional[Fitter] = None
    labeller: Optional[Labeller] = None
    pool: Optional[WorkerPool] = None
    trials: Optional[TrialRunner] = None
    scorer: Optional[Scorer] = None


# The roles an executor provides (the scorer and the labeller run on its pool).
ROLES = ("fitter", "pool", "trials")


@dataclass
class RunContext:
    cfg: ExperimentConfig
    storage: Storage
    backend: Backend = field(default_factory=Backend)
    tracker: Tracker = field(default_factory=NullTracker)
    parent_run: Optional[str] = None
    force: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    # An audit's models, by role (raydefense.audit.imported.resolve_imports; empty otherwise).
    imports: dict[str, Any] = field(default_factory=dict)
    # Sibling experiments whose complete models this run may copy instead of training them
    # again when their fingerprints match (a training sweep's other trials).
    model_sources: tuple[Storage, ...] = ()

    def _role(self, name: str) -> Any:
        r = getattr(self.backend, name)
        if r is None:
            raise RaydefenseError(f"this run has no {name}: give RunContext a Backend with one")
        return r

    # The backend's roles, typed; a clear error when this run was given none.
    @property
    def fitter(self) -> Fitter:
        fitter: Fitter = self._role("fitter")
        return fitter

    @property
    def labeller(self) -> Labeller:
        if self.backend.labeller is not None:
            return self.backend.labeller
        if self.backend.pool is None:
            raise RaydefenseError(
                "this run has no labeller (nor a pool to label on): give RunContext a Backend "
                "with one"
            )
        return PoolLabeller(self.backend.pool)

    @property
    def scorer(self) -> Scorer:
        if self.backend.scorer is not None:
            return self.backend.scorer
        return PoolScorer(self._role("pool"))

    @property
    def trials(self) -> TrialRunner:
        trials: TrialRunner = self._role("trials")
        return trials
