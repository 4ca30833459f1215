"""End to end: `raydefense run --preset smoke` as a user runs it (real local Ray, SQLite MLflow,
Parquet under ./runs), then a cached rerun, then bad input through the CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from processes import run_cli

pytestmark = pytest.mark.e2e

TARGETS = {"baseline", "teacher_1", "teacher_2", "dualmd", "student"}
ATTACKS = {"loss", "secmi_stat", "secmi_nn", "pia", "pian", "sima", "gsa1", "gsa2", "blackbox_nn"}
CALIBRATED = {"lira", "rmia", "quantile", "combined"}  # reference, population, combined (#27)
ROW_KEYS = {
    "target",
    "attack",
    "params",
    "auc",
    "auc_ci",
    "tpr_at_1pct_fpr",
    "tpr_at_1pct_fpr_ci",
    "tpr_at_0.1pct_fpr",
    "asr_calibrated",
    "asr_oracle",
    "tpr_rule",
    "n_members",
    "n_nonmembers",
}


def cli(cwd: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return run_cli(cwd, *args, timeout=timeout)


def test_results_json_follows_the_contract(smoke_run):
    cwd, _, _ = smoke_run
    report = cwd / "runs" / "smoke" / "report"
    results = json.loads((report / "results.json").read_text())
    assert results["experiment"] == "smoke" and len(results["config_fingerprint"]) == 64
    assert results["seed"] == 0
    assert {"torch", "ray", "mlflow", "diffusers"} <= set(results["versions"])
    assert {"prepare", "train", "distill", "evaluate"} <= set(results["timings"])
    rows = results["attacks"]
    refused = {("dualmd", "gsa1"), ("dualmd", "gsa2")}  # gradients: DualMD is gray-box
    no_router = {(t, "dualmd_adaptive") for t in TARGETS - {"dualmd"}}
    assert {(r["target"], r["attack"]) for r in rows} == {
        (t, a) for t in TARGETS for a in ATTACKS | CALIBRATED
    } - refused | {("dualmd", "dualmd_adaptive")}
    assert {(s["target"], s["attack"]) for s in results["skipped"]} == refused | no_router
    for r in rows:
        assert ROW_KEYS <= set(r), ROW_KEYS - set(r)
        assert 0.0 <= r["auc"] <= 1.0 and r["auc_ci"][0] <= r["auc"] <= r["auc_ci"][1]
        expect = 16 if r["target"].startswith("teacher") else 32
        assert (r["n_members"], r["n_nonmembers"]) == (expect, 32)
        assert r["auc_calibration"] >= 0.5 and r["orientation"] in (1, -1)
        # 32 test (and calibration) non-members: 1% and 0.1% FPR are below the resolution.
        assert r["tpr_at_1pct_fpr"] is None and r["tpr_at_1pct_fpr_calibrated"] is None
        assert "tpr_at_1pct_fpr" in r["resolution_limited"]
    worst = results["privacy"]["dualmd"]
    assert worst["access"] == "gray-box" and worst["black_box"]["attack"] == "blackbox_nn"
    pia = [r for r in rows if r["target"] == "baseline" and r["attack"] == "pia"]
    assert sorted(r["params"]["t"] for r in pia) == [50, 100, 200]
    quality = {(q["target"], q["metric"]) for q in results["quality"]}
    for t in TARGETS:
        assert {
            (t, "heldout_eps_mse"),
            (t, "domain_fid"),
            (t, "memorized_count"),
            (t, "mmd_member_gap"),
            (t, "mmd_p_value"),
        } <= quality
    domain_rows = [
        q["value"] for q in results["quality"] if q["metric"] == "domain_classifier_rows"
    ]
    assert domain_rows and domain_rows[0] > 0  # spare pool rows, never audited ones
    md = (report / "report.md").read_text()
    assert "| Attack | baseline | teacher_1 | teacher_2 | dualmd | student |" in md
    assert "| pia (canonical) |" in md and "| gsa1 |" in md and "n/a" in md
    assert "| dualmd, black-box only | black-box | blackbox_nn" in md and "res.-limited" in md
    for f in (
        "roc_loss.png",
        "roc_secmi_stat.png",
        "roc_pia_canonical.png",
        "samples_baseline.png",
        "samples_dualmd.png",
        "samples_student.png",
    ):
        assert (report / f).stat().st_size > 0, f
    # the membership matrix and Parquet tables are where DESIGN.md says
    import pyarrow.parquet as pq

    membership = pq.read_table(cwd / "runs" / "smoke" / "prepare" / "membership.parquet")
    assert membership.column_names == [
        "row_id",
        "baseline",
        "teacher_1",
        "teacher_2",
        "shadow_1",
        "shadow_1_teacher_1",
        "shadow_1_teacher_2",
    ]
    # GSA against each target learned from shadows trained like it (regime "matched")
    shadows = results["shadows"]
    assert {t: sorted(s["models"]) for t, s in shadows.items()} == {
        "baseline": ["shadow_1"],
        "teacher_1": ["shadow_1_teacher_1", "shadow_1_teacher_2"],
        "teacher_2": ["shadow_1_teacher_1", "shadow_1_teacher_2"],
        "student": ["shadow_1_student"],
    }
    assert shadows["student"]["models"]["shadow_1_student"] == {"members": 64, "heldout": 64}
    # Reference attacks compare each target with OUT references of its regime (DualMD: the
    # shadow draw's router), scored on the Ray actor pool beside the targets; the population is
    # the draw's held-out half.
    refs = results["references"]
    assert {t: sorted(r["models"]) for t, r in refs.items()} == {
        "baseline": ["shadow_1"],
        "teacher_1": ["shadow_1_teacher_1", "shadow_1_teacher_2"],
        "teacher_2": ["shadow_1_teacher_1", "shadow_1_teacher_2"],
        "dualmd": ["shadow_1_dualmd"],
        "student": ["shadow_1_student"],
    }
    assert all(r["population_rows"] == 64 for r in refs.values())
    assert all(
        m["audited_rows_trained_on"] == 0 for r in refs.values() for m in r["models"].values()
    )
    lira = [r for r in rows if r["target"] == "student" and r["attack"] == "lira"]
    assert {r["params"]["base"] for r in lira} == {"loss", "secmi_stat", "pia", "pian", "sima"}
    assert all(r["family"] == "reference" and r["params"]["references"] == 1 for r in lira)
    covered = {f["family"] for f in results["suite"]["covered"]}
    assert {"threshold", "learned", "black-box", "reference", "population", "combined"} <= covered
    assert any("online LiRA" in m for m in results["suite"]["not_covered"])
    assert "strongest attack in the suite, chosen on calibration" in md
    for entry in results["privacy"].values():  # what the new families add, paired CI
        gain = entry.get("gain_over_without_calibrated")
        if gain is not None:
            lo, hi = gain["auc_diff_ci"]
            assert lo <= gain["auc_diff"] <= hi
    assert "- **teacher_1** (gsa1, gsa2): teacher-like: `shadow_1_teacher_1` (32 members" in md
    assert (
        cwd / "runs" / "smoke" / "distill" / "shadow_1_student" / "soft_targets" / "_COMPLETE.json"
    ).exists()
    from diffusers import UNet2DModel

    UNet2DModel.from_pretrained(cwd / "runs" / "smoke" / "models" / "student" / "ema")


NOISE = re.compile(
    r"\bE\s+\d+\s+\d+\]|core_worker\.cc|\bERROR\b|Traceback|\(raylet\)|\(TrainController"
    r"|\(RayTrainWorker|logging_progress|streaming_executor"
)


def test_console_is_quiet_and_shows_progress(smoke_run):
    """The default console: raydefense's stages, one progress line per job per tenth of its
    work, the summary; no error-level line and nothing of Ray's internals, no ANSI codes (the
    output is not a terminal). Ray's messages are in the log file the last line names."""
    _, first, _ = smoke_run
    out = first.stderr + first.stdout
    lines = out.splitlines()
    assert not [ln for ln in lines if NOISE.search(ln)], [ln for ln in lines if NOISE.search(ln)]
    assert "\x1b[" not in out
    assert len(lines) < 150, len(lines)
    for job in ("train baseline", "train student", "label student", "score and generate"):
        shown = [ln for ln in lines if f"] {job} " in ln]
        assert shown and "100%" in shown[-1], (job, shown)
    log = re.search(r"messages: (\S+);", first.stderr)
    assert log and os.path.getsize(log.group(1)) > 0
    print(f"console: {len(lines)} lines")


