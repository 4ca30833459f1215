"""Attack-sweep core without Ray: grid expansion and its one-line errors, scoring every grid
point in one pass (equal to evaluating each setting on its own), trial metrics against
raydefense.attacks.metrics, and worst-case selection by calibration AUC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from raydefense.attacks.metrics import accuracy_at, auc, best_threshold
from raydefense.audit.grid import grid_points
from raydefense.audit.scoring import ScoreJob, SerialScorer, query_col, shadow_jobs
from raydefense.audit.targets import audited_rows, shadow_roles, shadow_students
from raydefense.config import load_config
from raydefense.data.plan import CALIBRATION, TEST, make_plan
from raydefense.data.pool import DATASETS
from raydefense.data.tables import read_plan, write_plan
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.checkpoint import save_checkpoint
from raydefense.errors import ConfigError
from raydefense.roster import STUDENT
from raydefense.storage import Storage
from raydefense.sweeps.attacks import score_sweep, trial_metrics, trials_of, worst_case

from conftest import tiny_config

SPACE = "{secmi_stat: {t_sec: [20, 40], k: [10]}, loss: {timesteps: [[10], [300]]}}"


def _cfg(tmp_path: Path, **extra: str):
    sets = {
        "attacks.enabled": "[loss, secmi_stat]",
        "model.block_out_channels": "[8, 16]",
        "model.norm_num_groups": "4",
        "attacks.batch_size": "16",
        "quality.num_generated": "8",
        "quality.domain_classifier_epochs": "1",
        "quality.memorization_k": "4",
        "sweep.attacks": SPACE,
    }
    sets.update(extra)
    return tiny_config(tmp_path, **sets)


def _prepare(cfg, num_shadows: int = 0) -> Storage:
    """The plan and a randomly initialised checkpoint per model (shadows included)."""
    storage = Storage(cfg.storage.root, cfg.experiment)
    plan = make_plan(
        DATASETS.get("digits")(cfg.data),
        cfg.data,
        cfg.seed,
        num_shadows,
        None,
        shadow_roles(cfg) if num_shadows else (),
    )
    write_plan(storage, plan)
    for i, m in enumerate(plan.models + [STUDENT] + shadow_students(cfg, plan)):
        torch.manual_seed(i)
        net = build_net(cfg.model, (1, 8, 8))
        save_checkpoint(
            str(Path(cfg.storage.root) / cfg.experiment / "models" / m), net, net, {"step": 0}
        )
    return storage


def test_grid_expansion_is_the_product_of_each_attacks_fields(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        **{
            "sweep.attacks": "{secmi_stat: {t_sec: [20, 40], k: [10]}, "
            "loss: {timesteps: [[10], [300]], "
            "draws: [1, 2]}}"
        },
    )
    pts = grid_points(cfg)
    assert [p.key for p in pts] == [
        "secmi_stat@0",
        "secmi_stat@1",
        "loss@0",
        "loss@1",
        "loss@2",
        "loss@3",
    ]
    assert [dict(p.values) for p in pts[:2]] == [{"t_sec": 20, "k": 10}, {"t_sec": 40, "k": 10}]
    assert pts[3].section(cfg).timesteps == [10] and pts[3].section(cfg).draws == 2
    # fields not swept keep their attacks.<name> value
    assert pts[2].section(cfg).reduction == cfg.attacks.loss.reduction
    # nested --set keys below sweep.attacks add to (or replace parts of) the preset's mapping
    one = tiny_config(
        tmp_path, **{"sweep.attacks.sima.p": "[2, 4]", "sweep.attacks.loss.timesteps": "[[7]]"}
    )
    assert one.sweep.attacks["sima"] == {"p": [2, 4]}
    assert one.sweep.attacks["loss"] == {"timesteps": [[7]]}
    assert one.sweep.attacks["secmi_stat"] == load_config("smoke").sweep.attacks["secmi_stat"]


@pytest.mark.parametrize(
    "space, needle",
    [
        (
            "{secmi: {t_sec: [20]}}",
            "unknown attack 'secmi' in sweep.attacks; choose from: gsa1, "
            "gsa2, loss, pia, pian, secmi_nn, secmi_stat, sima",
        ),
        (
            "{blackbox_nn: {num_generated: [5]}}",
            "attack 'blackbox_nn' in sweep.attacks cannot be swept (a generated attack",
        ),
        (
            "{secmi_stat: {t_secc: [20]}}",
            "unknown field 't_secc' in sweep.attacks.secmi_stat; valid "
            "fields of attacks.secmi_stat: k, t_sec",
        ),
        ("{secmi_stat: {t_sec: [25], k: [10]}}", "multiple of k"),
        ("{secmi_stat: {t_sec: []}}", "non-empty list"),
        ("{}", "sweep.attacks is empty"),
    ],
)
def test_bad_search_spaces_give_one_line_config_errors(tmp_path, space, needle) -> None:
    cfg = tiny_config(tmp_path, **{"sweep.attacks": space})
    with pytest.raises(ConfigError) as e:
        grid_points(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_shadow_trained_attack_is_swept_only_when_shadows_are_planned(tmp_path) -> None:
    cfg = tiny_config(
        tmp_path, **{"attacks.enabled": "[loss]", "sweep.attacks": "{gsa1: {num_timesteps: [2]}}"}
    )
    with pytest.raises(
        ConfigError, match="sweeping 'gsa1' needs shadow models.*add gsa1 to attacks.enabled"
    ):
        grid_points(cfg)


def test_learned_sweep_points_fit_once_per_target_like_evaluate(tmp_path: Path) -> None:
    """GSA grid points: features in the one scoring pass (shadow model included), a classifier
    per (point, target); DualMD (gray-box) keeps its query attacks only; the point equal to a
    configured GSA scores exactly what evaluate's fit gives."""
    from raydefense.audit.learned import fit_learned, learned_fit_args, learned_scores
    from raydefense.audit.targets import build_attacks

    cfg = _cfg(
        tmp_path,
        **{
            "attacks.enabled": "[loss, gsa1]",
            "attacks.gsa1.n_estimators": "5",
            "attacks.gsa1.classifier": "sklearn",
            "attacks.gsa1.batch_size": "8",
            "sweep.attacks": "{gsa1: {num_timesteps: [2, 3]}, loss: {timesteps: [[10]]}}",
        },
    )
    storage = _prepare(cfg, num_shadows=1)
    plan = read_plan(storage)
    ex = SerialScorer(storage, str(tmp_path / "cache"))
    df = score_sweep(cfg, plan, ex).to_pandas()
    assert set(df[df.attack == "loss"].target) == {
        "baseline",
        "teacher_1",
        "teacher_2",
        "dualmd",
        "student",
    }
    assert set(df[df.attack == "gsa1"].target) == {"baseline", "teacher_1", "teacher_2", "student"}
    labels = [{"classifier": "sklearn", "num_timesteps": n, "scaling": "separate"} for n in (2, 3)]
    assert sorted(set(df[df.attack == "gsa1"].params)) == [
        json.dumps(p, sort_keys=True) for p in labels
    ]
    # evaluate's path for gsa1 configured with num_timesteps=3, on the student
    single = _cfg(
        tmp_path,
        **{
            "attacks.enabled": "[gsa1]",
            "attacks.gsa1.n_estimators": "5",
            "attacks.gsa1.classifier": "sklearn",
            "attacks.gsa1.batch_size": "8",
            "attacks.gsa1.num_timesteps": "3",
        },
    )
    jobs = [
        ScoreJob(STUDENT, audited_rows(plan, STUDENT), ["gsa1"], False),
        *shadow_jobs(single, plan, {STUDENT: ["gsa1"]}),
    ]
    assert [j.model for j in jobs] == [STUDENT, "shadow_1_student"]  # regime-matched
    cols, _ = SerialScorer(storage, str(tmp_path / "c2")).score(single, plan, jobs, {})
    scored = {j.model: c for j, c in zip(jobs, cols)}
    (gsa,) = build_attacks(single)
    out = fit_learned(*learned_fit_args(single, plan, STUDENT, "gsa1", gsa, scored))
    ref = learned_scores(out, plan.part[audited_rows(plan, STUDENT)])
    got = df[
        (df.target == STUDENT)
        & (df.attack == "gsa1")
        & (df.params == json.dumps(labels[1], sort_keys=True))
    ]
    np.testing.assert_allclose(got.score.to_numpy(), ref, rtol=1e-6)


