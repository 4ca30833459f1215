"""The CLI's verbs as objects. A command says what it checks before anything is written, what it
runs inside an open run (`run.session.open_run`: storage, tracker, parent run, the executor's
roles) and what it prints; `execute` is the one entry that loads, checks and runs them (the CLI,
jobs/pipeline.py, and the seed and prompt studies, which run their pipelines through it).
`cli.py` only parses and dispatches.

Executors (`--executor`): `ray` (the default: Ray Train, Ray Data, Ray Tune; started on first
use, so a fully cached rerun never starts Ray) and `local` (this process, no Ray: fits one after
another, sweeps without early stopping; `raydefense.run.local`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol, Union

from raydefense.config import ExperimentConfig, load_config
from raydefense.console import result
from raydefense.errors import RaydefenseError
from raydefense.pipeline import STAGES, run_pipeline, stage_report
from raydefense.run.context import ROLES, Backend, RunContext
from raydefense.run.fingerprints import stage_fingerprints
from raydefense.run.markers import is_complete
from raydefense.run.session import BackendFactory, absolutize, open_run, validate_config
from raydefense.storage import Storage
from raydefense.tracking.tracker import Tracker

log = logging.getLogger("raydefense")

# Pipeline verbs -> the stage they stop after.
PIPELINE_VERBS = {
    "run": "report",
    "prepare": "prepare",
    "train": "train",
    "distill": "distill",
    "attack": "evaluate",
    "audit": "report",
}


class Command(Protocol):
    """One verb: checks on the config before anything is written, the work inside an open run,
    and the summary printed after."""

    @property
    def forceable(self) -> tuple[str, ...]:
        """What --force may name."""
        ...

    def check(self, cfg: ExperimentConfig) -> None: ...

    def run(self, ctx: RunContext) -> Optional[Mapping[str, Any]]: ...

    def summary(self, results: Mapping[str, Any], ctx: RunContext) -> str: ...


@dataclass(frozen=True)
class PipelineCommand:
    """`run` and the stage verbs: the pipeline up to and including `until`."""

    until: str
    forceable: tuple[str, ...] = tuple(STAGES)

    def check(self, cfg: ExperimentConfig) -> None:
        pass

    def run(self, ctx: RunContext) -> Optional[Mapping[str, Any]]:
        from raydefense.sweeps.seeds import replaced_seed_warning

        warning = replaced_seed_warning(ctx.storage, ctx.cfg.seed)
        if warning:
            log.warning(warning)
        return run_pipeline(ctx, until=self.until)

    def summary(self, results: Mapping[str, Any], ctx: RunContext) -> str:
        return run_summary(results, ctx.storage)


@dataclass(frozen=True)
class ReportCommand:
    """`report`: report/ rendered again from the stored scores (no model is touched)."""

    forceable: tuple[str, ...] = tuple(STAGES)

    def check(self, cfg: ExperimentConfig) -> None:
        pass

    def run(self, ctx: RunContext) -> Optional[Mapping[str, Any]]:
        from raydefense.layout import marker

        ctx.fingerprints = stage_fingerprints(ctx.cfg)
        if not is_complete(ctx.storage, marker("evaluate"), ctx.fingerprints["evaluate"]):
            raise RaydefenseError(
                "no complete evaluation for this config under "
                f"{ctx.storage.uri()}; run `raydefense attack` (or run) first"
            )
        ctx.skipped = STAGES[:-1]
        return stage_report(ctx)

    def summary(self, results: Mapping[str, Any], ctx: RunContext) -> str:
        return run_summary(results, ctx.storage)


@dataclass(frozen=True)
class AttackSweepCommand:
    """`sweep` with sweep.kind=attacks: the pipeline up to distill, then one trial per grid
    point over the scores."""

    forceable: tuple[str, ...] = (*STAGES, "sweep")

    def check(self, cfg: ExperimentConfig) -> None:
        from raydefense.audit.grid import grid_points

        grid_points(cfg)  # a bad search space fails before any stage runs

    def run(self, ctx: RunContext) -> Optional[Mapping[str, Any]]:
        from raydefense.sweeps.attacks import run_sweep

        run_pipeline(ctx, until="distill")
        return run_sweep(ctx)

    def summary(self, results: Mapping[str, Any], ctx: RunContext) -> str:
        from raydefense.sweeps.attacks import summary, sweep_dir

        return summary(results, ctx.storage.uri(sweep_dir(ctx.cfg)))


@dataclass(frozen=True)
class TrainingSweepCommand:
    """`sweep` with sweep.kind=training: one small pipeline per training grid point."""

    forceable: tuple[str, ...] = (*STAGES, "sweep")

    def check(self, cfg: ExperimentConfig) -> None:
        from raydefense.sweeps.training_sweep import check_training_sweep

        check_training_sweep(cfg)

    def run(self, ctx: RunContext) -> Optional[Mapping[str, Any]]:
        from raydefense.sweeps.training_sweep import run_training_sweep

        return run_training_sweep(ctx)

    def summary(self, results: Mapping[str, Any], ctx: RunContext) -> str:
        from raydefense.sweeps.training_sweep import summary, sweep_dir

        return summary(results, ctx.storage.uri(sweep_dir(ctx.cfg)))


def command_for(verb: str, cfg: ExperimentConfig) -> Command:
    """The command object of a verb (the sweep's kind picks its command)."""
    if verb == "report":
        return ReportCommand()
    if verb == "sweep":
        return TrainingSweepCommand() if cfg.sweep.kind == "training" else AttackSweepCommand()
    if verb in PIPELINE_VERBS:
        return PipelineCommand(PIPELINE_VERBS[verb])
    raise RaydefenseError(f"unknown command {verb!r}; choose from {', '.join(VERBS)}")


VERBS = (*PIPELINE_VERBS, "report", "sweep")


def run_summary(results: Mapping[str, Any], storage: Storage) -> str:
    """The console's lines after a pipeline: the headline rows and the stage timings."""
    from raydefense.report.markdown import headline_rows, rate
    from raydefense.roster import target_order_key

    lines = [f"raydefense: results in {storage.uri('report')}/ (results.json, report.md)"]
    for r in sorted(headline_rows(results["attacks"]), key=lambda r: target_order_key(r["target"])):
        lines.append(
            f"  {r['target']:<10} {r['line']:<32} AUC {r['auc']:.3f}  "
            f"TPR@1%FPR {rate(r, 'tpr_at_1pct_fpr', 3)}"
        )
    t = results.get("timings", {})
    if t:
        lines.append("  timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in t.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- executors


class _LazyRole:
    """One role of the Ray backend, built on first use: a fully cached rerun never imports or
    starts Ray."""

    def __init__(self, backend: Callable[[], Any], role: str) -> None:
        self._backend, self._role = backend, role

    def __getattr__(self, name: str) -> Any:
        return getattr(getattr(self._backend(), self._role), name)


def lazy_ray_backend(
    cfg: ExperimentConfig, tracking_uri: Optional[str], tracker: Optional[Tracker] = None
) -> Backend:
    """A Backend whose roles start (or join) Ray on first use."""
    built: list[Backend] = []

    def backend() -> Backend:
        if not built:
            from raydefense.distributed.backend import ray_backend

            built.append(ray_backend(cfg, tracking_uri))
        return built[0]

    return Backend(**{r: _LazyRole(backend, r) for r in ROLES})


def local_backend(
    cfg: ExperimentConfig, tracking_uri: Optional[str], tracker: Optional[Tracker] = None
) -> Backend:
    """Every role in this process (`raydefense.run.local.local_backend`)."""
    from raydefense.run.local import local_backend as in_process

    return in_process(tracker)


EXECUTORS: dict[str, BackendFactory] = {"ray": lazy_ray_backend, "local": local_backend}


# ----------------------------------------------------------------------------- the entry


def execute(
    command: str,
    preset: Union[str, Sequence[str], None] = None,
    config: Optional[str] = None,
    overrides: Optional[list[str]] = None,
    force: Optional[list[str]] = None,
    executor: str = "ray",
) -> Optional[Mapping[str, Any]]:
    """Run one command in-process: load and check the config (nothing is written when a check
    fails), open the run on `executor`, run the command, print its summary. Returns results."""
    if executor not in EXECUTORS:
        raise RaydefenseError(
            f"--executor {executor!r} is not an executor; choose from {', '.join(EXECUTORS)}"
        )
    cfg = load_config(preset, config, overrides)
    if command == "audit" and not cfg.audit.models:
        raise RaydefenseError("audit needs at least one --model ROLE=URI")
    validate_config(cfg)
    cfg = absolutize(cfg)
    if cfg.audit.models:
        from raydefense.audit.imported import precheck

        precheck(cfg)  # before anything is written
    cmd = command_for(command, cfg)
    bad = [s for s in force or [] if s not in cmd.forceable]
    if bad:
        raise RaydefenseError(
            f"--force {bad[0]!r} is not a stage; choose from {', '.join(cmd.forceable)}"
        )
    cmd.check(cfg)
    with open_run(command, cfg, force or [], EXECUTORS[executor]) as ctx:
        results = cmd.run(ctx)
    if results:
        result(cmd.summary(results, ctx))
    return results


# ----------------------------------------------------------------------------- the studies


def run_seed_study(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Optional[list[str]],
    force: Optional[list[str]],
    seeds: Sequence[int] | str,
    aggregate_only: bool = False,
    executor: str = "ray",
) -> dict[str, Any]:
    """`raydefense seeds`: `run` once per seed (unless aggregate_only), the seeds' summary under
    the base experiment, then the base report again (it gains the training-seed spread)."""
    from raydefense.sweeps.seeds import aggregate_seeds, seed_runs

    runs = seed_runs(preset, config, overrides, seeds)  # bad seeds fail before any run
    if not aggregate_only:
        for i, (s, seed_overrides) in enumerate(runs, 1):
            log.info("seed study: seed %d (%d of %d)", s, i, len(runs))
            execute("run", preset, config, seed_overrides, force, executor)
    summary = aggregate_seeds(preset, config, overrides, [s for s, _ in runs])
    if aggregate_only:
        log.info("seed study: `raydefense report` (same options) adds it to the base report")
    else:
        execute("report", preset, config, list(overrides or []), [], executor)
    return summary


def run_promptdiv_study(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Optional[list[str]],
    force: Optional[list[str]],
    aggregate_only: bool = False,
    executor: str = "ray",
) -> dict[str, Any]:
    """`raydefense promptdiv`: `run` without and with prompt diversification (unless
    aggregate_only), the table comparing them, then the base report again (both columns)."""
    from raydefense.report.text_to_image import DIVERSIFICATION_LABELS
    from raydefense.sweeps.promptdiv import promptdiv_runs, tabulate_promptdiv

    runs = promptdiv_runs(preset, config, overrides)  # a config it cannot compare fails first
    if not aggregate_only:
        for on, (experiment, run_overrides) in runs.items():
            log.info(
                "prompt-diversification study: %s (%s)", experiment, DIVERSIFICATION_LABELS[on]
            )
            execute("run", preset, config, run_overrides, force, executor)
    summary = tabulate_promptdiv(preset, config, overrides)
    if not aggregate_only:
        execute("report", preset, config, list(overrides or []), [], executor)
    return summary
