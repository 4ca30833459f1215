"""Attack sweep on a real local Ray: a tiny experiment trained through distill, the sweep's one
scoring pass on Ray Data, Tune trials (one per attack setting) fed through the object store, the
worst case per target, MLflow parent + children, a rerun that neither rescores nor reruns trials,
and an interrupted Tune run that resumes only its failed trial."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.compute as pc
import pytest

from raydefense.attacks.metrics import accuracy_at, auc, best_threshold, tpr_at_fpr
from raydefense.audit.grid import grid_points, point_attack
from raydefense.audit.scoring import PoolScorer
from raydefense.data.plan import TEST
from raydefense.pipeline import run_pipeline
from raydefense.run.context import RunContext
from raydefense.storage import Storage
from raydefense.sweeps.attacks import TRIAL_METRICS, run_sweep, trials_of

from conftest import tiny_config

pytestmark = pytest.mark.ray

TARGETS = {"baseline", "teacher_1", "teacher_2", "dualmd", "student"}
SPACE = (
    "{secmi_stat: {t_sec: [20, 40], k: [10]}, loss: {timesteps: [[10], [200]]}, pia: {p: [4.0]}}"
)


class Counting:
    """A Ray role, counting calls of one method (scoring passes, sweep runs)."""

    def __init__(self, inner, method: str) -> None:
        self.inner, self.method, self.calls = inner, method, 0

    def __getattr__(self, name):
        if name == self.method:
            self.calls += 1
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_cluster):
    from raydefense.distributed.backend import ray_backend
    from raydefense.tracking.mlflow_tracker import MlflowTracker

    tmp = tmp_path_factory.mktemp("sweep")
    cfg = tiny_config(
        tmp,
        **{
            "attacks.enabled": "[loss, secmi_stat]",
            "train.steps": "6",
            "train.checkpoint_every": "6",
            "distill.draws_per_row": "1",
            "attacks.pia.timesteps": "[50]",
            "sweep.name": "it",
            "sweep.attacks": SPACE,
            "sweep.cpus_per_trial": "0.5",
            "sweep.max_concurrent_trials": "2",
        },
    )
    storage = Storage(cfg.storage.root, cfg.experiment)
    tracker = MlflowTracker(cfg.tracking.uri, cfg.experiment)

    def invoke():
        backend = ray_backend(cfg, tracker.uri)
        backend.scorer = Counting(PoolScorer(backend.pool), "score")
        backend.trials = Counting(backend.trials, "attack_trials")
        parent = tracker.start_run("pipeline/sweep")
        ctx = RunContext(
            cfg=cfg, storage=storage, backend=backend, tracker=tracker, parent_run=parent
        )
        run_pipeline(ctx, until="distill")
        t0 = time.perf_counter()
        results = run_sweep(ctx)
        secs = time.perf_counter() - t0
        tracker.end_run(parent)
        return results, backend, secs

    first = invoke()
    marker = storage.read_json("sweeps/it/_COMPLETE.json")
    second = invoke()
    return cfg, storage, tracker, first, marker, second


def test_every_attack_setting_and_target_has_a_trial(swept):
    cfg, storage, _, (results, ex, secs), _, _ = swept
    assert ex.scorer.calls == 1 and ex.trials.calls == 1
    expected = []
    for p in grid_points(cfg):
        for s in point_attack(cfg, p).settings():
            if (p.attack, s) not in expected:
                expected.append((p.attack, s))
    # secmi 2 + loss 2 + PIA (t=50, canonical t=200) = 6 trials
    assert len(expected) == 6 and results["num_trials"] == 6
    got = {
        (r["attack"], json.dumps(r["params"], sort_keys=True), r["target"])
        for r in results["trials"]
    }
    assert got == {(a, json.dumps(s, sort_keys=True), t) for a, s in expected for t in TARGETS}
    assert len(results["trials"]) == 6 * len(TARGETS)
    assert storage.exists("sweeps/it/scores.parquet") and storage.exists("sweeps/it/results.json")
    assert storage.read_json("sweeps/it/results.json")["worst_case"] == results["worst_case"]
    print(f"first sweep (scoring + 6 trials): {secs:.1f}s")


def test_worst_case_is_the_max_calibration_auc_over_trials(swept):
    _, _, _, (results, _, _), _, _ = swept
    assert set(results["worst_case"]) == TARGETS
    for t, w in results["worst_case"].items():
        rows = [r for r in results["trials"] if r["target"] == t]
        best = max(r["auc_calibration"] for r in rows)
        assert w["auc_calibration"] == best
        assert w == next(r for r in rows if r["auc_calibration"] == best)  # first in order


def test_trial_metrics_match_the_metrics_module_on_the_stored_scores(swept):
    _, storage, _, (results, _, _), _, _ = swept
    df = storage.read_table("sweeps/it/scores.parquet").to_pandas()
    for r in results["trials"]:
        g = df[
            (df.target == r["target"])
            & (df.attack == r["attack"])
            & (df.params == json.dumps(r["params"], sort_keys=True))
        ]
        cal, test = g[g.part != TEST], g[g.part == TEST]
        cy, ty = cal.is_member.astype(int), test.is_member.astype(int)
        sign = 1 if auc(cal.score, cy) >= 0.5 else -1  # orientation fixed on calibration
        thr, _ = best_threshold(sign * cal.score, cy)
        assert r["orientation"] == sign
        assert r["auc"] == pytest.approx(auc(sign * test.score, ty))
        assert r["auc_calibration"] == pytest.approx(auc(sign * cal.score, cy))
        if r["tpr_at_1pct_fpr"] is not None:
            assert r["tpr_at_1pct_fpr"] == pytest.approx(tpr_at_fpr(sign * test.score, ty, 0.01))
        else:
            assert len(ty) - ty.sum() < 100  # resolution-limited: fewer than 100 non-members
        assert r["asr_calibrated"] == pytest.approx(accuracy_at(sign * test.score, ty, thr))


def test_mlflow_parent_with_one_child_per_trial(swept):
    from mlflow.tracking import MlflowClient

    cfg, _, tracker, (results, _, _), _, _ = swept
    client = MlflowClient(tracking_uri=tracker.uri)
    parents = client.search_runs(
        [tracker.experiment_id],
        filter_string="tags.mlflow.runName = 'sweep/it'",
        order_by=["attributes.start_time ASC"],
    )
    assert len(parents) >= 2  # one per invocation
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [tracker.experiment_id], filter_string=(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    )
    assert len(children) == results["num_trials"] == 6
    seen = set()
    for c in children:
        attack, setting = c.data.params["attack"], c.data.params["setting"]
        seen.add((attack, setting))
        row = next(
            r
            for r in results["trials"]
            if r["attack"] == attack
            and r["target"] == "baseline"
            and json.dumps(r["params"], sort_keys=True) == setting
        )
        assert c.data.metrics["baseline.auc"] == pytest.approx(row["auc"])
        # Every metric with a value (a resolution-limited TPR has none and is not logged).
        rows = {
            r["target"]: r
            for r in results["trials"]
            if r["attack"] == attack and json.dumps(r["params"], sort_keys=True) == setting
        }
        expected = {
            f"{t}.{k}" for t in TARGETS for k in TRIAL_METRICS if rows[t].get(k) is not None
        }
        assert expected <= set(c.data.metrics) and "baseline.auc_calibration" in expected
        assert not {f"{t}.{k}" for t in TARGETS for k in TRIAL_METRICS} - expected & set(
            c.data.metrics
        )
    assert len(seen) == 6
    for t, w in results["worst_case"].items():
        assert parent.data.metrics[f"{t}.worst.auc_calibration"] == pytest.approx(
            w["auc_calibration"]
        )
        assert parent.data.tags[f"worst.{t}"].startswith(w["attack"] + " ")
    assert "sweep/results.json" in [
        a.path for a in client.list_artifacts(parent.info.run_id, "sweep")
    ]


def test_a_second_invocation_neither_rescores_nor_reruns_trials(swept):
    _, storage, _, (first, _, first_s), marker, (second, ex, second_s) = swept
    assert ex.scorer.calls == 0 and second["rescored"] is False and first["rescored"] is True
    assert storage.read_json("sweeps/it/_COMPLETE.json") == marker
    # the restored Tune run returns the same trials (ids and metrics), not new ones
    assert second["trials"] == first["trials"]
    assert second["worst_case"] == first["worst_case"]
    print(f"second sweep (no scoring, restored Tune run): {second_s:.1f}s vs {first_s:.1f}s")


def test_the_cli_sweep_command_reuses_the_complete_experiment(swept, tmp_path, capsys):
    """`raydefense sweep` in-process on the same config: every stage and the scores are
    complete, the Tune run is restored; the worst-case table is printed."""
    import yaml

    from raydefense.cli import main

    cfg, _, _, (first, _, _), _, _ = swept
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["sweep", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "sweep 'it': 6 trials" in out and "highest calibration AUC" in out
    for t, w in first["worst_case"].items():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(t + " "))
        assert w["attack"] in line and f"{w['auc_calibration']:.3f}" in line
    assert (
        main(["sweep", "--config", str(path), "--set", "sweep.attacks={secmi: {t_sec: [20]}}"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == (
        "raydefense: error: unknown attack 'secmi' in sweep.attacks; choose from: "
        "gsa1, gsa2, loss, pia, pian, secmi_nn, secmi_stat, sima"
    )


def _synthetic_scores():
    import pyarrow as pa

    rng = np.random.default_rng(0)
    cols: dict[str, list] = {
        k: [] for k in ("target", "attack", "params", "row_id", "is_member", "part", "score")
    }
    for target in ("baseline", "student"):
        for attack, params in (("loss", '{"t": 1}'), ("loss", '{"t": 2}'), ("pia", '{"t": 5}')):
            n = 40
            member = np.arange(n) % 2 == 0
            cols["target"] += [target] * n
            cols["attack"] += [attack] * n
            cols["params"] += [params] * n
            cols["row_id"] += list(range(n))
            cols["is_member"] += member.tolist()
            cols["part"] += np.where(np.arange(n) < 20, "calibration", TEST).tolist()
            cols["score"] += (rng.normal(size=n) + member).tolist()
    return pa.table(cols)


def test_an_interrupted_tune_run_resumes_only_its_failed_trial(tmp_path, ray_cluster):
    """The first run lacks one setting's scores, so that trial fails (as if interrupted); the
    rerun restores the Tune run: finished trials keep their results, the failed one reruns."""
    from functools import partial

    from ray import tune

    from raydefense.distributed.tune import _trial, run_trials
    from raydefense.sweeps.attacks import evaluate, unflatten_metrics

    cfg = tiny_config(tmp_path)
    storage = Storage(cfg.storage.root, cfg.experiment)
    table = _synthetic_scores()
    trials = trials_of(table)
    settings = [f"{t['attack']} {t['params']}" for t in trials]
    drop = trials[-1]
    lacking = table.filter(
        pc.invert(
            pc.and_(
                pc.equal(table["attack"], drop["attack"]), pc.equal(table["params"], drop["params"])
            )
        )
    )
    with pytest.raises(RuntimeError, match="1 sweep trial"):
        run_trials(cfg, storage, "sweeps/resume/tune", "run", settings, partial(evaluate, lacking))
    path = storage.path("sweeps/resume/tune/run")
    assert tune.Tuner.can_restore(path)
    grid = tune.Tuner.restore(path, trainable=_trial).get_results()
    done = {
        r.config["setting"]: (r.metrics["trial_id"], r.metrics["timestamp"])
        for r in grid
        if r.error is None
    }
    assert len(done) == len(trials) - 1
    time.sleep(1.1)  # Tune's timestamps are in seconds
    resumed = run_trials(
        cfg, storage, "sweeps/resume/tune", "run", settings, partial(evaluate, table)
    )
    assert len(resumed) == len(settings)
    for s, r in zip(settings[:-1], resumed[:-1]):  # the finished trials were restored, not rerun
        assert done[s] == (r["trial_id"], r["reported_at"])
    assert resumed[-1]["reported_at"] > max(ts for _, ts in done.values())
    last = unflatten_metrics(resumed[-1]["metrics"])
    assert set(last) == {"baseline", "student"}
    assert all(np.isfinite(v) for m in last.values() for v in m.values())


def test_trial_concurrency_follows_the_cluster():
    from raydefense.distributed.tune import concurrency
    from raydefense.errors import ResourceError

    cfg = tiny_config_default()
    assert concurrency(cfg, {"CPU": 2.0}, 100) == 4  # 2 CPUs / 0.5 per trial
    assert concurrency(cfg, {"CPU": 2.0}, 3) == 3  # never more than the trials
    cfg.sweep.cpus_per_trial = 1.5
    assert concurrency(cfg, {"CPU": 2.0}, 100) == 1  # at least one
    cfg.sweep.max_concurrent_trials = 3
    assert concurrency(cfg, {"CPU": 2.0}, 100) == 3
    cfg.sweep.cpus_per_trial = 4
    with pytest.raises(ResourceError, match="sweep.cpus_per_trial=4 exceeds the cluster's 2 CPUs"):
        concurrency(cfg, {"CPU": 2.0}, 100)


def tiny_config_default():
    from raydefense.config import load_config

    return load_config("smoke")


def test_asha_remembers_its_rungs_across_a_restore(tmp_path, ray_cluster) -> None:
    """Tune does not checkpoint its scheduler; AshaMemory does. Point 0 finishes, point 1 errors
    before reporting; after Tuner.restore, point 1's worse curve is stopped at the first rung
    by point 0's record (a fresh ASHA, with no records, would let it run to the end)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from raydefense.distributed.tune import AshaMemory

    # Local, so cloudpickle ships it by value (workers cannot import a test module).
    def _curve_trial(config: dict, marker: str = "") -> None:
        """Reports a fixed val_eps_mse curve per point; point 1's first attempt dies before it
        reports (as a trial does when its driver is killed)."""
        import os

        from ray import tune

        if config["point"] == 1 and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("interrupted")
        for i in range(6):
            tune.report({"val_eps_mse": (0.5 if config["point"] == 0 else 1.0) - 0.01 * i})

    trainable = tune.with_parameters(_curve_trial, marker=str(tmp_path / "attempted"))
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=10, grace_period=2, reduction_factor=2
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space={"point": tune.grid_search([0, 1])},
        tune_config=tune.TuneConfig(
            metric="val_eps_mse", mode="min", scheduler=scheduler, max_concurrent_trials=1
        ),
        run_config=tune.RunConfig(
            name="asha", storage_path=str(tmp_path), verbose=0, callbacks=[AshaMemory(scheduler)]
        ),
    )
    first = tuner.fit()
    assert first.num_errors == 1
    restored = tune.Tuner.restore(
        str(tmp_path / "asha"),
        trainable=tune.with_resources(trainable, {"cpu": 0.01}),
        resume_errored=True,
    )
    grid = restored.fit()
    assert grid.num_errors == 0
    iters = {r.config["point"]: r.metrics["training_iteration"] for r in grid}
    assert iters == {0: 6, 1: 2}


