"""A stage whose fits partly fail: the finished fits keep their models (marker published,
MLflow run FINISHED, a rerun skips them); each failed fit's MLflow run is FAILED with its
one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydefense import layout
from raydefense.config import ExperimentConfig
from raydefense.data.plan import make_plan
from raydefense.data.sources import load_digits
from raydefense.data.tables import write_plan
from raydefense.errors import FitsFailed, NonFiniteLossError, RaydefenseError
from raydefense.pipeline import stage_distill, stage_train
from raydefense.run.context import Backend, FitSpec, RunContext
from raydefense.run.fingerprints import model_fingerprint, stage_fingerprints
from raydefense.run.markers import is_complete, mark_complete
from raydefense.storage import Storage
from raydefense.tracking.mlflow_tracker import MlflowTracker

from conftest import tiny_config


class HalfFitter:
    """Writes a model for every spec but `fails`, then reports that one's nan loss."""

    def __init__(self, fails: str) -> None:
        self.fails, self.calls = fails, []

    def check_resources(self, cfg: ExperimentConfig) -> None:
        pass

    def fit(self, cfg: ExperimentConfig, storage: Storage, specs: list[FitSpec]) -> None:
        self.calls.append([s.model for s in specs])
        done = []
        for s in specs:
            if s.model != self.fails:
                storage.write_json(f"{layout.model_dir(s.model)}/weights.json", {"ok": 1})
                done.append(s.model)
        if self.fails in [s.model for s in specs]:
            err = NonFiniteLossError(7, float("nan"), self.fails)
            raise FitsFailed({self.fails: err}, done)


def test_finished_fits_are_kept_and_the_failed_one_is_marked(tmp_path: Path) -> None:
    # the fake fitter writes no weights: nothing to register in MLflow
    cfg = tiny_config(tmp_path, **{"tracking.register_models": "false"})
    storage = Storage(cfg.storage.root, cfg.experiment)
    write_plan(storage, make_plan(load_digits(cfg.data), cfg.data, cfg.seed))
    assert storage.read_json(layout.PLAN_JSON)["models"] == ["baseline", "teacher_1", "teacher_2"]
    tracker = MlflowTracker(cfg.tracking.uri, cfg.experiment)
    parent = tracker.start_run("pipeline/train")
    fitter = HalfFitter(fails="teacher_2")
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(fitter=fitter),
        tracker=tracker,
        parent_run=parent,
        fingerprints=stage_fingerprints(cfg),
    )
    with pytest.raises(FitsFailed, match="train teacher_2: the loss became nan at step 7"):
        stage_train(ctx)

    def complete(m: str) -> bool:
        fp = model_fingerprint(ctx.fingerprints, m)
        return is_complete(storage, layout.marker(layout.model_dir(m)), fp)

    assert [complete(m) for m in ("baseline", "teacher_1", "teacher_2")] == [True, True, False]
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    status = {r.data.tags["raydefense.model"]: r for r in runs}
    assert {m: r.info.status for m, r in status.items()} == {
        "baseline": "FINISHED",
        "teacher_1": "FINISHED",
        "teacher_2": "FAILED",
    }
    assert "at step 7" in status["teacher_2"].data.tags["raydefense.error"]
    # The rerun fits only the failed model.
    fitter.fails = ""
    stage_train(ctx)
    assert fitter.calls == [["baseline", "teacher_1", "teacher_2"], ["teacher_2"]]


def test_a_sibling_experiments_complete_models_are_copied_not_trained(tmp_path: Path) -> None:
    """A training sweep's trials share models: stage_train copies a model that a sibling
    completed with the same fingerprint and fits only the rest (here, the teachers of a sibling
    whose teachers stopped early are not this run's: only the baseline is copied)."""
    cfg = tiny_config(tmp_path, **{"tracking.register_models": "false"})
    other_cfg = tiny_config(tmp_path, **{"train.teacher.steps": "7"})
    sibling = Storage(cfg.storage.root, "sibling")
    plan = make_plan(load_digits(cfg.data), cfg.data, cfg.seed)
    write_plan(sibling, plan)
    fitter = HalfFitter(fails="")
    stage_train(
        RunContext(
            cfg=other_cfg,
            storage=sibling,
            backend=Backend(fitter=fitter),
            fingerprints=stage_fingerprints(other_cfg),
        )
    )
    sibling.write_json("models/baseline/registered.json", {"version": "1"})  # MLflow's, not ours
    storage = Storage(cfg.storage.root, cfg.experiment)
    write_plan(storage, plan)
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(fitter=fitter),
        fingerprints=stage_fingerprints(cfg),
        model_sources=(Storage(cfg.storage.root, "missing"), sibling),
    )
    stage_train(ctx)
    assert fitter.calls == [["baseline", "teacher_1", "teacher_2"], ["teacher_1", "teacher_2"]]
    rel = layout.model_dir("baseline")
    fp = model_fingerprint(ctx.fingerprints, "baseline")
    assert is_complete(storage, layout.marker(rel), fp)
    assert storage.read_json(layout.marker(rel))["outputs"] == {"reused_from": sibling.uri(rel)}
    assert storage.read_json(f"{rel}/weights.json") == {"ok": 1}
    assert not storage.exists(f"{rel}/registered.json")
    # --force train trains everything again, sibling or not.
    ctx.force = {"train"}
    stage_train(ctx)
    assert fitter.calls[-1] == ["baseline", "teacher_1", "teacher_2"]


def test_a_sibling_experiments_student_is_copied_without_labels_or_a_fit(tmp_path: Path) -> None:
    """The distill stage reuses a sibling's student of the same fingerprint: no soft targets are
    labelled and nothing is fitted. A student distilled differently (another student budget) is
    not this run's: the stage goes on to label (here it has no labeller, so it says so)."""
    cfg = tiny_config(tmp_path, **{"tracking.register_models": "false"})
    plan = make_plan(load_digits(cfg.data), cfg.data, cfg.seed)
    rel = layout.model_dir("student")

    def sibling_with_student(name: str, student_cfg: ExperimentConfig) -> Storage:
        sibling = Storage(cfg.storage.root, name)
        write_plan(sibling, plan)
        sibling.write_json(f"{rel}/weights.json", {"student": name})
        fp = model_fingerprint(stage_fingerprints(student_cfg), "student")
        mark_complete(sibling, layout.marker(rel), fp, {}, (rel,))
        return sibling

    other = sibling_with_student("other", tiny_config(tmp_path, **{"train.student.steps": "7"}))
    same = sibling_with_student("same", cfg)
    storage = Storage(cfg.storage.root, cfg.experiment)
    write_plan(storage, plan)
    fitter = HalfFitter(fails="")
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(fitter=fitter),
        fingerprints=stage_fingerprints(cfg),
        model_sources=(other,),
    )
    with pytest.raises(RaydefenseError, match="no labeller"):
        stage_distill(ctx)
    ctx.model_sources = (other, same)
    stage_distill(ctx)
    assert fitter.calls == []
    assert storage.read_json(f"{rel}/weights.json") == {"student": "same"}
    assert storage.read_json(layout.marker(rel))["outputs"] == {"reused_from": same.uri(rel)}
    assert not storage.exists(layout.marker(layout.soft_targets_dir("student")))
