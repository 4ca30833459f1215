"""Reference-calibrated attacks (LiRA, RMIA, quantile regression): their math against values
computed by hand from each paper's definition, their power where per-example difficulty hides
the members from a raw threshold, and their wiring into the evaluation (reference models OUT
for every audited row, population rows never audited)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_evaluation import _cfg, _prepare

from raydefense.attacks.lira_rmia import (
    RMIA,
    LiRA,
    ReferenceData,
    lira_offline,
    lira_online,
    rmia_offline,
    statistic,
)
from raydefense.attacks.metrics import auc
from raydefense.attacks.quantile import QuantileRegression
from raydefense.audit.evaluate import run_evaluation
from raydefense.audit.reference import check_references, references_for
from raydefense.audit.results import metric_rows
from raydefense.audit.scoring import SerialScorer
from raydefense.audit.targets import (
    build_attacks,
    online_references,
    online_students,
    shadows_needed,
)
from raydefense.config import load_config
from raydefense.data.plan import MEMBER, SHADOW
from raydefense.data.tables import read_plan
from raydefense.errors import ConfigError, SplitOverlapError
from raydefense.roster import DUALMD, STUDENT

# ----------------------------------------------------------------- hand-computed definitions


def test_lira_offline_matches_the_papers_one_sided_test() -> None:
    # Two OUT references on three rows: mu_out = (1, 2, 4); per-row sd (ddof 1) = |a - b| / sqrt 2.
    refs = np.array([[0.0, 1.0, 4.0], [2.0, 3.0, 4.0]])
    target = np.array([3.0, 2.0, 5.0])
    z = lira_offline(target, refs, per_example=True)
    sd = math.sqrt(2.0)  # rows 0 and 1; row 2 has sd 0 and takes the mean positive sd
    assert z == pytest.approx([(3 - 1) / sd, (2 - 2) / sd, (5 - 4) / sd])
    # Global sigma: the pooled per-row variance, mean(2, 2, 0) = 4/3.
    zg = lira_offline(target, refs, per_example=False)
    assert zg == pytest.approx((target - refs.mean(0)) / math.sqrt(4 / 3))
    # One reference: the global sigma is the spread of target - reference on the population.
    resid = np.array([0.5, -0.5, 1.5])
    z1 = lira_offline(target, refs[:1], per_example=False, pop_residuals=resid)
    assert z1 == pytest.approx((target - refs[0]) / np.std(resid, ddof=1))
    with pytest.raises(ValueError, match="at least two reference models"):
        lira_offline(target, refs[:1], per_example=True)


def test_lira_online_is_the_gaussian_log_likelihood_ratio() -> None:
    phi = np.array([1.0])
    vals = np.array([[2.0], [0.0], [-1.0], [-3.0]])
    in_mask = np.array([[True], [True], [False], [False]])
    llr = lira_online(phi, vals, in_mask, vals, ~in_mask, per_example=True)
    # IN: mu 1, sd sqrt(2); OUT: mu -2, sd sqrt(2): log N(1; 1, 2) - log N(1; -2, 2) = 9 / 4.
    assert llr == pytest.approx([9 / 4])


def test_rmia_offline_matches_a_hand_computed_pairwise_test() -> None:
    a, gamma = 0.5, 1.5
    p_x, p_ref_x = np.array([0.8, 0.3]), np.array([[0.4, 0.6]])
    p_z, p_ref_z = np.array([0.5, 0.2, 0.9]), np.array([[0.5, 0.4, 0.3]])

    def prior(r: float) -> float:  # ((1 + a) Pr_OUT + (1 - a)) / 2
        return 0.5 * ((1 + a) * r + (1 - a))

    ratio_x = [0.8 / prior(0.4), 0.3 / prior(0.6)]  # 1.4545..., 0.4
    ratio_z = [0.5 / prior(0.5), 0.2 / prior(0.4), 0.9 / prior(0.3)]  # 0.8, 0.3636..., 1.8947...
    want = [np.mean([rx / rz >= gamma for rz in ratio_z]) for rx in ratio_x]
    assert want == pytest.approx([2 / 3, 0.0])
    got = rmia_offline(p_x, p_ref_x, p_z, p_ref_z, gamma, a)
    assert got == pytest.approx(want)


# ------------------------------------------------------------ difficulty hides the members


def _difficulty_world(n: int = 400, seed: int = 0):
    """Errors whose per-row difficulty (sd 1 in log space) swamps membership (-0.3): the
    target's and references' statistics share each row's difficulty, the images encode it."""
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    difficulty = rng.normal(0.0, 1.0, n)
    log_err = difficulty - 0.3 * member + rng.normal(0.0, 0.05, n)
    refs = np.stack([difficulty + rng.normal(0.0, 0.05, n) for _ in range(2)])
    z = 300
    pop_difficulty = rng.normal(0.0, 1.0, z)
    pop_target = pop_difficulty + rng.normal(0.0, 0.05, z)
    pop_refs = np.stack([pop_difficulty + rng.normal(0.0, 0.05, z) for _ in range(2)])

    def image(d: np.ndarray) -> np.ndarray:  # the difficulty is visible in the image
        return np.tile(np.tanh(d)[:, None, None, None], (1, 1, 4, 4)).astype(np.float32)

    return ReferenceData(
        target=-np.exp(log_err),
        references=-np.exp(refs),
        pop_target=-np.exp(pop_target),
        pop_references=-np.exp(pop_refs),
        images=image(difficulty),
        pop_images=image(pop_difficulty),
    ), member