def test_mlflow_run_tree(smoke_run):
    from mlflow.tracking import MlflowClient

    cwd, _, _ = smoke_run
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.info.run_name == "pipeline/run"]
    assert len(parents) >= 1
    parent = parents[-1]  # the first invocation
    children = {
        r.info.run_name: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert {
        "train/baseline",
        "train/teacher_1",
        "train/teacher_2",
        "distill/soft_targets",
        "train/student",
        "train/shadow_1",
        "train/shadow_1_teacher_1",
        "train/shadow_1_teacher_2",
        "distill/shadow_1_student/soft_targets",
        "train/shadow_1_student",
        "evaluate/baseline",
        "evaluate/teacher_1",
        "evaluate/teacher_2",
        "evaluate/dualmd",
        "evaluate/student",
    } <= set(children)
    assert "loss.auc" in children["evaluate/student"].data.metrics
    assert parent.data.params["train.steps"] == "100"
    assert parent.data.tags.get("version.ray")
    assert "student.loss.auc" in parent.data.metrics
    history = client.get_metric_history(children["train/baseline"].info.run_id, "loss")
    assert len(history) >= 3 and history[-1].step == 100
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"prepare", "report", "evaluate", "config.json"} <= artifacts
    # lineage: the data as MLflow inputs of the pipeline run and of each fit
    inputs = {d.dataset.name: d for d in parent.inputs.dataset_inputs}
    assert set(inputs) >= {"digits/members", "digits/nonmembers"}
    assert json.loads(inputs["digits/members"].dataset.profile)["num_rows"] == 64
    fit_inputs = children["train/teacher_1"].inputs.dataset_inputs
    assert [d.dataset.name for d in fit_inputs] == ["digits/teacher_1"]
    assert json.loads(fit_inputs[0].dataset.profile)["num_rows"] == 32
    # every target model registered, its version tagged with its audit
    for model in ("baseline", "teacher_1", "teacher_2", "student"):
        (version,) = client.search_model_versions(f"name = 'smoke-{model}'")
        assert version.run_id == children[f"train/{model}"].info.run_id
        tags = version.tags
        assert 0.0 <= float(tags["raydefense.audit.worst_case_auc"]) <= 1.0
        assert tags["raydefense.audit.worst_case_attack"]
        assert "raydefense.audit.domain_fid" in tags or "raydefense.audit.fid" in tags, tags
        assert tags["raydefense.audit.report"].startswith(f"runs:/{parent.info.run_id}/")
        assert version.description.startswith(
            "raydefense audit (smoke): worst-case membership AUC "
        ), version.description
    student_run = children["train/student"].info.run_id
    assert "audit_report" in {a.path for a in client.list_artifacts(student_run)}


