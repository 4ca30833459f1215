"""DistillMD soft targets: the teacher-assignment invariant, per-row determinism, fresh-noise
draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raydefense.defense.distillmd import (
    SoftTargetLabeller,
    assigned_teachers,
    auto_draws,
    labelling_teachers,
)
from raydefense.diffusion.noising import draw_t_noise
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import PrivacyInvariantError


class ConstTeacher:
    """eps(x, t) = a constant that identifies the teacher."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self, x, t):
        return torch.full_like(x, self.value)


SCHED = NoiseSchedule()
TEACHERS = {"teacher_1": ConstTeacher(1.0), "teacher_2": ConstTeacher(2.0)}
OWNERS = {10: frozenset({"teacher_1"}), 11: frozenset({"teacher_2"}), 12: frozenset({"teacher_1"})}


def batch(rows):
    shard = {10: 0, 11: 1, 12: 0}
    return {
        "row_id": np.array(rows),
        "shard": np.array([shard[r] for r in rows]),
        "image": np.stack([np.full((1, 2, 2), r / 100, np.float32) for r in rows]),
    }


def test_each_row_is_labelled_only_by_the_teacher_that_never_saw_it():
    lab = SoftTargetLabeller(TEACHERS, OWNERS, SCHED, draws=3, seed=0)
    out = lab(batch([10, 11, 12]))
    assert len(out["row_id"]) == 9
    for r, target, who in zip(out["row_id"], out["target"], out["teachers"]):
        expected = 2.0 if r in (10, 12) else 1.0
        assert np.all(target == expected)
        assert who == ("teacher_2" if r in (10, 12) else "teacher_1")


def test_k_shards_use_the_mean_of_the_other_teachers():
    teachers = {**TEACHERS, "teacher_3": ConstTeacher(4.0)}
    lab = SoftTargetLabeller(teachers, OWNERS, SCHED, draws=1, seed=0)
    out = lab(batch([10]))
    assert np.allclose(out["target"], 3.0)  # mean of teacher_2 (2) and teacher_3 (4)
    assert labelling_teachers(
        frozenset({"teacher_2"}), ["teacher_1", "teacher_2", "teacher_3"]
    ) == ["teacher_1", "teacher_3"]


# K = 4 disjoint shards: teacher_k has the constant eps 10**k, so a target names who labelled it.
TEACHERS4 = {f"teacher_{k}": ConstTeacher(10.0**k) for k in range(1, 5)}
OWNERS4 = {r: frozenset({f"teacher_{1 + r % 4}"}) for r in range(400)}


def batch4(rows):
    return {
        "row_id": np.array(rows, dtype=np.int64),
        "shard": np.array([r % 4 for r in rows]),
        "image": np.stack([np.full((1, 2, 2), (r % 7) / 10, np.float32) for r in rows]),
    }


def by_row_draw(out):
    return {(int(r), int(d)): i for i, (r, d) in enumerate(zip(out["row_id"], out["draw"]))}


def test_mean_assignment_averages_every_excluded_teacher():
    lab = SoftTargetLabeller(TEACHERS4, OWNERS4, SCHED, draws=2, seed=3, teacher_assignment="mean")
    out = lab(batch4(list(range(8))))
    for r, target, who in zip(out["row_id"], out["target"], out["teachers"]):
        others = [f"teacher_{k}" for k in range(1, 5) if f"teacher_{k}" not in OWNERS4[int(r)]]
        assert who == ",".join(others)
        assert np.allclose(target, np.mean([TEACHERS4[t].value for t in others]))