def test_reference_attacks_recover_members_that_the_raw_statistic_misses() -> None:
    data, member = _difficulty_world()
    y = member.astype(int)
    raw = auc(data.target, y)
    assert raw < 0.65  # the raw threshold barely sees them
    lira = LiRA({}).score_reference(data, 0)[:, 0]
    rmia = RMIA({}).score_reference(data, 0)[:, 0]
    qr = QuantileRegression({"epochs": 150, "bag": 2}).score_reference(data, 0)[:, 0]
    assert auc(lira, y) > 0.95
    assert auc(rmia, y) > 0.9
    assert auc(qr, y) > 0.8 > raw + 0.15


def test_online_lira_reads_which_references_trained_on_each_row() -> None:
    # Four online references, each row IN for two: an IN reference lowers the row's error by
    # the row's own vulnerability (heterogeneous), which only the IN Gaussian knows.
    data, member = _difficulty_world()
    rng = np.random.default_rng(1)
    n = len(member)
    inside = np.zeros((4, n), dtype=bool)
    for i in range(n):
        inside[rng.permutation(4)[:2], i] = True
    difficulty = np.log(-data.references).mean(0)
    vulnerable = np.abs(rng.normal(0.0, 0.6, n))
    log_err = difficulty - vulnerable * member + rng.normal(0.0, 0.05, n)
    online = difficulty - vulnerable * inside + rng.normal(0.0, 0.05, (4, n))
    data.target, data.online, data.online_in = -np.exp(log_err), -np.exp(online), inside
    y = member.astype(int)
    scores = LiRA({"online_models": 4}).score_reference(data, 0)
    assert scores.shape == (n, 2)  # offline, online
    assert auc(scores[:, 1], y) > 0.95
    # The IN/OUT assignment is what it reads: swapping it turns the test around.
    data.online_in = ~inside
    assert auc(LiRA({"online_models": 4}).score_reference(data, 0)[:, 1], y) < 0.1
    with pytest.raises(ConfigError, match="online_models >= 4 or variance: auto"):
        LiRA({"online_models": 2, "variance": "per_example"})