def test_learned_attack_fits_escape_a_tune_trials_placement_group(ray_cluster) -> None:
    """A training-sweep trial runs in a 0.01-CPU bundle that captures child tasks; the scorer's
    one-CPU fit tasks (secmi_nn, blackbox_nn) and the synthetic-row tasks (`cluster_task`, as
    PoolLabeller.synthesize) must be scheduled on the cluster, not in it."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raydefense.distributed.ray_pool import RayWorkerPool

    pg = placement_group([{"CPU": 0.01}])
    ray.get(pg.ready(), timeout=60)

    from raydefense.distributed.runtime import cluster_task

    @ray.remote(num_cpus=0.01)
    def trial() -> list[int]:
        return RayWorkerPool().map_tasks(abs, [(-2,), (3,)])

    def negate(x: int) -> int:
        return -x

    @ray.remote(num_cpus=0.01)
    def synthesizing_trial() -> int:
        return ray.get(cluster_task(negate, 1, 0).remote(-4))

    try:
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
        out = ray.get(trial.options(scheduling_strategy=strategy).remote(), timeout=120)
        assert out == [2, 3]
        again = synthesizing_trial.options(scheduling_strategy=strategy).remote()
        assert ray.get(again, timeout=120) == 4
    finally:
        remove_placement_group(pg)
