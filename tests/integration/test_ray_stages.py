"""Integration on a real local Ray cluster: concurrent multi-worker fits (DDP over gloo), resume
after a rerun, the soft-target actor pool, and resource checks."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from raydefense.config import ResourcesConfig
from raydefense.data.plan import MEMBER
from raydefense.data.tables import read_plan, read_soft_targets
from raydefense.diffusion.backbones.unet2d import load_unet
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import FitsFailed, NonFiniteLossError, ResourceError
from raydefense.layout import SOFT_TARGETS
from raydefense.pipeline import stage_prepare
from raydefense.run.context import RunContext
from raydefense.storage import Storage

from conftest import tiny_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, ray_cluster):
    """A prepared tiny experiment whose two teachers were fit concurrently with 2 workers each."""
    from raydefense.distributed.train import fit_many
    from raydefense.run.context import FitSpec

    tmp = tmp_path_factory.mktemp("exp")
    cfg = tiny_config(
        tmp,
        **{"resources.workers_per_model": "2", "train.steps": "10", "train.checkpoint_every": "5"},
    )
    storage = Storage(cfg.storage.root, cfg.experiment)
    stage_prepare(RunContext(cfg=cfg, storage=storage))
    specs = [
        FitSpec(model=m, kind="ddpm", model_index=i + 1, run_name=f"{m}-it")
        for i, m in enumerate(["teacher_1", "teacher_2"])
    ]
    dirs = fit_many(cfg, storage, specs, tracking_uri=None)
    return cfg, storage, dirs


def test_two_concurrent_two_worker_fits(experiment):
    cfg, storage, dirs = experiment
    assert set(dirs) == {"teacher_1", "teacher_2"}
    for model, rel in dirs.items():
        unet = load_unet(storage.path(rel), "ema")
        assert list(unet.config.block_out_channels) == [16, 32]
        state = torch.load(storage.path(f"{rel}/state.pt"), weights_only=False)
        assert state["step"] == 10
        # both workers' runs were recorded by Ray Train under the deterministic run name
        assert storage.exists(f"ray_train/{model}-it")


def test_rerun_with_the_same_name_resumes_and_matches_an_uninterrupted_run(experiment):
    from raydefense.distributed.train import fit_one
    from raydefense.run.context import FitSpec

    cfg, storage, _ = experiment
    one = cfg.model_copy(deep=True)
    one.resources.workers_per_model = 1
    first = one.model_copy(deep=True)
    first.train.steps = 6
    first.train.checkpoint_every = 3
    fit_one(first, storage, FitSpec("baseline", "ddpm", 0, "resume-me"), None)
    longer = one.model_copy(deep=True)
    longer.train.steps = 12
    longer.train.checkpoint_every = 3
    resumed_dir = fit_one(longer, storage, FitSpec("baseline", "ddpm", 0, "resume-me"), None)
    resumed = load_unet(storage.path(resumed_dir), "ema").state_dict()
    straight_dir = fit_one(longer, storage, FitSpec("baseline", "ddpm", 0, "straight"), None)
    straight = load_unet(storage.path(straight_dir), "ema").state_dict()
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], atol=1e-6), k


def test_a_ddp_teacher_stops_early_by_its_role_and_exports_its_best_report(experiment):
    """train.teacher.early_stopping on a 2-worker fit: no report after the first improves by
    min_delta 10, so both ranks agree to stop at step 2 (patience 1) and the exported model
    holds step 1's weights, marked final."""
    from raydefense.config import ExperimentConfig
    from raydefense.distributed.train import fit_one
    from raydefense.run.context import FitSpec

    cfg, storage, _ = experiment
    tree = cfg.model_dump(mode="json")
    tree["train"].update(log_every=1, steps=10)
    tree["train"]["teacher"] = {"early_stopping": True, "steps": 8}
    tree["train"]["early_stopping"] = {"patience": 1, "min_delta": 10.0}
    stop = ExperimentConfig.model_validate(tree)
    rel = fit_one(stop, storage, FitSpec("teacher_1", "ddpm", 1, "teacher-stops"), None)
    state = torch.load(storage.path(f"{rel}/state.pt"), weights_only=False)
    es = state["early_stopping"]
    assert (state["step"], es["best_step"], es["stopped"]) == (2, 1, True)
    saved = load_unet(storage.path(rel), "ema").state_dict()
    for k, v in es["ema"].items():
        assert torch.equal(saved[k.removeprefix("unet.")], v), k


def label_soft_targets(cfg, storage, teachers, owners, draws, out_dir=SOFT_TARGETS):
    """The labeller role on Ray's pool, as the distill stage runs it."""
    from raydefense.distributed.ray_pool import RayWorkerPool
    from raydefense.run.labelling import PoolLabeller

    return PoolLabeller(RayWorkerPool()).label_soft_targets(
        cfg, storage, teachers, owners, draws, out_dir
    )