def test_online_lira_references_train_on_half_of_the_audited_rows(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, **{"attacks.enabled": "[loss, lira]", "attacks.lira.online_models": "2"})
    storage = _prepare(cfg)
    plan = read_plan(storage)
    audited = (plan.split == MEMBER) | (plan.split == "nonmember")
    # Recorded in the membership matrix: each audited row IN for exactly one of the two draws,
    # no online model on a population or shadow row.
    assert plan.online_models == [
        "online_1",
        "online_1_teacher_1",
        "online_1_teacher_2",
        "online_2",
        "online_2_teacher_1",
        "online_2_teacher_2",
    ]
    assert (plan.online_train.sum(0)[audited] == 1).all() and not plan.online_train[
        :, ~audited
    ].any()
    assert online_students(cfg, plan) == ["online_1_student", "online_2_student"]
    out = run_evaluation(
        cfg, storage, plan, SerialScorer(storage, str(tmp_path / "c")), str(tmp_path / "c")
    )
    df = out.scores.to_pandas()
    counts = {"baseline": 2, "teacher_1": 4, DUALMD: 2, STUDENT: 2}
    for t, n in counts.items():
        params = [
            json.loads(p) for p in df[(df.target == t) & (df.attack == "lira")].params.unique()
        ]
        online = [p for p in params if p["mode"] == "online"]
        assert online and {p["references"] for p in online} == {n}, t
        assert np.isfinite(df[(df.target == t) & (df.attack == "lira")].score).all()
        assert out.references[t]["online"]["in_per_row"] == [1, 1]
    assert online_references(cfg, plan, DUALMD) == ["online_1_dualmd", "online_2_dualmd"]
    assert out.references[STUDENT]["online"]["models"]["online_1_student"]["audited_rows_in"] == (
        plan.online_train[0].sum()
    )
    # Prepared without online draws: one line naming the fix.
    plain = _cfg(tmp_path / "p", **{"attacks.enabled": "[loss, lira]"})
    with pytest.raises(ConfigError, match="rerun prepare with this config"):
        online_references(cfg, read_plan(_prepare(plain)), "baseline")


def test_statistic_is_minus_log_error() -> None:
    assert statistic(np.array([-np.e, -1.0]), "log") == pytest.approx([-1.0, 0.0])
    assert statistic(np.array([-2.0]), "none") == pytest.approx([-2.0])


# ------------------------------------------------------------------------- the evaluation

REFS = "[loss, sima, pia, gsa1, dualmd_adaptive, lira, rmia, quantile, combined]"


def test_reference_attacks_score_every_target_against_out_references(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        **{"attacks.enabled": REFS, "attacks.quantile.epochs": "2", "attacks.quantile.bag": "2"},
    )
    storage = _prepare(cfg)
    plan = read_plan(storage)
    pop = plan.population()
    assert pop.sum() == 8 and (plan.split[pop] == SHADOW).all()
    out = run_evaluation(
        cfg, storage, plan, SerialScorer(storage, str(tmp_path / "c")), str(tmp_path / "c")
    )
    df = out.scores.to_pandas()
    for t in ("baseline", "teacher_1", "teacher_2", DUALMD, STUDENT):
        g = df[df.target == t]
        assert {"lira", "rmia", "quantile"} <= set(g.attack), t
        for a in ("lira", "rmia", "quantile"):
            params = [json.loads(p) for p in g[g.attack == a].params.unique()]
            # one column per base setting: loss 1, sima 3, pia 2 + canonical
            assert sorted({p["base"] for p in params}) == ["loss", "pia", "sima"]
            assert len(params) == 1 + 3 + 3
            assert np.isfinite(g[g.attack == a].score).all()
    comb = df[df.attack == "combined"]
    assert set(comb.target) == {"baseline", "teacher_1", "teacher_2", DUALMD, STUDENT}
    params = json.loads(comb[comb.target == "baseline"].params.iloc[0])
    assert params["attacks"] == ["gsa1", "lira", "loss", "pia", "quantile", "rmia", "sima"]
    assert params["columns"] == 1 + 1 + 3 + 3 + 7 * 3  # loss, gsa1, sima, pia, lira/rmia/qr
    rows, _ = metric_rows(out.scores, bootstrap=0, seed=0)
    access = {(r["target"], r["attack"]): r["access"] for r in rows}
    assert access[("baseline", "combined")] == "white-box"  # GSA is among its inputs
    assert access[(DUALMD, "combined")] == "gray-box"
    assert references_for(cfg, plan, "teacher_1") == ["shadow_1_teacher_1", "shadow_1_teacher_2"]
    assert references_for(cfg, plan, DUALMD) == ["shadow_1_dualmd"]
    assert references_for(cfg, plan, STUDENT) == ["shadow_1_student"]
    refs = out.references
    assert refs["baseline"]["population_rows"] == 8
    assert refs[DUALMD]["models"] == {
        "shadow_1_dualmd": {"members": 8, "audited_rows_trained_on": 0}
    }
    assert all(
        m["audited_rows_trained_on"] == 0 for r in refs.values() for m in r["models"].values()
    )