def test_one_other_assignment_uses_one_allowed_teacher_per_row():
    rows = list(range(400))
    lab = SoftTargetLabeller(
        TEACHERS4, OWNERS4, SCHED, draws=3, seed=5, teacher_assignment="one_other"
    )
    out = lab(batch4(rows))
    value = {t.value: name for name, t in TEACHERS4.items()}
    chosen: dict[int, str] = {}
    for r, target, who in zip(out["row_id"], out["target"], out["teachers"]):
        r = int(r)
        assert who in TEACHERS4 and who not in OWNERS4[r]  # one teacher, never the owner
        vals = np.unique(target)
        assert len(vals) == 1 and value[float(vals[0])] == who  # the target is that teacher's eps
        assert chosen.setdefault(r, who) == who  # every draw of a row uses the same teacher
        assert who == assigned_teachers(OWNERS4[r], list(TEACHERS4), "one_other", 5, r)[0]
    # roughly uniform: per shard, each of the 3 allowed teachers labels about a third of 100 rows
    for k in range(1, 5):
        owner = f"teacher_{k}"
        counts = {
            t: sum(1 for r, w in chosen.items() if OWNERS4[r] == {owner} and w == t)
            for t in TEACHERS4
            if t != owner
        }
        assert sum(counts.values()) == 100 and all(15 <= c <= 55 for c in counts.values()), counts
    # deterministic across calls, and independent of batch composition and order
    again = lab(batch4(rows))
    for key in ("t", "x_t", "target", "teachers"):
        assert np.array_equal(out[key], again[key])
    sub = lab(batch4([397, 3, 250, 41]))
    ia = by_row_draw(out)
    for j, rd in enumerate(zip(sub["row_id"], sub["draw"])):
        i = ia[(int(rd[0]), int(rd[1]))]
        assert sub["teachers"][j] == out["teachers"][i]
        assert np.array_equal(sub["target"][j], out["target"][i])
        assert np.array_equal(sub["x_t"][j], out["x_t"][i])
    # a different seed gives a different assignment
    other = SoftTargetLabeller(
        TEACHERS4, OWNERS4, SCHED, draws=1, seed=6, teacher_assignment="one_other"
    )(batch4(rows))
    assert list(other["teachers"]) != list(out["teachers"][::3])


def test_k2_assignments_are_identical():
    outs = [
        SoftTargetLabeller(TEACHERS, OWNERS, SCHED, draws=3, seed=1, teacher_assignment=a)(
            batch([10, 11, 12])
        )
        for a in ("mean", "one_other")
    ]
    for key in outs[0]:
        assert np.array_equal(outs[0][key], outs[1][key]), key
    assert list(outs[0]["teachers"]) == ["teacher_2"] * 3 + ["teacher_1"] * 3 + ["teacher_2"] * 3


def test_unknown_assignment_is_refused():
    with pytest.raises(ValueError, match="one_other"):
        SoftTargetLabeller(TEACHERS, OWNERS, SCHED, draws=1, seed=0, teacher_assignment="random")


def test_violations_raise():
    bad = {10: frozenset({"teacher_1", "teacher_2"})}
    with pytest.raises(PrivacyInvariantError):
        SoftTargetLabeller(TEACHERS, bad, SCHED, draws=1, seed=0)(batch([10]))
    with pytest.raises(PrivacyInvariantError, match="not a member"):
        SoftTargetLabeller(TEACHERS, {}, SCHED, draws=1, seed=0)(batch([10]))
    for assignment in ("mean", "one_other"):
        with pytest.raises(PrivacyInvariantError):
            SoftTargetLabeller(
                TEACHERS4,
                {10: frozenset(TEACHERS4)},
                SCHED,
                draws=1,
                seed=0,
                teacher_assignment=assignment,
            )(batch([10]))


def test_draws_are_seeded_per_row_and_draw():
    lab = SoftTargetLabeller(TEACHERS, OWNERS, SCHED, draws=4, seed=7)
    a, b = lab(batch([10, 11])), lab(batch([11, 10]))
    for key in ("t", "x_t", "target"):
        # the same (row, draw) gives byte-identical output whatever the batch order
        ia = {(r, d): i for i, (r, d) in enumerate(zip(a["row_id"], a["draw"]))}
        for j, (r, d) in enumerate(zip(b["row_id"], b["draw"])):
            assert np.array_equal(np.asarray(a[key][ia[(r, d)]]), np.asarray(b[key][j]))
    # x_t really is q_sample(x0, t, noise) with the drawn (t, noise)
    t, noise = draw_t_noise(7, 10, 0, 1000, (1, 2, 2))
    x0 = torch.full((1, 1, 2, 2), 0.10)
    expect = SCHED.q_sample(x0, torch.tensor([t]), torch.from_numpy(noise)[None])
    assert a["t"][0] == t and np.allclose(a["x_t"][0], expect[0].numpy())
    assert len(set(a["t"][:4].tolist())) > 1  # draws differ


def test_auto_draws_cover_every_student_step_with_fresh_noise():
    assert auto_draws(steps=4000, batch_size=64, num_members=256) == 1000
    assert auto_draws(steps=10, batch_size=3, num_members=7) == 5  # ceil(30 / 7)


class ShrinkTeacher:
    """eps(x, t) = x: DDIM then pulls every sample towards 0 (a mid-grey image)."""

    def __call__(self, x, t, cond=None):
        return x