def test_second_run_trains_nothing_and_is_fast(smoke_run):
    from mlflow.tracking import MlflowClient

    cwd, _, _ = smoke_run
    t0 = time.perf_counter()
    second = cli(cwd, "run", "--preset", "smoke")
    elapsed = time.perf_counter() - t0
    assert second.returncode == 0, second.stderr[-3000:]
    assert elapsed < 60, elapsed
    for stage in ("prepare", "train", "distill", "evaluate"):
        assert f"{stage}: complete" in second.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    trains = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=100)
        if r.info.run_name.startswith("train/")
    ]
    # from the first run only: baseline, 2 teachers, student, and the shadows (baseline-like,
    # 2 teacher-like, the shadow student)
    assert len(trains) == 8


def test_profile_of_the_run_takes_the_students_gap_apart(smoke_run):
    cwd, _, _ = smoke_run
    from raydefense.audit.profile import DEFAULT_TIMESTEPS

    out = cli(cwd, "profile", "--preset", "smoke", "--draws", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "labelling teachers on those members" in out.stdout
    prof = json.loads((cwd / "runs/smoke/report/timestep_profile.json").read_text())
    assert prof["timesteps"] == list(DEFAULT_TIMESTEPS) and prof["weights"] == "ema"
    assert set(prof["targets"]) == {"baseline", "teacher_1", "teacher_2", "student"}
    for name, line in prof["targets"].items():
        assert all(0 < v < 2 for v in line["member"] + line["nonmember"]), name
        assert all(0 <= a <= 1 for a in line["auc"]), name
    dec = prof["student_decomposition"]
    assert set(dec) == {
        "student_on_members",
        "labellers_on_members",
        "student_on_nonmembers",
        "teachers_on_nonmembers",
    }
    assert dec["student_on_nonmembers"] == pytest.approx(prof["targets"]["student"]["nonmember"])
    bad = cli(cwd, "profile", "--preset", "smoke", "--timesteps", "10,x")
    assert bad.returncode == 2 and "not a list of integers" in bad.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "train.stepz=3"], "train.stepz"),
        (["--set", "data.split_file=/nonexistent/split.npz"], "does not exist"),
        (["--preset", "nope"], "unknown preset"),
        (["--set", "attacks.enabled=[loss, nope]"], "secmi_stat"),
        (
            ["--set", "attacks.enabled=[gsa1]", "--set", "attacks.targets=[dualmd]"],
            "needs white-box access",
        ),
        (
            [
                "--set",
                "attacks.enabled=[sima, dualmd_adaptive]",
                "--set",
                "attacks.targets=[student]",
            ],
            "single model with no router",
        ),
        (
            ["--set", "attacks.enabled=[loss, dualmd_adaptive]"],
            "needs a query attack that asks eps about one timestep served by each teacher",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    out = cli(tmp_path, "run", *args, timeout=120)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0], out.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_impossible_resources_fail_fast(tmp_path):
    out = cli(
        tmp_path,
        "train",
        "--preset",
        "smoke",
        "--set",
        "resources.workers_per_model=64",
        "--set",
        "tracking.enabled=false",
        timeout=300,
    )
    assert out.returncode == 2
    assert "workers_per_model=64" in out.stderr.strip().splitlines()[-1]