def test_one_scoring_pass_equals_evaluating_each_setting(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, **{"attacks.targets": "[baseline, dualmd]"})
    storage = _prepare(cfg)
    plan = read_plan(storage)
    calls = []

    class Counting(SerialScorer):
        def score(self, *a, **k):
            calls.append(1)
            return super().score(*a, **k)

    table = score_sweep(cfg, plan, Counting(storage, str(tmp_path / "cache")))
    assert len(calls) == 1
    trials = trials_of(table)
    assert [(t["attack"], json.loads(t["params"])) for t in trials] == [
        ("secmi_stat", {"t_sec": 20, "k": 10}),
        ("secmi_stat", {"t_sec": 40, "k": 10}),
        ("loss", {"timesteps": [10], "draws": 2, "reduction": "sum"}),
        ("loss", {"timesteps": [300], "draws": 2, "reduction": "sum"}),
    ]
    df = table.to_pandas()
    assert set(df.target) == {"baseline", "dualmd"}
    for (target, _, _), g in df.groupby(["target", "attack", "params"]):
        assert len(g) == audited_rows(plan, target).sum() == 32
    # every sweep setting scores exactly what `evaluate`'s worker computes with that setting
    # configured (checked on one target)
    mask = audited_rows(plan, "baseline")
    for t_sec, ts in ((40, "[10]"), (20, "[300]")):
        single = _cfg(
            tmp_path, **{"attacks.secmi_stat.t_sec": str(t_sec), "attacks.loss.timesteps": ts}
        )
        (ref,), _ = SerialScorer(storage, str(tmp_path / "c")).score(
            single, plan, [ScoreJob("baseline", mask, ["secmi_stat", "loss"], False)], {}
        )
        for attack, params in (
            ("secmi_stat", {"t_sec": t_sec, "k": 10}),
            ("loss", {"timesteps": json.loads(ts), "draws": 2, "reduction": "sum"}),
        ):
            s = df[
                (df.target == "baseline")
                & (df.attack == attack)
                & (df.params == json.dumps(params, sort_keys=True))
            ]
            assert s.row_id.tolist() == ref["row_id"].tolist()
            np.testing.assert_allclose(s.score, ref[query_col(attack, 0)], rtol=1e-6)