def test_synthetic_rows_are_seeded_uint8_images_with_their_own_ids():
    from raydefense.defense.distillmd import (
        SYNTHETIC_ROW_BASE,
        synthetic_images,
        synthetic_row_ids,
    )

    a = synthetic_images(
        ShrinkTeacher(), SCHED, 5, (1, 4, 4), seed=0, k=1, num_steps=4, batch_size=2
    )
    assert a.shape == (5, 1, 4, 4) and a.dtype == np.uint8
    again = synthetic_images(
        ShrinkTeacher(), SCHED, 5, (1, 4, 4), seed=0, k=1, num_steps=4, batch_size=2
    )
    other = synthetic_images(
        ShrinkTeacher(), SCHED, 5, (1, 4, 4), seed=0, k=0, num_steps=4, batch_size=2
    )
    assert np.array_equal(a, again) and not np.array_equal(a, other)
    progress: list[int] = []
    synthetic_images(
        ShrinkTeacher(), SCHED, 5, (1, 4, 4), 0, 1, 4, batch_size=2, on_batch=progress.append
    )
    assert progress == [2, 4, 5]
    assert len({im.tobytes() for im in a}) == 5  # every sample has its own noise
    ids = synthetic_row_ids(1, 5)
    assert ids.dtype == np.int64 and ids[0] > SYNTHETIC_ROW_BASE and len(set(ids)) == 5
    assert not set(ids) & set(synthetic_row_ids(0, 5))
    assert (ids < 2**32).all()  # derive_seed keeps 32 bits of each part: no real row's draws
    with pytest.raises(ValueError, match="at most"):
        synthetic_row_ids(0, 2**21)


def test_synthetic_rows_config_and_fingerprints():
    from raydefense.config import load_config
    from raydefense.errors import ConfigError
    from raydefense.run.fingerprints import config_tree, stage_fingerprints

    off = load_config("digits")
    assert "synthetic_per_teacher" not in config_tree(off)["distill"]
    on = load_config("digits", overrides=["distill.synthetic_per_teacher=512"])
    fp_on, fp_off = stage_fingerprints(on), stage_fingerprints(off)
    assert fp_on["student"] != fp_off["student"] and fp_on["targets"] == fp_off["targets"]
    with pytest.raises(ConfigError, match="synthetic_per_teacher draws pixel samples"):
        load_config("tiny_t2i", overrides=["distill.synthetic_per_teacher=8"])


class _RecordingLabeller:
    """The labeller role in-process: draws n fake synthetic ids per teacher, records what the
    distill stage asks it to label and returns the row count it would write."""

    def __init__(self) -> None:
        self.owners: dict[int, list[str]] = {}
        self.extra: list[str] = []

    def synthesize(self, cfg, teachers, n, out_dir):
        from raydefense.defense.distillmd import synthetic_row_ids

        return {t: [int(r) for r in synthetic_row_ids(k, n)] for k, t in enumerate(teachers)}

    def label_soft_targets(self, cfg, storage, teachers, owners, draws, out_dir, groups, extra):
        self.owners, self.extra, self.groups = dict(owners), list(extra), dict(groups)
        return len(owners) * draws


def _distil_inputs(tmp_path, **overrides: str):
    """Run the distill stage's labelling step on a tiny digits plan with a recording labeller
    -> (pool, plan, storage, the labeller)."""
    from raydefense.data.plan import make_plan
    from raydefense.data.sources import load_digits
    from raydefense.data.tables import write_plan
    from raydefense.pipeline.distill_stage import _soft_targets
    from raydefense.run.context import Backend, RunContext
    from raydefense.run.fingerprints import stage_fingerprints
    from raydefense.storage import Storage

    from conftest import tiny_config

    cfg = tiny_config(tmp_path, **overrides)
    storage = Storage(cfg.storage.root, cfg.experiment)
    pool = load_digits(cfg.data)
    plan = make_plan(pool, cfg.data, cfg.seed)
    write_plan(storage, plan)
    labeller = _RecordingLabeller()
    ctx = RunContext(
        cfg=cfg,
        storage=storage,
        backend=Backend(labeller=labeller),
        fingerprints=stage_fingerprints(cfg),
    )
    _soft_targets(ctx, plan, "student", plan.teachers)
    return pool, plan, storage, labeller