def test_ray_job_entrypoint_runs_a_stage(tmp_path):
    """jobs/pipeline.py (what `ray job submit` runs) is the same CLI; `prepare` needs no cluster."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = Path(__file__).resolve().parents[2] / "jobs" / "pipeline.py"
    out = subprocess.run(
        [
            sys.executable,
            str(script),
            "--stage",
            "prepare",
            "--preset",
            "smoke",
            "--set",
            "tracking.enabled=false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    plan = json.loads((tmp_path / "runs" / "smoke" / "prepare" / "plan.json").read_text())
    assert plan["num_members"] == 64 and plan["shard_sizes"] == [32, 32]
    assert (tmp_path / "runs" / "smoke" / "prepare" / "_COMPLETE.json").exists()


# ----------------------------------------------------------------------------- raydefense audit

QUERY_ATTACKS = ["loss", "secmi_stat", "pia", "sima"]


def _split_of(exp: Path, path: Path) -> Path:
    """The smoke run's members (with their shards) and non-members as a split file."""
    import pyarrow.parquet as pq

    from raydefense.data.plan import write_split_file

    rows = pq.read_table(exp / "prepare" / "rows.parquet", columns=["row_id", "split", "shard"])
    d = rows.to_pydict()
    members = [i for i, s in enumerate(d["split"]) if s == "member"]
    write_split_file(
        str(path),
        [d["row_id"][i] for i in members],
        [r for r, s in zip(d["row_id"], d["split"]) if s == "nonmember"],
        member_shards=[d["shard"][i] for i in members],
    )
    return path


@pytest.mark.slow
def test_audit_of_the_pipeline_models_gives_the_pipeline_scores(smoke_run, tmp_path):
    """`raydefense audit` on the smoke run's own weights (raydefense model dirs), over the same
    rows and shards: every per-row query-attack score of every target (DualMD's router included)
    equals the pipeline's evaluate stage."""
    import pyarrow.parquet as pq

    cwd, _, _ = smoke_run
    exp = cwd / "runs" / "smoke"
    split = _split_of(exp, tmp_path / "split.npz")
    models = []
    for role in ("baseline", "teacher_1", "teacher_2", "student"):
        models += ["--model", f"{role}={exp / 'models' / role}"]
    attacks = ",".join([*QUERY_ATTACKS, "dualmd_adaptive"])
    audit = ["audit", "--preset", "smoke", "--set", "experiment=audited"]
    audit += ["--set", f"attacks.enabled=[{attacks}]", "--split", str(split), *models]
    out = cli(tmp_path, *audit)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "train: imported teacher_2" in out.stderr
    key = ["target", "attack", "params", "row_id"]
    ours = pq.read_table(tmp_path / "runs" / "audited" / "evaluate" / "scores.parquet").to_pandas()
    theirs = pq.read_table(exp / "evaluate" / "scores.parquet").to_pandas()
    theirs = theirs[theirs.attack.isin(QUERY_ATTACKS)]
    joined = ours[ours.attack.isin(QUERY_ATTACKS)].merge(theirs, on=key, suffixes=("", "_p"))
    assert len(joined) == len(theirs) > 0
    assert set(joined.target) == {"baseline", "teacher_1", "teacher_2", "dualmd", "student"}
    assert (joined.is_member == joined.is_member_p).all()
    assert np.allclose(joined.score, joined.score_p, rtol=1e-4, atol=1e-5)
    results = json.loads((tmp_path / "runs" / "audited" / "report" / "results.json").read_text())
    assert {(r["target"], r["attack"]) for r in results["attacks"]} >= {
        ("dualmd", "dualmd_adaptive")
    }
    assert set(results["audit"]["models"]) == {"baseline", "teacher_1", "teacher_2", "student"}
    # a rerun imports nothing again
    again = cli(tmp_path, *audit)
    assert again.returncode == 0 and "train: complete" in again.stderr, again.stderr[-3000:]


