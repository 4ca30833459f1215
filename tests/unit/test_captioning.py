"""Prompt diversification's generated captions (`data.captioner`, paper section 3.1) with a tiny
random BLIP built offline: seeded per row, appended to a row's own captions, written by the
prepare stage into rows.parquet and the encoded text table; bad paths fail in one line."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import CAPTION_WORDS, random_images, tiny_blip

from raydefense.config import CaptionerConfig, DataConfig, load_config
from raydefense.data.captioning import generate_captions, load_captioner, with_generated_captions
from raydefense.data.encoded import read_encoded
from raydefense.data.plan import make_plan
from raydefense.data.pool import ImagePool
from raydefense.data.tables import read_plan
from raydefense.errors import ConfigError, DataError
from raydefense.pipeline import stage_prepare
from raydefense.run.context import RunContext
from raydefense.run.fingerprints import config_tree, stage_fingerprints
from raydefense.storage import Storage


@pytest.fixture(scope="module")
def blip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_blip(tmp_path_factory.mktemp("blip") / "model")


def pool(n: int, captions: bool = True) -> ImagePool:
    caps = [[f"image {i}"] for i in range(n)] if captions else None
    return ImagePool(images=random_images(n, 3, 8), labels=None, name="fake", captions=caps)


def test_captions_are_sampled_per_row_whatever_the_other_rows(blip: Path) -> None:
    cfg = CaptionerConfig(path=str(blip), num_captions=3, max_new_tokens=6)
    model, processor = load_captioner(cfg)
    images = random_images(3, 3, 8)
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = generate_captions(model, processor, images, np.array([3, 5, 7]), cfg, seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG is left as it was
    b = generate_captions(model, processor, images[[2, 0]], np.array([7, 3]), cfg, seed=0)
    assert b == [a[2], a[0]]
    assert [len(c) for c in a] == [3, 3, 3]
    words = {w for caps in a for c in caps for w in c.split()}
    assert words and words <= set(CAPTION_WORDS)
    other = generate_captions(model, processor, images, np.array([3, 5, 7]), cfg, seed=1)
    assert other != a  # another base seed, other draws
    grey = generate_captions(model, processor, images[:, :1], np.array([3]), cfg, seed=0)
    assert len(grey[0]) == 3  # a 1-channel image is captioned as RGB


def test_generated_captions_are_appended_to_a_rows_own(blip: Path) -> None:
    cfg = CaptionerConfig(path=str(blip), num_captions=2, max_new_tokens=4)
    data = DataConfig(num_members=8, num_nonmembers=8, prompt_diversification=True, captioner=cfg)
    plan = make_plan(pool(24), data, seed=0)  # one caption each: fine before the caption step
    out = with_generated_captions(plan, cfg, seed=0, device="cpu")
    assert all(len(c) == 3 for c in out.captions)
    assert [c[0] for c in out.captions] == [f"image {int(r)}" for r in plan.row_id]
    bare = with_generated_captions(make_plan(pool(24, False), data, 0), cfg, 0, "cpu")
    assert [c for c in bare.captions] == [c[1:] for c in out.captions]


def test_captioner_paths_fail_in_one_line(blip: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.captioner.path='/nowhere' is not a directory"):
        load_captioner(CaptionerConfig(path="/nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no loadable image-to-text model") as e:
        load_captioner(CaptionerConfig(path=str(tmp_path / "empty")))
    assert "\n" not in str(e.value)


def test_captioner_config_and_fingerprints(blip: Path) -> None:
    with pytest.raises(ConfigError, match="data.captioner writes captions for a text-cond"):
        load_config("smoke", overrides=[f"data.captioner.path={blip}"])
    off = load_config("tiny_t2i")
    on = load_config("tiny_t2i", overrides=[f"data.captioner.path={blip}"])
    assert "captioner" not in config_tree(off)["data"]  # earlier runs keep their fingerprints
    assert on.data.captioner is not None and on.data.captioner.num_captions == 5
    assert stage_fingerprints(on)["prepare"] != stage_fingerprints(off)["prepare"]


@pytest.fixture
def tiny_pipeline(tiny_cache: Path) -> Iterator[None]:
    old = os.environ.get("RAYDEFENSE_CACHE")
    os.environ["RAYDEFENSE_CACHE"] = str(tiny_cache)
    yield
    if old is None:
        del os.environ["RAYDEFENSE_CACHE"]
    else:
        os.environ["RAYDEFENSE_CACHE"] = old


def test_prepare_writes_generated_captions_into_rows_and_encodings(
    blip: Path, tmp_path: Path, tiny_pipeline: None
) -> None:
    cfg = load_config(
        "tiny_t2i",
        overrides=[
            f"storage.root={tmp_path / 'runs'}",
            "data.num_members=8",
            "data.num_nonmembers=8",
            "attacks.enabled=[loss]",
            "data.prompt_diversification=true",
            f"data.captioner.path={blip}",
            "data.captioner.num_captions=2",
            "data.captioner.max_new_tokens=5",
        ],
    )
    storage = Storage(cfg.storage.root, cfg.experiment)
    stage_prepare(RunContext(cfg=cfg, storage=storage))
    plan = read_plan(storage)
    own = len(plan.captions[0]) - 2
    assert own >= 5 and all(len(c) == own + 2 for c in plan.captions)  # digits_captioned's + 2
    assert plan.captions[0][0].startswith("a handwritten digit")
    encoded = read_encoded(storage)
    assert encoded.emb.shape[:2] == (len(plan.row_id), own + 2)
    by_row = dict(zip(plan.row_id.tolist(), plan.captions))
    assert encoded.captions == [by_row[r] for r in encoded.row_id.tolist()]
