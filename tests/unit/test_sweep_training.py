"""Training sweeps, the Ray-free core: the grid, trial configs, objectives, the Pareto front, and
the held-out validation that ASHA reads."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydefense.audit.scoring import heldout_validator
from raydefense.audit.selection import pareto_front
from raydefense.config import load_config
from raydefense.data.examples import ImageData
from raydefense.data.plan import CALIBRATION, MEMBER, NONMEMBER, SHADOW, TEST, make_plan
from raydefense.data.pool import DATASETS
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.training import fit
from raydefense.errors import ConfigError
from raydefense.run.fingerprints import training_sweep_fingerprint
from raydefense.sweeps.training_sweep import (
    TrainingPoint,
    apply_values,
    check_training_sweep,
    training_points,
    trial_config,
    trial_objectives,
)


def cfg_with(*sets: str):
    return load_config("smoke", None, ["sweep.kind=training", *sets])


def test_grid_is_the_cartesian_product_in_path_order() -> None:
    cfg = cfg_with("sweep.training={train.lr: [0.001, 0.002], distill.draws_per_row: [1, 4]}")
    points = training_points(cfg)
    assert [dict(p.values) for p in points] == [
        {"train.lr": 0.001, "distill.draws_per_row": 1},
        {"train.lr": 0.001, "distill.draws_per_row": 4},
        {"train.lr": 0.002, "distill.draws_per_row": 1},
        {"train.lr": 0.002, "distill.draws_per_row": 4},
    ]
    keys = [p.key for p in points]
    assert len(set(keys)) == 4 and keys[0].startswith("p000-")
    # A point's key depends on its values, not only its index.
    assert TrainingPoint(0, (("train.lr", 0.5),)).key != keys[0]


@pytest.mark.parametrize(
    "grid, message",
    [
        ("{}", "sweep.training is empty"),
        ("{attacks.loss.draws: [1, 2]}", "is not a training hyperparameter"),
        ("{train.nope: [1]}", "unknown config path 'train.nope'"),
        ("{train.lr: []}", "must be a non-empty list"),
        ("{train.lr: [-1.0]}", "is invalid: train.lr"),
        ("{data.num_shards: [1]}", "is invalid: data.num_shards"),
    ],
)
def test_bad_grids_fail_with_one_line(grid: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        training_points(cfg_with(f"sweep.training={grid}"))
    assert "\n" not in str(e.value)


def test_checks_before_a_sweep_starts() -> None:
    with pytest.raises(ConfigError, match="sweep.target 'teacher_3' is not a target"):
        check_training_sweep(cfg_with("sweep.target=teacher_3"))
    # teacher_3 exists only when every point has three shards
    assert check_training_sweep(
        cfg_with("sweep.target=teacher_3", "sweep.training={data.num_shards: [3, 4]}")
    )
    with pytest.raises(ConfigError, match="'gsa9' is not an attack; choose from: "):
        check_training_sweep(cfg_with("sweep.trial_attacks=[loss, gsa9]"))
    assert check_training_sweep(cfg_with("sweep.trial_attacks=[loss, gsa1, blackbox_nn]"))
    with pytest.raises(ConfigError, match="sweep.reference 'student' must be another target"):
        check_training_sweep(cfg_with("sweep.reference=student"))
    with pytest.raises(ConfigError, match="needs train.val_rows > 0"):
        check_training_sweep(cfg_with("train.val_rows=0"))
    assert check_training_sweep(cfg_with("train.val_rows=0", "sweep.asha.enabled=false"))


def test_trial_config_audits_one_target_in_its_own_directory() -> None:
    cfg = cfg_with("sweep.training={train.lr: [0.003]}", "sweep.target=dualmd")
    point = training_points(cfg)[0]
    t = trial_config(cfg, point, "s3://bucket/x/smoke/training_sweeps/smoke/trials")
    assert t.train.lr == 0.003 and cfg.train.lr == 0.001
    assert (t.storage.root, t.experiment) == (
        "s3://bucket/x/smoke/training_sweeps/smoke/trials",
        point.key,
    )
    # the reference target (the baseline, for its utility) is audited in the same trial
    assert t.attacks.targets == ["dualmd", "baseline"]
    assert t.attacks.enabled == ["loss", "secmi_stat", "pia"]
    assert trial_config(cfg_with("sweep.reference=null"), point, "/r").attacks.targets == [
        "student"
    ]
    assert t.tracking.enabled is False
    # Without sweep.trial_attacks: every attack of attacks.enabled (the full worst case) but
    # the router-aware one, which comes along when DualMD is audited.
    every = ["loss", "secmi_stat", "secmi_nn", "pia", "pian", "sima", "gsa1", "gsa2", "blackbox_nn"]
    calibrated = ["lira", "rmia", "quantile", "combined"]
    t2 = trial_config(cfg_with("sweep.trial_attacks=null"), point, "/r")
    assert t2.attacks.enabled == [*every, *calibrated]
    t3 = trial_config(cfg_with("sweep.trial_attacks=null", "sweep.target=dualmd"), point, "/r")
    assert t3.attacks.enabled == [*every, "dualmd_adaptive", *calibrated]
    with pytest.raises(ConfigError, match="'dualmd_adaptive' attacks DualMD's step router"):
        trial_config(cfg_with("sweep.trial_attacks=[sima, dualmd_adaptive]"), point, "/r")


def test_fingerprint_ignores_where_and_how_but_not_what() -> None:
    a = cfg_with()
    assert training_sweep_fingerprint(a) == training_sweep_fingerprint(
        cfg_with(
            "storage.root=/elsewhere",
            "resources.concurrent_fits=1",
            "sweep.attacks={loss: {draws: [1]}}",
        )
    )
    assert training_sweep_fingerprint(a) != training_sweep_fingerprint(
        cfg_with("sweep.training={train.lr: [1.0]}")
    )
    assert training_sweep_fingerprint(a) != training_sweep_fingerprint(cfg_with("train.steps=7"))


def test_apply_values_sets_nested_paths() -> None:
    cfg = apply_values(cfg_with(), {"model.block_out_channels": [8, 16], "seed": 3})
    assert cfg.model.block_out_channels == [8, 16] and cfg.seed == 3


def test_pareto_front_minimises_both() -> None:
    pts = [(0.60, 10.0), (0.55, 12.0), (0.70, 9.0), (0.65, 11.0), (0.55, 12.0), (0.80, 9.0)]
    # (0.65, 11) is dominated by (0.60, 10); (0.80, 9) by (0.70, 9); equal points both stay.
    assert pareto_front(pts) == [0, 1, 2, 4]
    assert pareto_front([]) == [] and pareto_front([(0.5, 1.0)]) == [0]


def _scores(
    target: str, attack: str, params: str, member_score: float, n: int = 40
) -> dict[str, list]:
    rng = np.random.default_rng(0)
    member = np.arange(n) % 2 == 0
    part = np.where(np.arange(n) < n // 2, CALIBRATION, TEST)
    score = rng.normal(size=n) + member_score * member
    return {
        "target": [target] * n,
        "attack": [attack] * n,
        "params": [params] * n,
        "row_id": list(range(n)),
        "is_member": member.tolist(),
        "part": part.tolist(),
        "score": score.tolist(),
    }


def test_trial_objectives_take_the_worst_case_by_calibration_auc() -> None:
    cols: dict[str, list] = {}
    for part in (
        _scores("student", "loss", '{"t": 1}', 0.2),
        _scores("student", "pia", '{"t": 2}', 3.0),  # the strong one
        _scores("baseline", "pia", '{"t": 2}', 9.0),
    ):  # another target: ignored
        for k, v in part.items():
            cols.setdefault(k, []).extend(v)
    quality = [
        {"target": "student", "metric": "domain_fid", "value": 4.5},
        {"target": "baseline", "metric": "domain_fid", "value": 1.0},
    ]
    obj = trial_objectives(pa.table(cols), quality, "student", "domain_fid")
    assert obj["privacy_attack"] == "pia" and obj["privacy_setting"] == '{"t": 2}'
    assert obj["privacy_auc"] > 0.9 and obj["utility"] == 4.5
    ref = trial_objectives(pa.table(cols), quality, "student", "domain_fid", "baseline")
    assert ref["utility_reference"] == 1.0 and ref["reference_privacy_auc"] > 0.9
    with pytest.raises(ValueError, match="no heldout_eps_mse quality row"):
        trial_objectives(pa.table(cols), quality, "student", "heldout_eps_mse")


def _plan():
    cfg = load_config("smoke", None, [])
    pool = DATASETS.get("digits")(cfg.data)
    return make_plan(pool, cfg.data, 0, 0, None)


def test_validation_rows_stay_outside_the_audit() -> None:
    """With a shadow draw, every model validates on shadow-split rows it does not train on,
    shadow-trained rows before the attacker's population; without one, the calibration
    non-members (the old rule) are the fallback, and the rule says so."""
    cfg = load_config("smoke", None, [])
    pool = DATASETS.get("digits")(cfg.data)
    plan = make_plan(pool, cfg.data, 0, 1, 40, ("baseline", "teacher"))
    audited = plan.split != SHADOW
    pop = plan.population()
    assert pop.sum() > 0 and not (pop & plan.membership.any(0)).any() and not pop[audited].any()
    for model in ("baseline", "teacher_1", "student", "shadow_1", "shadow_1_teacher_2"):
        mask, rule = plan.validation_rows(10, model)
        assert rule == "outside_audit" and mask.sum() == 10
        assert not (mask & audited).any() and not (mask & plan.members_of(model)).any()
    target_rows, _ = plan.validation_rows(10, "baseline")
    assert not (target_rows & pop).any()  # the population is left to the attacker
    # The shadow baseline trains on every shadow-trained row: it validates on the population.
    assert plan.validation_rows(10, "shadow_1")[0][pop].sum() == 10

    plain = _plan()
    mask, rule = plain.validation_rows(10, "baseline")
    assert rule == "calibration_nonmembers" and mask.sum() == 10
    assert (plain.split[mask] == NONMEMBER).all() and (plain.part[mask] == CALIBRATION).all()
    assert not (plain.part[mask] == TEST).any()


def test_training_reports_carry_a_deterministic_val_eps_mse() -> None:
    """fit() adds the validator's metric to every report, and the value is a function of the
    weights alone (a final re-measure on the stored model matches the last report)."""
    cfg = load_config("smoke", None, ["train.steps=4", "train.log_every=2", "train.batch_size=8"])
    plan = _plan()
    schedule = NoiseSchedule(cfg.model.num_train_timesteps)
    validate = heldout_validator(plan, schedule, 8, 0, "baseline")
    images = torch.from_numpy(plan.images[plan.split == MEMBER][:16].astype(np.float32))

    class Reporter:
        world_rank, world_size = 0, 1
        reports: list = []

        def report(self, metrics, checkpoint_dir):
            self.reports.append(dict(metrics))

        def latest_checkpoint(self):
            return None

    from raydefense.data.pool import to_model_range
    from raydefense.diffusion.backbones import build_net

    rep = Reporter()
    fit(
        ImageData(torch.from_numpy(to_model_range(images.numpy()))),
        cfg.model,
        cfg.train,
        schedule,
        tuple(plan.images.shape[1:]),
        seed=0,
        model_index=0,
        reporter=rep,
        validate=validate,
    )
    vals = [r["val_eps_mse"] for r in rep.reports]
    assert len(vals) == 2 and all(v > 0 for v in vals)
    net = build_net(cfg.model, tuple(plan.images.shape[1:]))
    a, b = validate(net)["val_eps_mse"], validate(net)["val_eps_mse"]
    assert a == b and json.dumps(a)


def test_cli_refuses_a_bad_grid_before_writing_anything(tmp_path, capsys) -> None:
    from raydefense.cli import main

    rc = main(
        [
            "sweep",
            "--preset",
            "smoke",
            "--set",
            "sweep.kind=training",
            "--set",
            "sweep.training={attacks.loss.draws: [1, 2]}",
            "--set",
            f"storage.root={tmp_path / 'runs'}",
            "--set",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "'attacks.loss.draws' is not a training hyperparameter" in err[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_reference_is_the_experiments_own_complete_evaluate(tmp_path) -> None:
    from raydefense import layout
    from raydefense.run.context import RunContext
    from raydefense.run.fingerprints import stage_fingerprints
    from raydefense.run.markers import mark_complete
    from raydefense.storage import Storage
    from raydefense.sweeps.training_sweep import reference_utility

    cfg = cfg_with(f"storage.root={tmp_path}")
    storage = Storage(cfg.storage.root, cfg.experiment)
    ctx = RunContext(cfg=cfg, storage=storage)  # `raydefense sweep` computes no fingerprints
    assert reference_utility(ctx) is None
    storage.write_json(
        layout.QUALITY, [{"target": "baseline", "metric": "domain_fid", "value": 2.5}]
    )
    mark_complete(storage, layout.marker("evaluate"), "stale", {})
    assert reference_utility(ctx) is None  # another config's evaluate is no reference
    mark_complete(storage, layout.marker("evaluate"), stage_fingerprints(cfg)["evaluate"], {})
    assert reference_utility(ctx) == {
        "target": "baseline",
        "utility": 2.5,
        "source": layout.QUALITY,
    }
