"""The evaluation core without Ray: every attack against every target on tiny random models,
through SerialScorer (the same ScoringWorker the Ray actors run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from raydefense.attacks.base import AccessError
from raydefense.audit.evaluate import run_evaluation
from raydefense.audit.learned import learned_fit_args
from raydefense.audit.results import metric_rows
from raydefense.audit.scoring import SerialScorer
from raydefense.audit.targets import (
    audited_rows,
    online_needed,
    online_roles,
    online_students,
    plan_attacks,
    shadow_roles,
    shadow_students,
    shadows_for,
    shadows_needed,
)
from raydefense.data.plan import MEMBER, NONMEMBER, SHADOW, make_plan
from raydefense.data.pool import DATASETS
from raydefense.data.tables import read_plan, write_plan
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.checkpoint import save_checkpoint
from raydefense.errors import ConfigError
from raydefense.report.markdown import headline_rows
from raydefense.roster import DUALMD, STUDENT
from raydefense.storage import Storage

from conftest import tiny_config

ALL = "[loss, secmi_stat, secmi_nn, pia, pian, sima, gsa1, gsa2, blackbox_nn, dualmd_adaptive]"


def _cfg(tmp_path: Path, **extra: str):
    sets = {
        "attacks.enabled": ALL,
        "attacks.pia.timesteps": "[10, 100]",
        "attacks.pia.canonical_t": "50",
        "attacks.pian.timesteps": "[10]",
        "attacks.pian.canonical_t": "10",
        "attacks.sima.timesteps": "[0, 50, 250]",
        "attacks.secmi_nn.t_sec": "20",
        "attacks.secmi_nn.epochs": "1",
        "attacks.secmi_nn.batch_size": "8",
        "attacks.gsa1.num_timesteps": "2",
        "attacks.gsa2.num_timesteps": "2",
        "attacks.gsa1.n_estimators": "5",
        "attacks.gsa2.n_estimators": "5",
        "attacks.shadow.num_models": "1",
        "attacks.shadow.members": "8",
        "attacks.blackbox_nn.num_generated": "8",
        "quality.num_generated": "16",
        "quality.domain_classifier_epochs": "1",
        "quality.memorization_k": "4",
        "model.block_out_channels": "[8, 16]",
        "model.norm_num_groups": "4",
        "attacks.batch_size": "16",
    }
    sets.update(extra)
    return tiny_config(tmp_path, **sets)


def _prepare(cfg) -> Storage:
    storage = Storage(cfg.storage.root, cfg.experiment)
    plan = make_plan(
        DATASETS.get("digits")(cfg.data),
        cfg.data,
        cfg.seed,
        shadows_needed(cfg),
        cfg.attacks.shadow.members,
        shadow_roles(cfg),
        num_online=online_needed(cfg),
        online_roles=online_roles(cfg),
    )
    write_plan(storage, plan)
    students = [STUDENT] + shadow_students(cfg, plan) + online_students(cfg, plan)
    for i, m in enumerate(plan.models + students):
        torch.manual_seed(i)
        net = build_net(cfg.model, (1, 8, 8))
        local = Path(cfg.storage.root) / cfg.experiment / "models" / m
        save_checkpoint(str(local), net, net, {"step": 0})
    return storage


def test_every_attack_every_target(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    storage = _prepare(cfg)
    plan = read_plan(storage)
    # regime-matched shadows (the default): one baseline-like shadow and two shadow teachers
    # trained on the two halves of the draw's 8 training rows; the shadow student is distilled
    assert plan.shadows == ["shadow_1", "shadow_1_teacher_1", "shadow_1_teacher_2"]
    assert shadow_students(cfg, plan) == ["shadow_1_student"]
    assert (plan.split == SHADOW).sum() == 16
    out = run_evaluation(
        cfg, storage, plan, SerialScorer(storage, str(tmp_path / "c")), str(tmp_path / "c")
    )
    df = out.scores.to_pandas()
    targets = ["baseline", "teacher_1", "teacher_2", DUALMD, STUDENT]
    assert sorted(df.target.unique()) == sorted(targets)
    # GSA needs gradients: refused on DualMD (gray-box), reported, never invented; the
    # router-aware attack needs DualMD's router: skipped on every single model.
    assert {(s["target"], s["attack"]) for s in out.skipped} == {
        (DUALMD, "gsa1"),
        (DUALMD, "gsa2"),
        *[(t, "dualmd_adaptive") for t in ("baseline", "teacher_1", "teacher_2", STUDENT)],
    }
    reasons = {(s["target"], s["attack"]): s["reason"] for s in out.skipped}
    assert "needs white-box access" in reasons[(DUALMD, "gsa1")]
    assert "no router" in reasons[(STUDENT, "dualmd_adaptive")]
    for t in targets:
        mask = audited_rows(plan, t)
        g = df[df.target == t]
        expected = {"loss", "secmi_stat", "secmi_nn", "pia", "pian", "sima", "blackbox_nn"}
        if t != DUALMD:
            expected |= {"gsa1", "gsa2"}
        else:
            expected |= {"dualmd_adaptive"}
        assert set(g.attack) == expected
        for (a, p), gg in g.groupby(["attack", "params"]):
            assert len(gg) == mask.sum() and np.isfinite(gg.score).all(), (t, a, p)
            assert set(gg.row_id) == set(plan.row_id[mask].tolist())
    assert df[df.attack == "pia"].params.nunique() == 3  # two timesteps + the canonical one
    assert df[(df.target == "baseline") & (df.attack == "blackbox_nn")].params.nunique() == 2
    q = {(r["target"], r["metric"]): r["value"] for r in out.quality}
    for t in targets:
        assert (t, "domain_fid") in q and q[(t, "domain_fid")] >= 0
        assert 0 <= q[(t, "memorized_fraction")] <= 1
    assert (DUALMD, "heldout_eps_mse") in q  # through the step router
    assert set(out.samples) == set(targets) and out.samples[DUALMD].shape == (4, 1, 8, 8)

    adaptive = df[df.attack == "dualmd_adaptive"]
    # sampling.num_steps=4 routes t=250 to teacher 1 and t=0, 50 to teacher 2: SimA reaches both.
    assert {json.loads(p)["base"] for p in adaptive.params} == {"sima"}
    assert {json.loads(p)["combine"] for p in adaptive.params} == {"max", "learned", "contrast"}
    assert all(json.loads(p)["timesteps"][0] == 250 for p in adaptive.params)
    rows, curves = metric_rows(out.scores, bootstrap=10, seed=0)
    assert all(0 <= r["auc"] <= 1 and 0 <= r["auc_calibration"] <= 1 for r in rows)
    assert all(
        r.get("note") for r in rows if r["target"] == DUALMD and r["attack"] != "blackbox_nn"
    )
    lines = {(h["target"], h["line"]) for h in headline_rows(rows)}
    assert ("baseline", "pia (canonical)") in lines
    assert ("baseline", "pia (best on calibration)") in lines
    assert ("baseline", "gsa1") in lines
    # each target's GSA learned from shadows of its own regime, and results say which
    assert {t: (v["regime"], sorted(v["models"])) for t, v in out.shadows.items()} == {
        "baseline": ("baseline", ["shadow_1"]),
        "teacher_1": ("teacher", ["shadow_1_teacher_1", "shadow_1_teacher_2"]),
        "teacher_2": ("teacher", ["shadow_1_teacher_1", "shadow_1_teacher_2"]),
        STUDENT: ("student", ["shadow_1_student"]),
    }
    assert out.shadows["teacher_1"]["models"]["shadow_1_teacher_2"] == {"members": 4, "heldout": 8}
    assert out.shadows[STUDENT]["models"]["shadow_1_student"] == {"members": 8, "heldout": 8}


def test_shadow_trained_attacks_learn_from_their_targets_regime(tmp_path: Path) -> None:
    """The classifier's training set: per target, the members vs held-out rows of the shadows of
    its regime; regime 'baseline' gives every target the baseline-like shadow (and plans only
    it)."""
    cfg = _cfg(tmp_path, **{"attacks.enabled": "[gsa1]"})
    plan = make_plan(DATASETS.get("digits")(cfg.data), cfg.data, cfg.seed, 1, 8, shadow_roles(cfg))
    gsa = next(a for a in plan_attacks(cfg, plan).attacks["baseline"])
    sizes = {
        m: int(plan.members_of(m).sum()) + 8
        for m in ("shadow_1", "shadow_1_teacher_1", "shadow_1_teacher_2", "shadow_1_student")
    }
    for target, models in (
        ("baseline", ["shadow_1"]),
        ("teacher_2", ["shadow_1_teacher_1", "shadow_1_teacher_2"]),
        (STUDENT, ["shadow_1_student"]),
    ):
        assert shadows_for(cfg, plan, target) == models
        scored = {m: {"f:gsa1": np.zeros((sizes[m], 3))} for m in models}
        scored[target] = {"f:gsa1": np.zeros((int(audited_rows(plan, target).sum()), 3))}
        _, _, x, y, _, _, _ = learned_fit_args(cfg, plan, target, "gsa1", gsa, scored)
        assert len(x) == len(y) == sum(sizes[m] for m in models)
        assert y.sum() == sum(int(plan.members_of(m).sum()) for m in models)
    # the shadow student learns from its draw's training rows, which its teachers split
    assert np.array_equal(
        plan.members_of("shadow_1_student"),
        plan.rows_of("shadow_1_teacher_1") | plan.rows_of("shadow_1_teacher_2"),
    )

    legacy = _cfg(tmp_path, **{"attacks.enabled": "[gsa1]", "attacks.shadow.regime": "baseline"})
    assert shadow_roles(legacy) == ("baseline",)
    old = make_plan(
        DATASETS.get("digits")(legacy.data), legacy.data, legacy.seed, 1, 8, shadow_roles(legacy)
    )
    assert old.shadows == ["shadow_1"] and shadow_students(legacy, old) == []
    assert all(shadows_for(legacy, old, t) == ["shadow_1"] for t in ("teacher_1", STUDENT))
    # same rows either way: the regime changes which models train, never the split
    assert np.array_equal(old.row_id, plan.row_id)
    assert np.array_equal(old.rows_of("shadow_1"), plan.rows_of("shadow_1"))
    # a plan prepared for the baseline regime cannot silently serve the matched one
    with pytest.raises(ConfigError, match="no teacher-like shadow models for target 'teacher_1'"):
        shadows_for(cfg, old, "teacher_1")
    # explicit targets plan only the roles they need
    student_only = _cfg(tmp_path, **{"attacks.enabled": "[gsa1]", "attacks.targets": "[student]"})
    assert shadow_roles(student_only) == ("student",)
    assert make_plan(
        DATASETS.get("digits")(cfg.data), cfg.data, cfg.seed, 1, 8, shadow_roles(student_only)
    ).shadows == ["shadow_1_teacher_1", "shadow_1_teacher_2"]


def test_black_box_dualmd_and_explicit_refusal(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, **{"attacks.dualmd_access": "black-box"})
    storage = _prepare(cfg)
    plan = read_plan(storage)
    ap = plan_attacks(cfg, plan)
    assert [a.name for a in ap.attacks[DUALMD]] == ["blackbox_nn"]
    assert len([s for s in ap.skipped if s["target"] == DUALMD]) == 9  # dualmd_adaptive too
    explicit = _cfg(
        tmp_path, **{"attacks.dualmd_access": "black-box", "attacks.targets": "[dualmd]"}
    )
    with pytest.raises(AccessError, match="'loss' needs gray-box access"):
        plan_attacks(explicit, plan)


def test_shadow_rows_are_disjoint_from_targets(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    plan = make_plan(
        DATASETS.get("digits")(cfg.data),
        cfg.data,
        cfg.seed,
        2,
        8,
        ("baseline", "teacher", "student"),
    )
    target = set(plan.row_id[(plan.split == MEMBER) | (plan.split == NONMEMBER)].tolist())
    for j in range(2):
        rows = set(plan.row_id[plan.shadow_train[j] | plan.shadow_heldout[j]].tolist())
        assert len(rows) == 16 and not rows & target
    for m in plan.shadows:
        assert not set(plan.row_id[plan.rows_of(m) | plan.shadow_nonmembers(m)].tolist()) & target
    no_shadow = make_plan(DATASETS.get("digits")(cfg.data), cfg.data, cfg.seed)
    assert np.array_equal(no_shadow.row_id, plan.row_id[plan.split != SHADOW])


def test_three_shards_are_audited_end_to_end(tmp_path: Path) -> None:
    """K = 3: three teachers on disjoint shards, DualMD cycling through them, every one audited
    on its own shard; K is a config value, not a constant."""
    cfg = _cfg(
        tmp_path,
        **{"data.num_shards": "3", "data.num_members": "24", "attacks.enabled": "[loss, pia]"},
    )
    storage = _prepare(cfg)
    plan = read_plan(storage)
    assert plan.teachers == ["teacher_1", "teacher_2", "teacher_3"]
    owned = np.stack([plan.rows_of(t) for t in plan.teachers])
    assert (owned.sum(axis=0) <= 1).all() and owned.sum() == (plan.split == MEMBER).sum()
    out = run_evaluation(
        cfg, storage, plan, SerialScorer(storage, str(tmp_path / "c")), str(tmp_path / "c")
    )
    df = out.scores.to_pandas()
    assert sorted(df.target.unique()) == sorted(
        ["baseline", "teacher_1", "teacher_2", "teacher_3", DUALMD, STUDENT]
    )
    for t in plan.teachers:
        members = set(df[(df.target == t) & df.is_member].row_id)
        assert members == set(
            plan.row_id[plan.rows_of(t) & (plan.split == MEMBER) & audited_rows(plan, t)].tolist()
        )


def test_domain_features_train_on_spare_rows_only(tmp_path: Path) -> None:
    from raydefense.audit.utility import spare_rows, train_domain_features
    from raydefense.data.plan import content_hash

    cfg = _cfg(tmp_path, **{"quality.domain_rows": "300"})
    storage = _prepare(cfg)
    plan = read_plan(storage)
    pool = DATASETS.get("digits")(cfg.data)
    rows = spare_rows(cfg, plan, pool)
    assert len(rows) == 300 and len(set(rows.tolist())) == 300
    assert not set(rows.tolist()) & set(plan.row_id.tolist())  # no target, shadow or audit row
    assert not {content_hash(pool.images[i]) for i in rows} & set(plan.hash)  # nor a copy of one
    assert np.array_equal(rows, spare_rows(cfg, plan, pool))  # seeded
    domain = train_domain_features(cfg, plan)
    assert domain.train_rows == 300
    assert domain.reference.shape[0] == int((plan.split == NONMEMBER).sum())


def test_domain_features_fall_back_on_shadow_rows_never_on_audited_ones(tmp_path: Path) -> None:
    """A split that uses (nearly) the whole pool leaves few spare rows: the shadow draws' rows
    (the attacker's data) fill up, never a target's member or non-member, nor a copy of one."""
    from raydefense.audit.utility import spare_rows
    from raydefense.data.plan import content_hash

    cfg = _cfg(tmp_path, **{"quality.domain_rows": "5000"})  # more than the pool: take all
    storage = _prepare(cfg)
    plan = read_plan(storage)
    pool = DATASETS.get("digits")(cfg.data)
    spare = set(
        spare_rows(
            cfg.model_copy(
                update={"quality": cfg.quality.model_copy(update={"domain_rows_from": "spare"})}
            ),
            plan,
            pool,
        ).tolist()
    )
    both = set(spare_rows(cfg, plan, pool).tolist())
    shadow = set(plan.row_id[plan.split == SHADOW].tolist())
    audited = plan.split != SHADOW
    assert spare and not spare & set(plan.row_id.tolist())
    assert both == spare | shadow  # every shadow row joins (none duplicates a target row here)
    assert not both & set(plan.row_id[audited].tolist())
    target_hashes = {h for h, a in zip(plan.hash, audited) if a}
    assert not {content_hash(pool.images[i]) for i in both} & target_hashes