def test_soft_target_actor_pool_labels_with_the_other_teacher(experiment):
    cfg, storage, _ = experiment
    plan = read_plan(storage)
    members = plan.split == MEMBER
    owners = {
        int(r): [t for k, t in enumerate(plan.models[1:]) if plan.membership[1 + k][i]]
        for i, r in enumerate(plan.row_id)
        if members[i]
    }
    n = label_soft_targets(cfg, storage, ["teacher_1", "teacher_2"], owners, draws=3)
    assert n == 3 * members.sum()
    table = storage.read_table  # noqa: F841  (plain pyarrow reads the output too)
    import pyarrow.parquet as pq

    files = [f for f in storage.listdir(SOFT_TARGETS) if f.endswith(".parquet")]
    rows = pq.read_table([storage.path(f"{SOFT_TARGETS}/{f}") for f in files][0]).to_pydict()
    for r, who in zip(rows["row_id"], rows["teachers"]):
        assert (
            owners[r] == ["teacher_1"]
            and who == "teacher_2"
            or owners[r] == ["teacher_2"]
            and who == "teacher_1"
        )
    assert "x_t" not in rows  # distill.store_x_t=false: the student regenerates them
    noising = (cfg.seed, NoiseSchedule.of(cfg.model), False)
    data = read_soft_targets(storage, (1, 8, 8), noising=noising)
    every = torch.arange(n)
    x_t = data.inputs(every)
    assert x_t.shape == (n, 1, 8, 8) and np.isfinite(data.target.numpy()).all()
    # a rerun (e.g. a retried stage) produces byte-identical soft targets, here storing x_t:
    # they are the x_t the student regenerated
    stored = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"store_x_t": True})})
    label_soft_targets(stored, storage, ["teacher_1", "teacher_2"], owners, draws=3)
    again = read_soft_targets(storage, (1, 8, 8))
    assert again.x_t is not None and torch.equal(again.x_t, x_t)
    assert torch.equal(again.target, data.target)


def test_synthetic_rows_are_drawn_per_teacher_and_labelled_by_the_other(experiment):
    """distill.synthetic_per_teacher: each teacher's samples (one Ray task per teacher) join the
    labelling as rows owned by the teacher that drew them, so the other teacher labels them."""
    from raydefense.distributed.ray_pool import RayWorkerPool
    from raydefense.run.labelling import PoolLabeller

    cfg, storage, _ = experiment
    cfg = cfg.model_copy(deep=True)
    cfg.distill.synthetic_steps = 4
    labeller = PoolLabeller(RayWorkerPool())
    teachers = ["teacher_1", "teacher_2"]
    drawn = labeller.synthesize(cfg, teachers, 6, "distill/synthetic")
    assert [len(drawn[t]) for t in teachers] == [6, 6]
    first = storage.read_table("distill/synthetic/teacher_1.parquet")
    assert first.column_names == ["row_id", "image"] and first.num_rows == 6
    owners = _owners(read_plan(storage))
    for t, ids in drawn.items():
        owners.update({r: [t] for r in ids})
    extra = [f"distill/synthetic/{t}.parquet" for t in teachers]
    groups = {r: teachers.index(o[0]) for r, o in owners.items()}
    n = labeller.label_soft_targets(cfg, storage, teachers, owners, 2, "distill/st", groups, extra)
    assert n == 2 * len(owners)
    import pyarrow.parquet as pq

    files = [f for f in storage.listdir("distill/st") if f.endswith(".parquet")]
    rows = pq.ParquetDataset([storage.path(f"distill/st/{f}") for f in files]).read().to_pydict()
    synthetic = {
        r: who for r, who in zip(rows["row_id"], rows["teachers"]) if r in drawn["teacher_1"]
    }
    assert len(synthetic) == 6 and set(synthetic.values()) == {"teacher_2"}
    # distill.member_inputs=false: the synthetic rows alone (the rows table is not read)
    only = {r: [t] for t, ids in drawn.items() for r in ids}
    groups = {r: teachers.index(o[0]) for r, o in only.items()}
    n = labeller.label_soft_targets(cfg, storage, teachers, only, 2, "distill/so", groups, extra)
    assert n == 2 * len(only)
    files = [f for f in storage.listdir("distill/so") if f.endswith(".parquet")]
    ids = pq.ParquetDataset([storage.path(f"distill/so/{f}") for f in files]).read()["row_id"]
    assert sorted(ids.to_pylist()) == sorted(2 * list(only))
    again = labeller.synthesize(cfg, teachers, 6, "distill/synthetic2")
    assert again == drawn
    assert storage.read_table("distill/synthetic2/teacher_2.parquet").equals(
        storage.read_table("distill/synthetic/teacher_2.parquet")
    )


def _owners(plan) -> dict[int, list[str]]:
    members = plan.split == MEMBER
    return {
        int(r): [t for k, t in enumerate(plan.models[1:]) if plan.membership[1 + k][i]]
        for i, r in enumerate(plan.row_id)
        if members[i]
    }