def test_reference_attacks_refuse_missing_or_overlapping_references(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="attacks.shadow.num_models=0 trains none"):
        build_attacks(
            _cfg(tmp_path, **{"attacks.enabled": "[loss, lira]", "attacks.shadow.num_models": "0"})
        )
    with pytest.raises(ConfigError, match="needs population rows"):
        build_attacks(
            _cfg(
                tmp_path,
                **{"attacks.enabled": "[loss, quantile]", "attacks.shadow.num_models": "0"},
            )
        )
    # Checked with the config, before any stage runs.
    from raydefense.run.session import validate_config

    bad = _cfg(
        tmp_path,
        **{"attacks.enabled": "[loss, secmi_nn, lira]", "attacks.lira.bases": "[secmi_nn]"},
    )
    with pytest.raises(ConfigError, match="bases names 'secmi_nn'"):
        validate_config(bad)
    # The quantile attack draws population rows but trains no shadow model.
    qr_only = _cfg(tmp_path, **{"attacks.enabled": "[loss, quantile]"})
    assert shadows_needed(qr_only) == 1
    cfg = _cfg(tmp_path, **{"attacks.enabled": "[loss, lira]"})
    plan = read_plan(_prepare(cfg))
    check_references(cfg, plan, "baseline", ["shadow_1"])
    # A reference that trained on audited rows is not OUT for them: refused in one line.
    plan.membership[plan.models.index("shadow_1"), np.flatnonzero(plan.split == MEMBER)[:3]] = True
    with pytest.raises(SplitOverlapError, match="reference model shadow_1 trained on 3 rows"):
        check_references(cfg, plan, "baseline", ["shadow_1"])
    with pytest.raises(ConfigError, match="no reference model"):
        check_references(cfg, plan, "baseline", [])
    # Overlapping shadow draws can leave no row held out by all of them: one line, not a crash.
    from raydefense.audit.reference import reference_jobs

    qr = _cfg(tmp_path, **{"attacks.enabled": "[loss, quantile]"})
    attack = build_attacks(qr)[-1]
    plan.shadow_train[0] |= plan.shadow_heldout[0]
    plan.shadow_heldout[0] = False
    with pytest.raises(ConfigError, match="quantile need population rows .* the plan has 0"):
        reference_jobs(qr, plan, {"baseline": [attack]})


def test_digits_enables_the_reference_attacks() -> None:
    cfg = load_config("digits", None, [])
    assert {"lira", "rmia", "quantile", "combined"} <= set(cfg.attacks.enabled)


def test_the_combined_attack_is_scored_out_of_fold_on_calibration() -> None:
    """Many noise columns: a classifier fitted in-sample would look strong on calibration;
    nested cross-validation keeps its calibration AUC near chance, and a real signal column
    still comes through on both parts."""
    from raydefense.attacks.combined import CombinedAttack

    rng = np.random.default_rng(0)
    n = 300
    member = np.arange(n) < n // 2
    cal = rng.permutation(n) < n // 2
    noise = rng.normal(size=(n, 60))
    attack = CombinedAttack({"folds": 3, "inner_folds": 2})
    s = attack.combine(noise, member, cal, seed=0)
    assert abs(auc(s[cal], member[cal]) - 0.5) < 0.12
    signal = np.column_stack([noise, member + rng.normal(0, 0.7, n)])
    s = attack.combine(signal, member, cal, seed=0)
    # out-of-fold on 150 calibration rows: a fold's model sees 100 rows of 61 columns
    assert auc(s[cal], member[cal]) > 0.7 and auc(s[~cal], member[~cal]) > 0.8