@pytest.mark.parametrize("member_inputs", [True, False])
def test_member_inputs_false_distils_on_synthetic_rows_alone(tmp_path, member_inputs):
    """distill.member_inputs=false: no member row is handed to the labeller (so none becomes a
    student input); the synthetic rows are, each owned by the teacher that drew it."""
    from raydefense.defense.distillmd import SYNTHETIC_ROW_BASE

    _, plan, _, labeller = _distil_inputs(
        tmp_path,
        **{
            "distill.synthetic_per_teacher": "3",
            "distill.member_inputs": str(member_inputs).lower(),
        },
    )
    members = {int(r) for r, m in zip(plan.row_id, plan.members_of("student")) if m}
    labelled = set(labeller.owners)
    synthetic = {r for r in labelled if r >= SYNTHETIC_ROW_BASE}
    assert len(synthetic) == 6 and len(labeller.extra) == 2
    assert {tuple(labeller.owners[r]) for r in synthetic} == {("teacher_1",), ("teacher_2",)}
    assert labelled - synthetic == (members if member_inputs else set())


def test_member_inputs_config_and_fingerprints():
    from raydefense.config import load_config
    from raydefense.errors import ConfigError
    from raydefense.run.fingerprints import config_tree, stage_fingerprints

    assert "member_inputs" not in config_tree(load_config("digits"))["distill"]
    with pytest.raises(ConfigError, match="member_inputs=false leaves the student no inputs"):
        load_config("digits", overrides=["distill.member_inputs=false"])
    on = load_config("digits", overrides=["distill.synthetic_per_teacher=64"])
    off = load_config(
        "digits", overrides=["distill.synthetic_per_teacher=64", "distill.member_inputs=false"]
    )
    fp_on, fp_off = stage_fingerprints(on), stage_fingerprints(off)
    assert fp_on["student"] != fp_off["student"] and fp_on["targets"] == fp_off["targets"]


def test_public_rows_are_labelled_by_every_teacher():
    """distill.public_inputs: a row no teacher trained on gets the mean of all teachers."""
    owners = {**OWNERS, 13: frozenset()}
    lab = SoftTargetLabeller(TEACHERS, owners, SCHED, draws=2, seed=0)
    out = lab({"row_id": np.array([13]), "shard": np.array([1]), "image": np.zeros((1, 1, 2, 2))})
    assert np.allclose(out["target"], 1.5) and set(out["teachers"]) == {"teacher_1,teacher_2"}


def test_unused_rows_leave_out_the_plan_and_its_content_copies():
    from raydefense.data.plan import content_hash, unused_rows

    images = np.arange(6 * 4, dtype=np.uint8).reshape(6, 1, 2, 2)
    images[4] = images[0]  # a content copy of plan row 0
    images[5] = images[3]  # a copy of an unused row: kept once
    ids = unused_rows(images, np.array([0, 1]), {content_hash(images[i]) for i in (0, 1)})
    assert ids.tolist() == [2, 3] and ids.dtype == np.int64


def test_public_inputs_add_the_unused_pool_rows_labelled_by_all(tmp_path):
    """distill.member_inputs=false + distill.public_inputs: the student's inputs are the pool's
    unused rows alone (no plan row, no content copy of one), owned by no teacher."""
    from raydefense.data.plan import content_hash

    pool, plan, storage, labeller = _distil_inputs(
        tmp_path, **{"distill.public_inputs": "true", "distill.member_inputs": "false"}
    )
    ids = sorted(labeller.owners)
    assert len(ids) > 1000 and not set(ids) & set(plan.row_id.tolist())
    assert all(labeller.owners[r] == [] for r in ids)
    assert not {content_hash(pool.images[r]) for r in ids} & set(plan.hash)
    assert set(labeller.groups.values()) == {0, 1} and labeller.extra == ["distill/public.parquet"]
    table = storage.read_table("distill/public.parquet")
    assert table["row_id"].to_pylist() == ids
    assert table["image"][0].as_py() == pool.images[ids[0]].tobytes()


def test_public_inputs_config():
    from raydefense.config import load_config
    from raydefense.errors import ConfigError
    from raydefense.run.fingerprints import config_tree

    assert "public_inputs" not in config_tree(load_config("digits"))["distill"]
    cfg = load_config(
        "digits", overrides=["distill.public_inputs=true", "distill.member_inputs=false"]
    )
    assert cfg.distill.public_inputs and not cfg.distill.member_inputs
    with pytest.raises(ConfigError, match="public_inputs labels pixel rows"):
        load_config("tiny_t2i", overrides=["distill.public_inputs=true"])