@pytest.mark.slow
def test_registered_student_loads_back_and_is_audited_by_its_uri(smoke_run, tmp_path):
    """The Model Registry's student: its pyfunc generates images, and `raydefense audit
    --model student=models:/smoke-student/1` gives the pipeline's per-row scores."""
    import mlflow
    import pandas as pd
    import pyarrow.parquet as pq

    cwd, _, _ = smoke_run
    exp = cwd / "runs" / "smoke"
    mlflow.set_tracking_uri(f"sqlite:///{cwd / 'mlflow.db'}")
    images = mlflow.pyfunc.load_model("models:/smoke-student/1").predict(
        pd.DataFrame({"seed": [0, 1, 0]}), params={"num_inference_steps": 4}
    )
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.uint8
    assert (images[0] == images[2]).all() and (images[0] != images[1]).any()

    split = _split_of(exp, tmp_path / "split.npz")
    out = cli(
        cwd,
        "audit",
        "--preset",
        "smoke",
        "--set",
        "experiment=registered-student",
        "--set",
        f"attacks.enabled=[{','.join(QUERY_ATTACKS)}]",
        "--model",
        "student=models:/smoke-student/1",
        "--split",
        str(split),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    key = ["target", "attack", "params", "row_id"]
    ours = pq.read_table(cwd / "runs" / "registered-student" / "evaluate" / "scores.parquet")
    theirs = pq.read_table(exp / "evaluate" / "scores.parquet").to_pandas()
    theirs = theirs[theirs.attack.isin(QUERY_ATTACKS) & (theirs.target == "student")]
    joined = ours.to_pandas().merge(theirs, on=key, suffixes=("", "_p"))
    assert len(joined) == len(theirs) > 0
    assert np.allclose(joined.score, joined.score_p, rtol=1e-4, atol=1e-5)
    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_model_version("smoke-student", "1").tags
    assert tags["raydefense.audit.experiment"] == "registered-student"


def _train_outside(path: Path, members: np.ndarray, steps: int = 150) -> None:
    """A plain diffusers training loop (nothing of raydefense): a small UNet2DModel on 8x8
    digits, DDPMScheduler's noise, MSE on eps; saved as a DDPMPipeline."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x = torch.tensor(np.rint(load_digits().images[members] * 255 / 16) / 127.5 - 1.0)
    x = x.float()[:, None]
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )
    sched = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = x[torch.randint(len(x), (32,))]
        noise, t = torch.randn_like(batch), torch.randint(1000, (len(batch),))
        loss = torch.nn.functional.mse_loss(unet(sched.add_noise(batch, noise, t), t).sample, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)


def test_audit_of_a_model_trained_outside_raydefense(tmp_path):
    from raydefense.data.plan import write_split_file

    rng = np.random.default_rng(0)
    rows = rng.permutation(1797)
    members, nonmembers = rows[:64], rows[64:128]
    write_split_file(str(tmp_path / "split.npz"), members, nonmembers)
    _train_outside(tmp_path / "mine", members)
    out = cli(
        tmp_path,
        "audit",
        "--preset",
        "smoke",
        "--set",
        "experiment=mine",
        "--set",
        "attacks.enabled=[loss,secmi_stat,pia]",
        "--model",
        f"baseline={tmp_path / 'mine'}",
        "--split",
        str(tmp_path / "split.npz"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = tmp_path / "runs" / "mine" / "report"
    results = json.loads((report / "results.json").read_text())
    assert {r["target"] for r in results["attacks"]} == {"baseline"}
    assert {r["attack"] for r in results["attacks"]} == {"loss", "secmi_stat", "pia"}
    assert all((r["n_members"], r["n_nonmembers"]) == (32, 32) for r in results["attacks"])
    assert results["audit"]["models"]["baseline"]["source"] == str(tmp_path / "mine")
    assert "Audited models" in (report / "report.md").read_text()
    assert "baseline" in out.stdout  # the summary


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--model", "teacher=./x"], "unknown role 'teacher'"),
        (["--model", "baseline=/nonexistent/unet"], "is not a directory"),
        (["--model", "baseline"], "is not ROLE=URI"),
        (["--model", "teacher_1=/tmp"], "import all K teachers"),
    ],
)
def test_bad_audit_input_is_one_clear_line(tmp_path, args, needle):
    out = cli(tmp_path, "audit", "--preset", "smoke", *args, timeout=120)
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0], out.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written