def _synthetic() -> pa.Table:
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {
        k: [] for k in ("target", "attack", "params", "row_id", "is_member", "part", "score")
    }
    for target, shift in (("baseline", 1.0), ("student", 0.1)):
        for attack, params, gain in (
            ("loss", '{"t": 1}', 1.0),
            ("loss", '{"t": 2}', 0.3),
            ("pia", '{"t": 5}', 2.0),
        ):
            n = 40
            member = np.arange(n) % 2 == 0
            part = np.where(np.arange(n) < 20, CALIBRATION, TEST)
            score = rng.normal(size=n) + shift * gain * member
            cols["target"] += [target] * n
            cols["attack"] += [attack] * n
            cols["params"] += [params] * n
            cols["row_id"] += list(range(n))
            cols["is_member"] += member.tolist()
            cols["part"] += part.tolist()
            cols["score"] += score.tolist()
    return pa.table(cols)


def test_trial_metrics_match_the_metrics_module() -> None:
    table = _synthetic()
    df = table.to_pandas()
    for tr in trials_of(table):
        got = trial_metrics(table, tr["attack"], tr["params"])
        assert set(got) == {"baseline", "student"}
        for target, m in got.items():
            g = df[
                (df.target == target) & (df.attack == tr["attack"]) & (df.params == tr["params"])
            ]
            cal, test = g[g.part != TEST], g[g.part == TEST]
            cal_y, test_y = cal.is_member.astype(int), test.is_member.astype(int)
            sign = 1 if auc(cal.score, cal_y) >= 0.5 else -1  # orientation fixed on calibration
            thr, _ = best_threshold(sign * cal.score, cal_y)
            assert m["orientation"] == sign
            assert m["auc"] == pytest.approx(auc(sign * test.score, test_y))
            assert m["auc_calibration"] == pytest.approx(auc(sign * cal.score, cal_y))
            assert m["auc_calibration"] >= 0.5
            # 10 test non-members: 1% FPR is below the split's resolution, so no number.
            assert m["tpr_at_1pct_fpr"] is None
            assert m["asr_calibrated"] == pytest.approx(accuracy_at(sign * test.score, test_y, thr))
    with pytest.raises(KeyError):
        trial_metrics(table, "loss", '{"t": 9}')


def test_worst_case_is_chosen_by_calibration_auc_never_test() -> None:
    rows = [
        {"target": "a", "attack": "x", "params": {}, "auc_calibration": 0.6, "auc": 0.99},
        {"target": "a", "attack": "y", "params": {}, "auc_calibration": 0.8, "auc": 0.51},
        {"target": "a", "attack": "z", "params": {}, "auc_calibration": 0.8, "auc": 0.70},
        {"target": "b", "attack": "x", "params": {}, "auc_calibration": 0.5, "auc": 0.5},
    ]
    w = worst_case(rows)
    assert w["a"]["attack"] == "y"  # the max calibration AUC; ties: first in sweep order
    assert w["b"]["attack"] == "x"


def test_the_pool_scorer_in_process_equals_the_serial_scorer(tmp_path: Path) -> None:
    """`PoolScorer` on the in-process pool (the path Ray's actor pool runs: blocks of one
    model's rows through `ScoringBlocks`, records merged back to plan order) gives the serial
    scorer's columns value for value, and generates the same images."""
    from raydefense.audit.scoring import PoolScorer
    from raydefense.placement import InProcessPool

    cfg = _cfg(tmp_path, **{"attacks.batch_size": "7"})  # blocks that split the rows unevenly
    storage = _prepare(cfg)
    plan = read_plan(storage)
    jobs = [
        ScoreJob(m, audited_rows(plan, m), ["secmi_stat", "loss"], False)
        for m in ("baseline", "teacher_1")
    ]
    pooled, made = PoolScorer(InProcessPool()).score(cfg, plan, jobs, {"baseline": 2})
    serial, ref = SerialScorer(storage, str(tmp_path / "c")).score(cfg, plan, jobs, {"baseline": 2})
    for a, b in zip(pooled, serial):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(made["baseline"], ref["baseline"])
    assert PoolScorer(InProcessPool()).map(abs, [(-2,), (3,)]) == [2, 3]
