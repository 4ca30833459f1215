"""Soft-target inputs regenerated from their seeds (distill.store_x_t=false): the student's x_t
are the labeller's bit for bit, for pixel and latent families, and the reader rebuilds them from
real Parquet files holding only the keys."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raydefense.data.examples import SoftTargetData
from raydefense.data.pool import image_column
from raydefense.data.tables import encode_float_rows, read_soft_targets
from raydefense.defense.distillmd import SoftTargetLabeller
from raydefense.defense.footprint import bytes_per_example
from raydefense.diffusion.noising import RegeneratedInputs
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import DataError
from raydefense.layout import ROWS, public_rows, soft_targets_dir
from raydefense.storage import Storage

SCHED = NoiseSchedule()


class Teacher:
    """eps = a fixed function of (x, t, cond), so targets depend on every input."""

    def __call__(self, x, t, cond=None):
        out = 0.5 * x + t.view(-1, *[1] * (x.dim() - 1)).float() / 1000
        return out if cond is None else out + cond.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def pixel_rows(ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [R, 1, 4, 4] and the labeller's float view of them."""
    u8 = np.random.default_rng(3).integers(0, 256, (len(ids), 1, 4, 4), dtype=np.uint8)
    return u8, u8.astype(np.float32) / 127.5 - 1.0


def label(rows: dict, draws: int, diversify: bool = False, seed: int = 5) -> dict:
    owners = {int(r): frozenset({"teacher_1"}) for r in rows["row_id"]}
    labeller = SoftTargetLabeller(
        {"teacher_1": Teacher(), "teacher_2": Teacher()},
        owners,
        SCHED,
        draws,
        seed,
        diversify=diversify,
    )
    return labeller(rows)


@pytest.mark.parametrize("latent", [False, True])
def test_the_student_regenerates_the_labellers_x_t_bit_for_bit(latent: bool) -> None:
    ids = [40, 7, 23]
    draws = 4
    rows: dict = {"row_id": np.array(ids), "shard": np.zeros(3, dtype=np.int64)}
    g = torch.Generator().manual_seed(0)
    if latent:
        x0 = torch.randn(3, 4, 2, 2, generator=g)
        std = torch.rand(3, 4, 2, 2, generator=g)
        n_caps = np.array([3, 1, 2])
        rows.update(
            latent_mean=x0.numpy(),
            latent_std=std.numpy(),
            emb=torch.randn(3, 3, 2, 5, generator=g).numpy(),
            n_captions=n_caps,
        )
    else:
        x0 = torch.from_numpy(pixel_rows(ids)[1])
        std, n_caps = None, None
        rows["image"] = x0.numpy()
    out = label(rows, draws, diversify=latent)
    pos = np.repeat(np.arange(3), draws)
    regen = RegeneratedInputs(
        5, SCHED, x0, pos, out["row_id"], out["draw"], out["t"],
        std=std, n_captions=n_caps, caption=out.get("caption"), diversify=latent,
    )  # fmt: skip
    idx = torch.randperm(len(pos), generator=g)  # any batch, any order
    assert torch.equal(regen(idx), torch.from_numpy(out["x_t"])[idx])
    if latent:
        assert len(set(out["caption"].tolist())) > 1  # diversification drew several captions

    stale = RegeneratedInputs(
        6, SCHED, x0, pos, out["row_id"], out["draw"], out["t"],
        std=std, n_captions=n_caps, caption=out.get("caption"), diversify=latent,
    )  # fmt: skip
    with pytest.raises(DataError, match="--force distill"):
        stale(idx)


def test_soft_target_data_needs_x_t_or_a_regenerator() -> None:
    t = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        SoftTargetData(x_t=None, t=t, target=torch.zeros(2, 1), group=t)


