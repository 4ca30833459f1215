"""Split plan: disjointness (index and content), coverage, determinism, duplicates, split files."""

from __future__ import annotations

import numpy as np
import pytest

from raydefense.config import DataConfig
from raydefense.data.plan import MEMBER, NONMEMBER, TEST, make_plan, plan_from_tables
from raydefense.data.pool import DATASETS, ImagePool
from raydefense.errors import DataError, SplitOverlapError
from raydefense.roster import (
    SHADOW_ROLES,
    model_index,
    online_name,
    parse_online,
    parse_shadow,
    shadow_name,
)

from conftest import SHARED_SPLITS


def unique_pool(n: int, shape=(1, 2, 2), seed: int = 0) -> ImagePool:
    """n distinct uint8 images (the row index is written into the pixels)."""
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = imgs.reshape(n, -1)
    flat[:, 0] = np.arange(n) % 256
    flat[:, 1] = (np.arange(n) // 256) % 256
    flat[:, 2] = (np.arange(n) // 65536) % 256
    return ImagePool(images=imgs, labels=np.zeros(n, np.int64), name="fake")


def test_digits_plan_is_disjoint_covering_and_deterministic():
    pool = DATASETS.get("digits")(DataConfig())
    assert pool.images.shape == (1797, 1, 8, 8)
    cfg = DataConfig(num_members=200, num_nonmembers=150, num_shards=2)
    a, b = make_plan(pool, cfg, seed=3), make_plan(pool, cfg, seed=3)
    assert np.array_equal(a.row_id, b.row_id) and np.array_equal(a.shard, b.shard)
    c = make_plan(pool, cfg, seed=4)
    assert not np.array_equal(a.row_id, c.row_id)
    members = a.split == MEMBER
    assert members.sum() == 200 and (~members).sum() == 150
    assert set(a.row_id[members]).isdisjoint(a.row_id[~members])
    t1, t2 = a.membership[1], a.membership[2]
    assert not (t1 & t2).any() and np.array_equal(t1 | t2, members)
    assert abs(int(t1.sum()) - int(t2.sum())) <= 1
    assert np.array_equal(a.membership[0], members)
    # calibration/test parts are stratified: every shard and the non-members have both parts
    for grp in (t1, t2, ~members):
        parts = set(a.part[grp])
        assert parts == {"calibration", TEST}


def test_default_split_is_equal_halves():
    plan = make_plan(unique_pool(101), DataConfig(), seed=0)
    s = plan.summary()
    assert s["num_members"] == 50 and s["num_nonmembers"] == 51


def test_duplicates_across_splits_are_refused_or_dropped():
    pool = unique_pool(40)
    pool.images[5] = pool.images[6]  # an exact duplicate somewhere in the pool
    pool.images[7] = pool.images[6]
    with pytest.raises(SplitOverlapError, match="on_duplicate=drop"):
        for seed in range(20):  # some seed puts the copies in different groups
            make_plan(pool, DataConfig(), seed=seed)
    for seed in range(5):
        plan = make_plan(pool, DataConfig(on_duplicate="drop"), seed=seed)
        assert len(set(plan.hash)) == len(plan.hash)
        assert plan.duplicates_dropped >= 1


def test_too_many_members_is_a_clear_error():
    with pytest.raises(DataError, match="data.num_members"):
        make_plan(unique_pool(20), DataConfig(num_members=50), seed=0)


def test_round_trip_through_tables_revalidates():
    plan = make_plan(unique_pool(30), DataConfig(), seed=1)
    back = plan_from_tables(plan.to_table(), plan.membership_table(), list(plan.images.shape[1:]))
    assert np.array_equal(back.images, plan.images) and back.models == plan.models
    tampered = plan.membership_table().to_pydict()
    first_member = int(np.flatnonzero(plan.membership[1])[0])
    tampered["teacher_2"][first_member] = True  # a row now in two shards
    import pyarrow as pa

    with pytest.raises(SplitOverlapError):
        plan_from_tables(plan.to_table(), pa.table(tampered), list(plan.images.shape[1:]))


def test_regime_matched_shadow_teachers_split_their_draw_like_the_targets():
    """Per shadow draw, K shadow teachers on disjoint shards covering the draw's training rows
    (seeded, a function of the draw alone); names parse back; every model seeds its own batches."""
    pool, cfg = unique_pool(400), DataConfig(num_members=60, num_nonmembers=60, num_shards=3)
    plan = make_plan(pool, cfg, seed=2, num_shadows=2, shadow_members=30, shadow_roles=SHADOW_ROLES)
    assert plan.shadows == [
        "shadow_1",
        *[f"shadow_1_teacher_{k}" for k in (1, 2, 3)],
        "shadow_2",
        *[f"shadow_2_teacher_{k}" for k in (1, 2, 3)],
    ]
    for j in range(2):
        shards = np.stack([plan.rows_of(shadow_name(j, "teacher", k)) for k in range(3)])
        assert (shards.sum(axis=0) <= 1).all() and shards.sum(axis=1).tolist() == [10, 10, 10]
        assert np.array_equal(shards.any(axis=0), plan.shadow_train[j])
        assert np.array_equal(plan.rows_of(shadow_name(j)), plan.shadow_train[j])
    again = make_plan(
        pool, cfg, seed=2, num_shadows=2, shadow_members=30, shadow_roles=SHADOW_ROLES
    )
    assert np.array_equal(again.membership, plan.membership)
    one = make_plan(pool, cfg, seed=2, num_shadows=1, shadow_members=30, shadow_roles=("teacher",))
    assert one.shadows == [f"shadow_1_teacher_{k}" for k in (1, 2, 3)]
    for m in one.shadows:  # draw 1's shards do not depend on other draws or roles
        assert set(one.row_id[one.rows_of(m)]) == set(plan.row_id[plan.rows_of(m)])
    names = [
        "baseline",
        *plan.teachers,
        "student",
        *plan.shadows,
        "shadow_1_student",
        "shadow_2_student",
    ]
    assert len({model_index(m, 3) for m in names}) == len(names)
    assert model_index("shadow_1", 3) == 100  # the baseline-like shadow keeps its old seeds
    for m in plan.shadows + ["shadow_2_student"]:
        j, role, k = parse_shadow(m)
        assert shadow_name(j, role, max(k, 0)) == m
    assert parse_shadow("teacher_1") is None
    back = plan_from_tables(
        plan.to_table(),
        plan.membership_table(),
        list(plan.images.shape[1:]),
        plan.shadow_draws_table(),
    )
    assert np.array_equal(back.shadow_train, plan.shadow_train)
    assert np.array_equal(back.shadow_heldout, plan.shadow_heldout)
    bad = plan.membership_table().to_pydict()
    bad["shadow_1_teacher_2"] = list(
        np.array(bad["shadow_1_teacher_2"]) | plan.rows_of("shadow_1_teacher_1")
    )
    import pyarrow as pa

    with pytest.raises(SplitOverlapError, match="teacher shards must be disjoint"):
        plan_from_tables(
            plan.to_table(), pa.table(bad), list(plan.images.shape[1:]), plan.shadow_draws_table()
        )


def test_online_draws_put_each_audited_row_in_half_of_them():
    """Online LiRA's draws train on audited rows only, each row IN for exactly O / 2 of them,
    per draw K disjoint teacher shards; adding them leaves every other model's rows unchanged;
    they round-trip through the tables and their names parse."""
    pool, cfg = unique_pool(400), DataConfig(num_members=60, num_nonmembers=60, num_shards=2)
    base = make_plan(pool, cfg, seed=3, num_shadows=1, shadow_members=30, shadow_roles=SHADOW_ROLES)
    plan = make_plan(
        pool,
        cfg,
        seed=3,
        num_shadows=1,
        shadow_members=30,
        shadow_roles=SHADOW_ROLES,
        num_online=4,
        online_roles=SHADOW_ROLES,
    )
    assert np.array_equal(plan.membership[: len(base.models)], base.membership)
    assert plan.models[: len(base.models)] == base.models
    audited = (plan.split == MEMBER) | (plan.split == NONMEMBER)
    assert (plan.online_train.sum(axis=0)[audited] == 2).all()
    assert not plan.online_train[:, ~audited].any()
    assert np.array_equal(plan.population(), base.population())
    for j in range(4):
        shards = np.stack([plan.rows_of(online_name(j, "teacher", k)) for k in range(2)])
        assert (shards.sum(axis=0) <= 1).all()
        assert np.array_equal(shards.any(axis=0), plan.online_train[j])
        assert np.array_equal(plan.members_of(online_name(j, "student")), plan.online_train[j])
        assert parse_online(online_name(j, "teacher", 1)) == (j, "teacher", 1)
    assert parse_shadow("online_1") is None and parse_online("shadow_1") is None
    names = plan.models + [online_name(j, "student") for j in range(4)] + ["student"]
    assert len({model_index(m, 2) for m in names}) == len(names)
    back = plan_from_tables(
        plan.to_table(),
        plan.membership_table(),
        list(plan.images.shape[1:]),
        plan.shadow_draws_table(),
    )
    assert np.array_equal(back.online_train, plan.online_train)
    assert np.array_equal(back.shadow_train, plan.shadow_train)
    plan.online_train[0, np.flatnonzero(~audited)[0]] = True
    with pytest.raises(SplitOverlapError, match="outside the audited rows"):
        plan_from_tables(
            plan.to_table(),
            plan.membership_table(),
            list(plan.images.shape[1:]),
            plan.shadow_draws_table(),
        )


@pytest.mark.skipif(
    not (SHARED_SPLITS / "CIFAR10_train_ratio0.5.npz").exists(),
    reason="shared/mia_splits is not beside the checkout",
)
def test_secmi_split_file_drives_membership():
    path = SHARED_SPLITS / "CIFAR10_train_ratio0.5.npz"
    with np.load(path) as z:
        members_all, nonmembers_all = set(z["mia_train_idxs"]), set(z["mia_eval_idxs"])
    pool = unique_pool(50_000)
    cfg = DataConfig(split_file=str(path), num_members=64, num_nonmembers=64)
    plan = make_plan(pool, cfg, seed=0)
    assert set(plan.row_id[plan.split == MEMBER]) <= members_all
    assert set(plan.row_id[plan.split == NONMEMBER]) <= nonmembers_all
    assert np.array_equal(make_plan(pool, cfg, seed=0).row_id, plan.row_id)
    with pytest.raises(DataError, match="only 100 images"):
        make_plan(unique_pool(100), DataConfig(split_file=str(path)), seed=0)