def test_a_soft_target_actor_killed_mid_stage_changes_nothing(experiment):
    """SIGKILL the labelling actor in the middle of its work (all rows are one block here, so
    one task): Ray Data restarts the actor and reruns the lost task; the output has exactly the
    expected rows, each once, and equals an undisturbed run value for value (every draw is
    seeded per row, not per batch)."""
    from processes import ActorKiller

    cfg, storage, _ = experiment
    cfg = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"label_batch_size": 4})})
    owners, teachers = _owners(read_plan(storage)), ["teacher_1", "teacher_2"]
    t0 = time.monotonic()
    n = label_soft_targets(cfg, storage, teachers, owners, 2, out_dir="distill/calm")
    t1 = time.monotonic()
    with ActorKiller("StreamActor", after=0) as killer:
        m = label_soft_targets(cfg, storage, teachers, owners, 2, out_dir="distill/kill")
    t2 = time.monotonic()
    assert killer.killed is not None, "the stage ended before the actor could be killed"
    print(f"\nsoft targets: undisturbed {t1 - t0:.1f}s, actor killed {t2 - t1:.1f}s")
    calm = storage.read_table("distill/calm").sort_by(
        [("row_id", "ascending"), ("draw", "ascending")]
    )
    hit = storage.read_table("distill/kill").sort_by(
        [("row_id", "ascending"), ("draw", "ascending")]
    )
    assert n == m == calm.num_rows == hit.num_rows == 2 * len(owners)
    keys = list(zip(hit["row_id"].to_pylist(), hit["draw"].to_pylist()))
    assert len(set(keys)) == len(keys)  # no duplicates
    assert hit.select(calm.column_names).equals(calm)


def test_a_scoring_actor_killed_mid_evaluate_changes_nothing(experiment):
    """The same for the scoring pool: a SIGKILLed scoring actor's batch is rerun; every row's
    scores equal an undisturbed pass (scores are seeded per row)."""
    from processes import ActorKiller

    from raydefense.audit.scoring import PoolScorer, ScoreJob
    from raydefense.distributed.ray_pool import RayWorkerPool

    cfg, storage, _ = experiment
    cfg = cfg.model_copy(
        update={
            "attacks": cfg.attacks.model_copy(
                update={"batch_size": 4, "score_actors": 1, "enabled": ["loss", "secmi_stat"]}
            )
        }
    )
    plan = read_plan(storage)
    job = ScoreJob("teacher_1", np.ones(len(plan.row_id), bool), ["loss", "secmi_stat"], False)
    t0 = time.monotonic()
    (calm,), _ = PoolScorer(RayWorkerPool()).score(cfg, plan, [job], {})
    t1 = time.monotonic()
    # Killed in its first task: back-to-back batches keep the actor's title busy, so a later
    # task's start can go unseen by the watcher and the pass end with no kill.
    with ActorKiller("BlockActor", after=0) as killer:
        (hit,), _ = PoolScorer(RayWorkerPool()).score(cfg, plan, [job], {})
    t2 = time.monotonic()
    assert killer.killed is not None, "scoring ended before the actor could be killed"
    print(f"\nscoring: undisturbed {t1 - t0:.1f}s, actor killed {t2 - t1:.1f}s")
    assert set(hit) == set(calm) and len(hit["row_id"]) == len(plan.row_id)
    for k in calm:
        assert np.array_equal(hit[k], calm[k]), k


def test_a_nan_loss_stops_a_ddp_fit_at_once_with_one_line(experiment):
    """lr 1e30 makes the second step's loss nan on both DDP ranks. The fit reports it and ends
    (a raised error would make Ray Train retry from the last checkpoint, to the same nan); the
    driver raises one line naming the model and the step, and writes no model."""
    from raydefense.distributed.train import fit_many
    from raydefense.run.context import FitSpec

    cfg, storage, _ = experiment
    bad = cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e30})})
    spec = FitSpec(model="baseline", kind="ddpm", model_index=0, run_name="baseline-nan")
    before = storage.manifest("models/baseline") if storage.exists("models/baseline") else {}
    with pytest.raises(FitsFailed) as e:
        fit_many(bad, storage, [spec], tracking_uri=None)
    err = e.value.failed["baseline"]
    assert isinstance(err, NonFiniteLossError) and (err.model, err.step) == ("baseline", 2)
    assert str(e.value).startswith("train baseline: the loss became nan at step 2;")
    after = storage.manifest("models/baseline") if storage.exists("models/baseline") else {}
    assert e.value.done == [] and after == before  # the failed fit published no model


def test_impossible_resource_requests_are_refused(ray_cluster):
    from raydefense.distributed.runtime import check_fit_resources

    cluster = ray_cluster.cluster_resources()
    with pytest.raises(ResourceError, match="workers_per_model=64") as e:
        check_fit_resources(ResourcesConfig(workers_per_model=64), cluster)
    assert "\n" not in str(e.value)
    with pytest.raises(ResourceError, match="GPU"):
        check_fit_resources(ResourcesConfig(gpus_per_worker=1), cluster)
    check_fit_resources(ResourcesConfig(workers_per_model=2), cluster)
