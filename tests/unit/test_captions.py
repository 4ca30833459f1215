"""Captioned images through the data layer: parquet (Hugging Face layout, list captions, extra
captions), imagefolder metadata, digits_captioned, the plan's captions and the caption checks."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import png_bytes, random_images
from PIL import Image

from raydefense.config import DataConfig, load_config
from raydefense.data.plan import check_captions, make_plan, plan_from_tables
from raydefense.data.pool import DATASETS, ImagePool
from raydefense.errors import DataError

ROWS_COLUMNS = ["row_id", "hash", "split", "shard", "part", "label", "image"]


def load(name: str, root, **kw) -> ImagePool:
    return DATASETS.get(name)(DataConfig(source=name, root=str(root), **kw))


def captioned_pool(n: int, extras: int = 1) -> ImagePool:
    """n distinct 1x2x2 images whose captions name their pool index."""
    imgs = np.zeros((n, 1, 2, 2), np.uint8)
    imgs.reshape(n, -1)[:, 0] = np.arange(n) % 256
    imgs.reshape(n, -1)[:, 1] = np.arange(n) // 256
    caps = [[f"image {i}"] + [f"extra {j} of {i}" for j in range(extras)] for i in range(n)]
    return ImagePool(images=imgs, labels=np.arange(n, dtype=np.int64), name="fake", captions=caps)


# ----------------------------------------------------------------------------- ImagePool


def test_image_pool_validates_caption_lists():
    imgs = np.zeros((2, 1, 2, 2), np.uint8)
    ImagePool(images=imgs, labels=None, name="x", captions=[["a"], ["b", "c"]])
    with pytest.raises(ValueError, match="one list of captions per image"):
        ImagePool(images=imgs, labels=None, name="x", captions=[["a"]])
    with pytest.raises(ValueError, match=r"captions\[1\] is str"):
        ImagePool(images=imgs, labels=None, name="x", captions=[["a"], "b"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"captions\[0\] is list .*non-empty"):
        ImagePool(images=imgs, labels=None, name="x", captions=[[], ["b"]])
    with pytest.raises(ValueError, match=r"captions\[1\] holds NoneType None, not a str"):
        ImagePool(images=imgs, labels=None, name="x", captions=[["a"], ["b", None]])  # type: ignore[list-item]


# ----------------------------------------------------------------------------- parquet


def test_parquet_hugging_face_layout(tmp_path):
    """lambdalabs/pokemon-blip-captions: image = struct {bytes, path}, captions in `text`."""
    images = random_images(4, side=8, seed=1)
    texts = ["a red pokemon", "a blue bird", "a green frog", "a yellow mouse"]
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": png_bytes(im), "path": f"{i}.png"} for i, im in enumerate(images)]
            ),
            "text": texts,
        }
    )
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    pool = load("parquet", tmp_path, caption_column="text")
    assert np.array_equal(pool.images, images) and pool.labels is None
    assert pool.captions == [[t] for t in texts]
    assert load("parquet", tmp_path).captions is None  # no caption_column: no captions


def test_parquet_list_captions_and_extra_column(tmp_path):
    images = random_images(3, side=4, seed=2)
    table = pa.table(
        {
            "image": [png_bytes(im) for im in images],
            "caps": pa.array([["a", "a2"], ["b"], ["c", "c2", "c3"]], pa.list_(pa.string())),
            "orig": ["A", "B", "C"],
            "blip": pa.array([["blip a"], None, ["blip c", "blip c2"]], pa.list_(pa.string())),
            "one": pa.array(["x", None, "z"], pa.large_string()),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    pool = load("parquet", tmp_path / "t.parquet", caption_column="caps")
    assert pool.captions == [["a", "a2"], ["b"], ["c", "c2", "c3"]]
    pool = load(
        "parquet", tmp_path / "t.parquet", caption_column="orig", extra_caption_column="blip"
    )
    assert pool.captions == [["A", "blip a"], ["B"], ["C", "blip c", "blip c2"]]
    pool = load(
        "parquet", tmp_path / "t.parquet", caption_column="caps", extra_caption_column="one"
    )
    assert pool.captions == [["a", "a2", "x"], ["b"], ["c", "c2", "c3", "z"]]
    with pytest.raises(DataError, match="extra_caption_column='blip'.*set data.caption_column"):
        load("parquet", tmp_path / "t.parquet", extra_caption_column="blip")
    with pytest.raises(DataError, match="no column 'nope'.*data.extra_caption_column"):
        load("parquet", tmp_path / "t.parquet", caption_column="orig", extra_caption_column="nope")


def test_parquet_caption_errors(tmp_path):
    images = random_images(3, side=4, seed=3)
    table = pa.table(
        {
            "image": [png_bytes(im) for im in images],
            "text": ["a", None, "c"],
            "text2": ["a", "b", "c"],
            "lists": pa.array([["a"], [], ["c"]], pa.list_(pa.string())),
            "holes": pa.array([["a"], ["b", None], ["c"]], pa.list_(pa.string())),
            "num": [1, 2, 3],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    path = tmp_path / "t.parquet"
    with pytest.raises(DataError, match="caption column 'text' row 1 is null: every image needs"):
        load("parquet", path, caption_column="text")
    with pytest.raises(DataError, match="'lists' row 1 is an empty list: every image needs"):
        load("parquet", path, caption_column="lists")
    with pytest.raises(DataError, match="'holes' row 1 holds a null caption"):
        load("parquet", path, caption_column="holes")
    with pytest.raises(DataError, match="'holes' row 1 holds a null caption"):
        load("parquet", path, caption_column="text2", extra_caption_column="holes")
    with pytest.raises(DataError, match="caption column 'num' is int64, not strings"):
        load("parquet", path, caption_column="num")


# ----------------------------------------------------------------------------- imagefolder


def write_folder(root, names, classes=False):
    """Small distinct PNGs at root/<name>; returns their pixels by name."""
    out = {}
    for i, name in enumerate(names):
        im = random_images(1, side=4, seed=10 + i)[0]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im.transpose(1, 2, 0)).save(root / name)
        out[name] = im
    return out


def test_imagefolder_metadata_jsonl(tmp_path):
    write_folder(tmp_path, ["a.png", "b.png", "c.png"])
    lines = [
        {"file_name": "b.png", "text": "a bee"},
        {"file_name": "a.png", "text": "an apple"},
        {"file_name": "./b.png", "text": "a buzzing bee"},  # a second line: another caption
        {"file_name": "c.png", "text": ["a cat", "a kitten"], "blip": "a small cat"},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    pool = load("imagefolder", tmp_path)
    assert pool.images.shape == (3, 3, 4, 4)  # metadata.jsonl is not read as an image
    assert pool.captions == [["an apple"], ["a bee", "a buzzing bee"], ["a cat", "a kitten"]]
    pool = load("imagefolder", tmp_path, extra_caption_column="blip")
    assert pool.captions[2] == ["a cat", "a kitten", "a small cat"]
    # class subfolders: file_name is relative to data.root with forward slashes
    d = tmp_path / "classes"
    write_folder(d, ["cats/x.png", "dogs/y.png"])
    (d / "metadata.jsonl").write_text(
        json.dumps({"file_name": "dogs/y.png", "caption": "a dog"})
        + "\n"
        + json.dumps({"file_name": "cats/x.png", "caption": "a cat"})
        + "\n"
    )
    pool = load("imagefolder", d, caption_column="caption")
    assert pool.labels.tolist() == [0, 1] and pool.captions == [["a cat"], ["a dog"]]


def test_imagefolder_metadata_csv(tmp_path):
    write_folder(tmp_path, ["a.png", "b.png"])
    (tmp_path / "metadata.csv").write_text(
        'file_name,text\na.png,"an apple, red"\nb.png,"[""a bee"", ""a wasp""]"\na.png,a fruit\n'
    )
    pool = load("imagefolder", tmp_path)
    assert pool.images.shape == (2, 3, 4, 4)
    assert pool.captions == [["an apple, red", "a fruit"], ["a bee", "a wasp"]]


def test_imagefolder_without_metadata_has_no_captions(tmp_path):
    write_folder(tmp_path, ["a.png"])
    assert load("imagefolder", tmp_path).captions is None


def test_imagefolder_metadata_errors(tmp_path):
    write_folder(tmp_path, ["a.png", "b.png"])
    meta = tmp_path / "metadata.jsonl"
    meta.write_text(json.dumps({"file_name": "a.png", "text": "an apple"}) + "\n")
    with pytest.raises(DataError, match="image 'b.png' .* has no caption in metadata.jsonl; add"):
        load("imagefolder", tmp_path)
    meta.write_text(
        "\n".join(json.dumps({"file_name": f, "text": "x"}) for f in ("a.png", "b.png", "gone.png"))
    )
    with pytest.raises(DataError, match="metadata.jsonl line 3 .* names 'gone.png', which is not"):
        load("imagefolder", tmp_path)
    meta.write_text(json.dumps({"file_name": "a.png"}) + "\n")
    with pytest.raises(DataError, match="line 1 .* has no caption 'text' for 'a.png'"):
        load("imagefolder", tmp_path)
    meta.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match="line 1 .* has no file_name"):
        load("imagefolder", tmp_path)
    meta.write_text("{not json\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        load("imagefolder", tmp_path)
    meta.write_text(json.dumps({"file_name": "a.png", "text": 3}) + "\n")
    with pytest.raises(DataError, match="'text' is int 3; expected a caption string"):
        load("imagefolder", tmp_path)
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,x\nb.png,y\n")
    with pytest.raises(DataError, match="both metadata.jsonl and metadata.csv; keep one"):
        load("imagefolder", tmp_path)
    meta.unlink()
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,x\nb.png,\n")
    with pytest.raises(DataError, match="metadata.csv line 3 .* no caption 'text' for 'b.png'"):
        load("imagefolder", tmp_path)


# ----------------------------------------------------------------------------- digits_captioned


def test_digits_captioned():
    pool = DATASETS.get("digits_captioned")(DataConfig(source="digits_captioned"))
    digits = DATASETS.get("digits")(DataConfig(resolution=32))
    assert pool.images.shape == (1797, 3, 32, 32) and pool.images.dtype == np.uint8
    assert np.array_equal(pool.images[:, 0], digits.images[:, 0])  # grey replicated to RGB
    assert np.array_equal(pool.images[:, 0], pool.images[:, 2])
    assert np.array_equal(pool.labels, digits.labels)
    assert len(pool.captions) == 1797 and len({len(c) for c in pool.captions}) == 1
    assert len(pool.captions[0]) >= 5
    seven = pool.captions[int(np.flatnonzero(pool.labels == 7)[0])]
    assert seven[0] == "a handwritten digit seven" and "a photo of the number 7" in seven
    assert len(set(seven)) == len(seven)
    again = DATASETS.get("digits_captioned")(DataConfig(source="digits_captioned"))
    assert again.captions == pool.captions and np.array_equal(again.images, pool.images)
    small = DATASETS.get("digits_captioned")(DataConfig(resolution=16))
    assert small.images.shape == (1797, 3, 16, 16)
    check_captions(DataConfig(prompt_diversification=True), pool, needs_captions=True)


# ----------------------------------------------------------------------------- plan


def test_plan_keeps_captions_aligned_and_round_trips():
    pool = captioned_pool(120)
    cfg = DataConfig(num_members=40, num_nonmembers=30)
    plan = make_plan(pool, cfg, seed=4, num_shadows=1, shadow_members=20)
    assert plan.captions is not None and len(plan.captions) == len(plan.row_id)
    for r, caps in zip(plan.row_id, plan.captions):
        assert caps == pool.captions[r]
    assert plan.summary()["captions_per_image"] == [2, 2]
    table = plan.to_table()
    assert table.column_names == [*ROWS_COLUMNS, "captions"]
    assert table.schema.field("captions").type == pa.list_(pa.string())
    back = plan_from_tables(
        table, plan.membership_table(), list(plan.images.shape[1:]), plan.shadow_draws_table()
    )
    assert back.captions == plan.captions
    assert back.to_table().equals(table)


def test_plan_captions_survive_duplicate_drops():
    pool = captioned_pool(60)
    pool.images[5] = pool.images[6]
    pool.images[7] = pool.images[6]
    dropped = 0
    for seed in range(5):
        plan = make_plan(pool, DataConfig(on_duplicate="drop"), seed=seed)
        dropped += plan.duplicates_dropped
        assert len(plan.captions) == len(plan.row_id)
        assert all(c == pool.captions[r] for r, c in zip(plan.row_id, plan.captions))
    assert dropped > 0


def test_plan_without_captions_is_unchanged():
    pool = captioned_pool(40)
    bare = ImagePool(images=pool.images, labels=pool.labels, name="fake")
    plan = make_plan(bare, DataConfig(), seed=0)
    assert plan.captions is None and "captions_per_image" not in plan.summary()
    assert plan.to_table().column_names == ROWS_COLUMNS
    back = plan_from_tables(plan.to_table(), plan.membership_table(), [1, 2, 2])
    assert back.captions is None
    # the captioned plan's rows table differs only by the extra column
    with_caps = make_plan(pool, DataConfig(), seed=0)
    assert with_caps.to_table().drop_columns(["captions"]).equals(plan.to_table())


# ----------------------------------------------------------------------------- checks + config


def test_check_captions_errors():
    cfg = DataConfig(source="cifar10")
    check_captions(cfg, None, needs_captions=False)
    with pytest.raises(DataError, match="data.source='cifar10' gives no captions; a text-cond"):
        check_captions(cfg, None, needs_captions=True)
    bare = ImagePool(images=np.zeros((1, 1, 2, 2), np.uint8), labels=None, name="x")
    with pytest.raises(DataError, match="set data.caption_column"):
        check_captions(cfg, bare, needs_captions=True)
    div = DataConfig(prompt_diversification=True)
    with pytest.raises(DataError, match="prompt_diversification=true but .* gives no captions"):
        check_captions(div, None, needs_captions=False)
    caps = [["a", "a2"], ["b"], ["c"]]
    check_captions(DataConfig(), caps, needs_captions=True)  # no diversification: one is enough
    with pytest.raises(
        DataError,
        match=r"pool index 1 has only its original caption \('b'\); supply extra captions.*"
        "data.prompt_diversification=false",
    ):
        check_captions(div, caps, needs_captions=True)
    check_captions(div, captioned_pool(3), needs_captions=True)


def test_make_plan_checks_diversification():
    pool = captioned_pool(40)
    pool.captions[17] = ["only one"]
    plain = make_plan(pool, DataConfig(), seed=0)  # diversification off: fine
    with pytest.raises(DataError, match=r"plan row \d+ \(pool index 17\) has only its original"):
        make_plan(pool, DataConfig(prompt_diversification=True), seed=0)
    with pytest.raises(DataError, match=r"plan row \d+ \(pool index 17\)"):
        check_captions(DataConfig(prompt_diversification=True), plain, needs_captions=True)
    fine = make_plan(captioned_pool(40), DataConfig(prompt_diversification=True), seed=0)
    assert fine.summary()["captions_per_image"] == [2, 2]


def test_new_data_fields_keep_fingerprints():
    from raydefense.run.fingerprints import config_tree, stage_fingerprints

    cfg = load_config("digits")
    assert cfg.data.prompt_diversification is False and cfg.data.extra_caption_column is None
    data = config_tree(cfg)["data"]
    assert "prompt_diversification" not in data and "extra_caption_column" not in data
    sd = ["model.kind=sd", "model.pipeline=tiny"]  # diversification needs a text model
    off = load_config("digits", overrides=sd)
    on = load_config("digits", overrides=[*sd, "data.prompt_diversification=true"])
    assert config_tree(on)["data"]["prompt_diversification"] is True
    assert stage_fingerprints(on)["prepare"] != stage_fingerprints(off)["prepare"]