def test_soft_targets_stream_back_in_row_draw_order_with_conditions_per_batch(tmp_path) -> None:
    """read_soft_targets places every example by its (row, draw) key whatever the file order and
    row groups, and a latent family's conditions are gathered per batch from the encoded rows'
    caption table (never one [L, D] copy per example)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raydefense.data.encoded import EncodedRows
    from raydefense.data.tables import encode_float_rows, read_soft_targets
    from raydefense.defense.footprint import bytes_per_example
    from raydefense.layout import soft_targets_dir
    from raydefense.storage import Storage

    storage = Storage(str(tmp_path), "exp")
    folder = tmp_path / "exp" / soft_targets_dir("student")
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shape = (2, 3, 3)
    ids = rng.permutation(np.arange(100, 124))
    expected = {}
    for k in range(3):
        rows = np.repeat(ids[k * 8 : (k + 1) * 8], 3)
        draws = np.tile([2, 0, 1], 8)
        n = len(rows)
        x_t = rng.standard_normal((n, *shape)).astype(np.float32)
        target = rng.standard_normal((n, *shape)).astype(np.float32)
        t, caption = rng.integers(0, 1000, n), rng.integers(0, 2, n)
        for i in range(n):
            expected[(rows[i], draws[i])] = (x_t[i], target[i], t[i], rows[i] % 2, caption[i])
        table = pa.table(
            {"row_id": rows, "draw": draws, "shard": rows % 2, "t": t, "caption": caption,
             "x_t": encode_float_rows(x_t), "target": encode_float_rows(target)}
        )  # fmt: skip
        pq.write_table(table, folder / f"part-{k}.parquet", row_group_size=5)
    emb = torch.randn(24, 2, 4, 6)
    encoded = EncodedRows(
        row_id=np.arange(123, 99, -1),  # positions differ from row ids
        mean=torch.zeros(24, *shape),
        std=torch.ones(24, *shape),
        emb=emb,
        n_captions=torch.full((24,), 2),
        null=torch.zeros(4, 6),
    )
    data = read_soft_targets(storage, shape, encoded=encoded)
    keys = sorted(expected)
    held = [data.x_t, data.target, data.t, data.group, data.cond_index]
    assert sum(x.nbytes for x in held) == len(keys) * bytes_per_example(shape, conditioned=True)
    assert data.cond is None and data.cond_table is emb  # shared, not copied per example
    idx = torch.arange(len(keys))
    cond = data.conditions(idx)
    for i, key in enumerate(keys):
        x_t, target, t, group, caption = expected[key]
        assert np.array_equal(data.x_t[i].numpy(), x_t)
        assert np.array_equal(data.target[i].numpy(), target)
        assert int(data.t[i]) == t and int(data.group[i]) == group
        assert torch.equal(cond[i], emb[123 - key[0], caption])


def test_bfloat16_soft_targets_round_trip_at_half_the_bytes(tmp_path) -> None:
    """distill.target_dtype=bfloat16: targets are written and held as bfloat16 (each value
    float32's nearest bfloat16), enter the loss as float32, and cost 2 bytes a value; reading
    them as float32 is one line naming the cause."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raydefense.data.tables import encode_float_rows, encode_target_rows, read_soft_targets
    from raydefense.defense.footprint import bytes_per_example
    from raydefense.errors import DataError
    from raydefense.layout import soft_targets_dir
    from raydefense.storage import Storage

    storage = Storage(str(tmp_path), "exp")
    folder = tmp_path / "exp" / soft_targets_dir("student")
    folder.mkdir(parents=True)
    shape = (1, 2, 3)
    rng = np.random.default_rng(1)
    x_t = rng.standard_normal((4, *shape)).astype(np.float32)
    target = rng.standard_normal((4, *shape)).astype(np.float32)
    table = pa.table(
        {"row_id": [3, 1, 2, 0], "draw": [0, 0, 0, 0], "shard": [1, 1, 0, 0], "t": [5, 6, 7, 8],
         "x_t": encode_float_rows(x_t), "target": encode_target_rows(target, "bfloat16")}
    )  # fmt: skip
    pq.write_table(table, folder / "part-0.parquet")
    data = read_soft_targets(storage, shape, target_dtype="bfloat16")
    order = [3, 1, 2, 0]  # row ids -> file positions, sorted by row id
    expected = torch.from_numpy(target[np.argsort(order)]).to(torch.bfloat16)
    assert data.target.dtype == torch.bfloat16 and torch.equal(data.target, expected)
    held = [data.x_t, data.target, data.t, data.group]
    assert sum(x.nbytes for x in held) == 4 * bytes_per_example(shape, False, target_bytes=2)
    with pytest.raises(DataError, match="target_dtype changed"):
        read_soft_targets(storage, shape)
