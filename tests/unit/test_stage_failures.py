"""A stage whose fits partly fail: the finished fits keep their models (marker published,
MLflow run FINISHED, a rerun skips them); each failed fit's MLflow run is FAILED with its
one-line error. Fits run for real on the in-process executor (raydefense.run.local)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydefense import layout
from raydefense.config import ExperimentConfig
from raydefense.data.plan import make_plan
from raydefense.data.sources import load_digits
from raydefense.data.tables import write_plan
from raydefense.diffusion.checkpoint import load_state
from raydefense.errors import FitsFailed, RaydefenseError
from raydefense.pipeline import stage_distill, stage_train
from raydefense.run.context import Backend, RunContext
from raydefense.run.fingerprints import model_fingerprint, stage_fingerprints
from raydefense.run.local import LocalFitter
from raydefense.run.markers import is_complete, mark_complete
from raydefense.storage import Storage
from raydefense.tracking.mlflow_tracker import MlflowTracker

from conftest import tiny_config

FAST = {"tracking.register_models": "false", "train.steps": "4", "train.checkpoint_every": "2"}


def fitted(storage: Storage) -> set[str]:
    """The models whose fits ran in this experiment (the in-process fitter checkpoints each
    under ray_train/<model>-<fingerprint>)."""
    return {run.rsplit("-", 1)[0] for run in storage.listdir(layout.RAY_TRAIN)}


def test_finished_fits_are_kept_and_the_failed_ones_are_marked(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{**FAST, "train.teacher.lr": "1e30"})  # teachers turn nan
    storage = Storage(cfg.storage.root, cfg.experiment)
    write_plan(storage, make_plan(load_digits(cfg.data), cfg.data, cfg.seed))
    assert storage.read_json(layout.PLAN_JSON)["models"] == ["baseline", "teacher_1", "teacher_2"]
    tracker = MlflowTracker(cfg.tracking.uri, cfg.experiment)
    parent = tracker.start_run("pipeline/train")
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(fitter=LocalFitter()),
        tracker=tracker,
        parent_run=parent,
        fingerprints=stage_fingerprints(cfg),
    )
    with pytest.raises(FitsFailed, match=r"train teacher_1: the loss became (nan|inf) at step"):
        stage_train(ctx)

    def complete(m: str) -> bool:
        fp = model_fingerprint(ctx.fingerprints, m)
        return is_complete(storage, layout.marker(layout.model_dir(m)), fp)

    assert [complete(m) for m in ("baseline", "teacher_1", "teacher_2")] == [True, False, False]
    runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    status = {r.data.tags["raydefense.model"]: r for r in runs}
    assert {m: r.info.status for m, r in status.items()} == {
        "baseline": "FINISHED",
        "teacher_1": "FAILED",
        "teacher_2": "FAILED",
    }
    assert "the loss became" in status["teacher_2"].data.tags["raydefense.error"]
    # The rerun (the teachers' learning rate fixed: the baseline's fingerprint is unchanged)
    # fits only the failed models.
    storage.delete(layout.RAY_TRAIN)
    ctx.cfg = tiny_config(tmp_path, **FAST)
    ctx.fingerprints = stage_fingerprints(ctx.cfg)
    stage_train(ctx)
    assert fitted(storage) == {"teacher_1", "teacher_2"}
    assert all(complete(m) for m in ("baseline", "teacher_1", "teacher_2"))


def test_a_sibling_experiments_complete_models_are_copied_not_trained(tmp_path: Path) -> None:
    """A training sweep's trials share models: stage_train copies a model that a sibling
    completed with the same fingerprint and fits only the rest (here, the teachers of a sibling
    whose teachers trained longer are not this run's: only the baseline is copied)."""
    cfg = tiny_config(tmp_path, **FAST)
    other_cfg = tiny_config(tmp_path, **{**FAST, "train.teacher.steps": "2"})
    sibling = Storage(cfg.storage.root, "sibling")
    plan = make_plan(load_digits(cfg.data), cfg.data, cfg.seed)
    write_plan(sibling, plan)
    stage_train(
        RunContext(
            cfg=other_cfg,
            storage=sibling,
            backend=Backend(fitter=LocalFitter()),
            fingerprints=stage_fingerprints(other_cfg),
        )
    )
    assert fitted(sibling) == {"baseline", "teacher_1", "teacher_2"}
    sibling.write_json("models/baseline/registered.json", {"version": "1"})  # MLflow's, not ours
    storage = Storage(cfg.storage.root, cfg.experiment)
    write_plan(storage, plan)
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(fitter=LocalFitter()),
        fingerprints=stage_fingerprints(cfg),
        model_sources=(Storage(cfg.storage.root, "missing"), sibling),
    )
    stage_train(ctx)
    assert fitted(storage) == {"teacher_1", "teacher_2"}
    rel = layout.model_dir("baseline")
    fp = model_fingerprint(ctx.fingerprints, "baseline")
    assert is_complete(storage, layout.marker(rel), fp)
    assert storage.read_json(layout.marker(rel))["outputs"] == {"reused_from": sibling.uri(rel)}
    assert load_state(storage.path(rel))["step"] == 4
    assert not storage.exists(f"{rel}/registered.json")
    # --force train trains everything again, sibling or not.
    storage.delete(layout.RAY_TRAIN)
    ctx.force = {"train"}
    stage_train(ctx)
    assert fitted(storage) == {"baseline", "teacher_1", "teacher_2"}
    assert "reused_from" not in storage.read_json(layout.marker(rel))["outputs"]


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
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(fitter=LocalFitter()),
        fingerprints=stage_fingerprints(cfg),
        model_sources=(other,),
    )
    with pytest.raises(RaydefenseError, match="no labeller"):
        stage_distill(ctx)
    ctx.model_sources = (other, same)
    stage_distill(ctx)
    assert not storage.exists(layout.RAY_TRAIN)  # nothing fitted
    assert storage.read_json(f"{rel}/weights.json") == {"student": "same"}
    assert storage.read_json(layout.marker(rel))["outputs"] == {"reused_from": same.uri(rel)}
    assert not storage.exists(layout.marker(layout.soft_targets_dir("student")))