def test_keys_only_soft_targets_read_back_with_their_inputs(tmp_path) -> None:
    """A pixel student's soft targets without x_t (the default): the reader finds each row's
    image in the rows table or the student's public rows, once per row, and the x_t it
    regenerates are the labeller's; a missing source row is one line naming the fix."""
    storage = Storage(str(tmp_path), "exp")
    plan_ids, public_ids = [3, 9, 12], [50, 51]
    u8, _ = pixel_rows(plan_ids + public_ids)
    storage.write_table(ROWS, pa.table({"row_id": plan_ids + [99], "image": image_column(
        np.concatenate([u8[:3], u8[:1]]))}))  # fmt: skip
    storage.write_table(public_rows(), pa.table({"row_id": public_ids, "image": image_column(
        u8[3:])}))  # fmt: skip
    draws = 3
    out = label(
        {
            "row_id": np.array(plan_ids + public_ids),
            "shard": np.array([0, 1, 0, 1, 0]),
            "image": u8.astype(np.float32) / 127.5 - 1.0,
        },
        draws,
    )
    folder = tmp_path / "exp" / soft_targets_dir()
    folder.mkdir(parents=True)
    order = np.random.default_rng(0).permutation(len(out["t"]))  # files in any order
    for k, part in enumerate(np.array_split(order, 2)):
        table = pa.table({"row_id": out["row_id"][part], "draw": out["draw"][part],
                          "shard": out["shard"][part], "t": out["t"][part],
                          "target": encode_float_rows(out["target"][part])})  # fmt: skip
        pq.write_table(table, folder / f"part-{k}.parquet")
    with pytest.raises(ValueError, match="noising"):
        read_soft_targets(storage, (1, 4, 4))
    data = read_soft_targets(storage, (1, 4, 4), noising=(5, SCHED, False))
    assert data.x_t is None
    keys = np.lexsort((out["draw"], out["row_id"]))
    every = torch.arange(len(keys))
    assert torch.equal(data.inputs(every), torch.from_numpy(out["x_t"][keys]))
    assert torch.equal(data.target, torch.from_numpy(out["target"][keys]))
    regen = data.regenerate
    assert isinstance(regen, RegeneratedInputs) and len(regen.x0) == 5  # once per row
    held = [data.target, data.t, data.group, *(torch.from_numpy(a) for a in (regen.pos,
            regen.row_id, regen.draw))]  # fmt: skip
    per_example = bytes_per_example((1, 4, 4), conditioned=False, store_x_t=False)
    assert sum(x.nbytes for x in held) == len(keys) * per_example

    storage.delete(public_rows())
    with pytest.raises(DataError, match="row 50 first.*--force distill"):
        read_soft_targets(storage, (1, 4, 4), noising=(5, SCHED, False))


def test_targets_held_on_disk_are_the_targets_held_in_ram(tmp_path, monkeypatch) -> None:
    """distill.disk_dir: the student's targets are mapped from a file there (unlinked at once:
    nothing is left behind) and read back the same bytes; a disk without the room is one line
    before anything is written."""
    import errno
    import os

    from raydefense.data.tables import targets_buffer
    from raydefense.errors import ResourceError

    storage = Storage(str(tmp_path), "exp")
    folder = tmp_path / "exp" / soft_targets_dir()
    folder.mkdir(parents=True)
    target = np.random.default_rng(2).standard_normal((6, 2, 3, 3)).astype(np.float32)
    table = pa.table({"row_id": [5, 4, 3, 2, 1, 0], "draw": [0] * 6, "shard": [0, 1] * 3,
                      "t": [9] * 6, "x_t": encode_float_rows(target),
                      "target": encode_float_rows(target)})  # fmt: skip
    pq.write_table(table, folder / "part-0.parquet")
    spill = tmp_path / "spill"
    spill.mkdir()
    in_ram = read_soft_targets(storage, (2, 3, 3))
    on_disk = read_soft_targets(storage, (2, 3, 3), disk_dir=str(spill))
    assert torch.equal(on_disk.target, in_ram.target) and list(spill.iterdir()) == []
    half = targets_buffer((4, 5), torch.bfloat16, str(spill))
    half[:] = torch.arange(20.0).view(4, 5)
    assert half.dtype == torch.bfloat16 and float(half[3, 4]) == 19.0

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ResourceError, match="disk_dir=.*GiB free.*target_dtype=bfloat16"):
        read_soft_targets(storage, (2, 3, 3), disk_dir=str(spill))
    assert list(spill.iterdir()) == []
    with pytest.raises(ResourceError, match="not a writable directory"):
        targets_buffer((2,), torch.float32, str(tmp_path / "missing"))