def test_the_combined_attack_depends_on_its_seed_only() -> None:
    """liblinear shuffles rows: seeded from the attack's seed, not NumPy's global state, so the
    column is the same whatever ran before it in the process."""
    from raydefense.attacks.combined import CombinedAttack

    rng = np.random.default_rng(1)
    member = np.arange(200) < 100
    cal = rng.permutation(200) < 120
    x = rng.normal(size=(200, 30)) + 0.4 * member[:, None] * (np.arange(30) < 3)
    attack = CombinedAttack({"folds": 3, "inner_folds": 2})
    np.random.seed(1)
    first = attack.combine(x, member, cal, seed=5)
    np.random.seed(2)
    assert np.array_equal(first, attack.combine(x, member, cal, seed=5))


def test_the_combined_attacks_calibrated_threshold_holds_on_the_test_part() -> None:
    """The test part is scored by the mean of the fold models (fitted like the out-of-fold
    ones), so a threshold at 5% FPR on the calibration non-members realises about 5% on the
    test non-members. (A refit on all of calibration chose other C and scales: 8.1% here.)"""
    from raydefense.attacks.combined import CombinedAttack

    fprs = []
    for seed in range(6):
        rng = np.random.default_rng(seed)
        n = 800
        member = np.arange(n) < n // 2
        cal = rng.permutation(n) < n // 2
        x = rng.normal(size=(n, 40))
        x[:, :4] += 0.35 * member[:, None]
        s = CombinedAttack({}).combine(x, member, cal, seed=seed)
        threshold = np.quantile(s[cal & ~member], 0.95)
        fprs.append(float((s[~cal & ~member] > threshold).mean()))
    assert 0.03 < np.mean(fprs) < 0.075, fprs


def test_the_gain_over_the_raw_suite_is_a_paired_bootstrap_on_the_same_rows() -> None:
    """What the new families add: test-AUC difference of two attacks on the same rows, with a
    paired CI; calibration rows never enter it."""
    import pyarrow as pa

    from raydefense.audit.results import paired_auc_gain

    rng = np.random.default_rng(0)
    n = 200
    member = np.arange(n) < n // 2
    part = np.where(np.arange(n) % 2 == 0, "test", "calibration")
    strong = member + rng.normal(0, 0.5, n)
    weak = member + rng.normal(0, 3.0, n)
    strong[part == "calibration"] = 0.0  # calibration rows must not matter
    cols = {k: [] for k in ("target", "attack", "params", "row_id", "is_member", "part", "score")}
    for name, s in (("lira", strong), ("loss", -weak)):
        cols["target"] += ["student"] * n
        cols["attack"] += [name] * n
        cols["params"] += ["{}"] * n
        cols["row_id"] += list(range(n))
        cols["is_member"] += member.tolist()
        cols["part"] += part.tolist()
        cols["score"] += s.tolist()
    table = pa.table(cols)
    new = {"attack": "lira", "params": {}, "orientation": 1}
    old = {"attack": "loss", "params": {}, "orientation": -1}  # flipped on calibration
    test = part == "test"
    want = auc(strong[test], member[test]) - auc(weak[test], member[test])
    gain = paired_auc_gain(table, "student", new, old, 300, 0)
    assert gain["auc_diff"] == pytest.approx(want)
    lo, hi = gain["auc_diff_ci"]
    assert 0 < lo < want < hi
    with pytest.raises(ValueError, match="not scored on the same test rows"):
        paired_auc_gain(table, "student", new, {"attack": "pia", "params": {}}, 10, 0)
