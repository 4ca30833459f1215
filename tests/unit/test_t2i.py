"""The text-to-image path without Ray: the tiny offline SD pipeline, the `sd` backbone and its
codec, encoded rows, latent training batches (prompt diversification), latent soft targets,
classifier-free guidance under DualMD, the public interface and the black-box attacks on it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch

from raydefense.attacks.base import ColumnAttack, PublicQuery, QueryAttack, TextQueryAttack
from raydefense.attacks.pang_wang import PangWang
from raydefense.attacks.rediffuse import ReDiffuse
from raydefense.attacks.similarity import mse, ssim
from raydefense.audit.interface import SamplerInterface
from raydefense.audit.targets import build_attacks
from raydefense.config import ExperimentConfig, ModelConfig, SamplingConfig, load_config
from raydefense.data.encoded import model_training_latents, read_encoded, write_encoded
from raydefense.data.examples import LatentData
from raydefense.defense.distillmd import SoftTargetLabeller
from raydefense.diffusion.backbones import build_net, data_shape, load_net
from raydefense.diffusion.backbones.sd import SDCodec, check_scheduler, pipeline_dir
from raydefense.diffusion.sampling import ddim_path, sample
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.tiny_sd import TOKEN_LENGTH
from raydefense.diffusion.training import BatchSource
from raydefense.errors import ConfigError, PrivacyInvariantError
from raydefense.families import SDConfig, UNet2DConfig
from raydefense.storage import Storage

SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


@pytest.fixture(scope="module")
def sd_cfg(tiny_cache: Path) -> Iterator[ModelConfig]:
    """model.pipeline=tiny, built once per test session (conftest's tiny_cache)."""
    old = os.environ.get("RAYDEFENSE_CACHE")
    os.environ["RAYDEFENSE_CACHE"] = str(tiny_cache)
    try:
        yield SDConfig(pipeline="tiny", **SD_SCHEDULE)
    finally:
        if old is None:
            del os.environ["RAYDEFENSE_CACHE"]
        else:
            os.environ["RAYDEFENSE_CACHE"] = old


@pytest.fixture(scope="module")
def codec(sd_cfg: ModelConfig) -> SDCodec:
    return SDCodec(sd_cfg)


# ----------------------------------------------------------------------------- the pipeline


def test_tiny_pipeline_has_sd_layout_and_a_byte_level_tokenizer(
    sd_cfg: ModelConfig, codec: SDCodec
) -> None:
    path = pipeline_dir(sd_cfg)
    with open(os.path.join(path, "model_index.json")) as f:
        index = json.load(f)
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    ids = codec.token_ids(["ab c", ""])
    assert ids.shape == (2, TOKEN_LENGTH)
    # every character is one token: start, a, b, c</w> ... (the space ends a word)
    body = [i for i in ids[0].tolist()[1:] if i != codec.end_id]
    assert len(body) == 3
    assert ids[1, 1].item() == codec.end_id  # the empty prompt is start + end/padding


def test_tiny_vae_is_trained_on_photos_and_reconstructs_digits(codec: SDCodec) -> None:
    """The tiny VAE never saw digits (it trains on crops of scikit-learn's sample photos), yet
    decodes their latents back to the image; a random VAE's reconstruction error is ~0.6."""
    from raydefense.config import DataConfig
    from raydefense.data.sources import load_digits_captioned

    pool = load_digits_captioned(DataConfig(source="digits_captioned"))
    x = torch.from_numpy(pool.images[:128]).float() / 127.5 - 1.0
    mean, std = codec.latent_moments(x)
    assert float(std.max()) < 0.01 * float(mean.std())  # a near-deterministic posterior
    assert 0.5 < float(mean.std()) < 2.5  # scaled to about unit variance
    mse = float((codec.decode(mean) - x).pow(2).mean())
    assert mse < 0.02, mse


def test_pipeline_dir_errors_name_the_missing_component(sd_cfg: ModelConfig, tmp_path: Any) -> None:
    broken = tmp_path / "sd"
    shutil.copytree(pipeline_dir(sd_cfg), broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConfigError, match=r"has no vae/.*StableDiffusionPipeline.save_pretrained"):
        pipeline_dir(SDConfig(pipeline=str(broken), **SD_SCHEDULE))
    with pytest.raises(ConfigError, match="is not a directory"):
        pipeline_dir(SDConfig(pipeline=str(tmp_path / "nowhere"), **SD_SCHEDULE))
    with pytest.raises(ValueError, match="set model.pipeline"):
        SDConfig()


def test_scheduler_must_match_the_config_and_predict_eps(
    sd_cfg: ModelConfig, tmp_path: Any
) -> None:
    path = pipeline_dir(sd_cfg)
    check_scheduler(sd_cfg, path)
    wrong = SDConfig(pipeline="tiny", **{**SD_SCHEDULE, "beta_schedule": "linear"})
    with pytest.raises(ConfigError, match="model.beta_schedule='linear' but the pipeline"):
        check_scheduler(wrong, path)
    vpred = tmp_path / "sd"
    shutil.copytree(path, vpred)
    sched = vpred / "scheduler" / "scheduler_config.json"
    conf = json.loads(sched.read_text())
    sched.write_text(json.dumps({**conf, "prediction_type": "v_prediction"}))
    with pytest.raises(ConfigError, match="predicts 'v_prediction'"):
        check_scheduler(sd_cfg, str(vpred))


def test_scaled_linear_schedule_matches_diffusers(sd_cfg: ModelConfig) -> None:
    from diffusers import DDPMScheduler

    ours = NoiseSchedule.of(sd_cfg).alphas_cumprod
    theirs = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.allclose(ours, theirs.alphas_cumprod, atol=1e-6)


# ----------------------------------------------------------------------------- backbone, codec


def test_sd_backbone_is_conditional_and_round_trips(sd_cfg: ModelConfig, tmp_path: Any) -> None:
    assert data_shape(sd_cfg, (3, 32, 32)) == (4, 16, 16)
    with pytest.raises(ConfigError, match="multiple of 2"):
        data_shape(sd_cfg, (3, 31, 31))
    net = build_net(sd_cfg, (3, 32, 32)).eval()
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([10, 500])
    cond = torch.randn(2, TOKEN_LENGTH, 32)
    out = net(x, t, cond)
    assert out.shape == x.shape
    assert not torch.allclose(out, net(x, t, torch.randn_like(cond)))  # cond matters
    with pytest.raises(ValueError, match="needs cond"):
        net(x, t)
    net.save(str(tmp_path / "ema"))
    back = load_net(sd_cfg, str(tmp_path), "ema")
    assert torch.allclose(back(x, t, cond), out, atol=1e-6)


def test_codec_shapes(codec: SDCodec) -> None:
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    mean, std = codec.latent_moments(images)
    assert mean.shape == std.shape == (3, 4, 16, 16)
    assert float(std.max()) < 0.05 * float(mean.std())  # a near-deterministic posterior
    out = codec.decode(mean)
    assert out.shape == (3, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    assert codec.embed(["a digit", ""]).shape == (2, TOKEN_LENGTH, 32)
    with pytest.raises(ValueError, match="RGB"):
        codec.latent_moments(torch.zeros(1, 1, 32, 32))


# ----------------------------------------------------------------------------- encoded rows


def _encoded(n: int = 6, k: int = 3, seed: int = 0) -> tuple[np.ndarray, Any]:
    g = torch.Generator().manual_seed(seed)
    rows = np.arange(100, 100 + n, dtype=np.int64)
    captions = [[f"c{r}-{j}" for j in range(1 + (r % k))] for r in rows.tolist()]
    embs = [torch.randn(len(c), 4, 8, generator=g) for c in captions]
    mean, std = torch.randn(n, 4, 2, 2, generator=g), torch.rand(n, 4, 2, 2, generator=g) * 0.1
    return rows, (mean, std, captions, embs, torch.randn(4, 8, generator=g))


def test_encoded_tables_round_trip(tmp_path: Any) -> None:
    storage = Storage(str(tmp_path), "exp")
    rows, (mean, std, captions, embs, null) = _encoded()
    write_encoded(storage, rows, mean, std, captions, embs, null)
    enc = read_encoded(storage)
    assert np.array_equal(enc.row_id, rows) and torch.equal(enc.mean, mean)
    assert torch.equal(enc.null, null) and enc.captions == captions
    assert enc.n_captions.tolist() == [len(c) for c in captions]
    for i, e in enumerate(embs):
        assert torch.equal(enc.emb[i, : len(e)], e)
    sub = enc.take(rows[[4, 1]])
    assert sub.captions == [captions[4], captions[1]] and torch.equal(sub.std, std[[4, 1]])
    # a row's latent draw does not depend on its batch
    both = enc.sample_latents(rows[[1, 4]], 0, 10)
    assert torch.equal(both[1], enc.sample_latents(rows[[4]], 0, 10)[0])


def test_latent_batches_are_deterministic_and_diversify_captions(tmp_path: Any) -> None:
    storage = Storage(str(tmp_path), "exp")
    rows, parts = _encoded(n=8, k=4)
    write_encoded(storage, rows, *parts)
    enc = read_encoded(storage)
    sched = NoiseSchedule()

    def batches(diversify: bool) -> list[tuple[Optional[torch.Tensor], ...]]:
        data = model_training_latents(enc, rows, diversify)
        src = BatchSource(data, sched, 64, 0, 1, seed=3, model_index=1)
        return [src.batch(s) for s in range(20)]

    plain, div = batches(False), batches(True)
    for a, b in zip(plain, batches(False)):
        assert all(torch.equal(x, y) for x, y in zip(a, b) if x is not None)
    # without diversification every condition is caption 0 of its row; with it, any valid one
    emb0 = {tuple(enc.emb[i, 0].flatten().tolist()) for i in range(len(rows))}
    valid = {
        tuple(enc.emb[i, j].flatten().tolist())
        for i in range(len(rows))
        for j in range(int(enc.n_captions[i]))
    }
    assert {tuple(c.flatten().tolist()) for b in plain for c in b[3]} <= emb0  # type: ignore[union-attr]
    used = {tuple(c.flatten().tolist()) for b in div for c in b[3]}  # type: ignore[union-attr]
    assert used <= valid and len(used - emb0) > 0
    # diversification draws the caption after (t, noise, posterior): those are unchanged
    assert all(torch.equal(a[i], b[i]) for a, b in zip(plain, div) for i in range(3))  # type: ignore[arg-type]


def test_latent_data_rejects_rows_without_captions() -> None:
    from raydefense.data.encoded import EncodedRows

    enc = EncodedRows(
        np.array([1, 2]),
        torch.zeros(2, 4, 2, 2),
        torch.zeros(2, 4, 2, 2),
        torch.zeros(2, 1, 3, 5),
        torch.tensor([1, 0]),
        torch.zeros(3, 5),
    )
    with pytest.raises(ValueError, match="at least one caption"):
        model_training_latents(enc, np.array([1, 2]), False)
    assert isinstance(model_training_latents(enc, np.array([1]), True), LatentData)


# ----------------------------------------------------------------------------- soft targets


class CondRecorder:
    """eps = 0.1 * x_t + mean of cond (per item); records the conds it saw."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        assert cond is not None and cond.shape[0] == x.shape[0]
        self.seen.append(cond)
        return 0.1 * x + cond.mean(dim=(1, 2))[:, None, None, None]


def test_latent_soft_targets_keep_the_invariant_and_carry_the_caption() -> None:
    rows = np.array([5, 6, 7, 8])
    n_caps = np.array([1, 2, 3, 4])
    emb = torch.randn(4, 4, 3, 2)
    batch = {
        "row_id": rows,
        "shard": np.array([0, 0, 1, 1]),
        "latent_mean": np.random.default_rng(0).standard_normal((4, 4, 2, 2)).astype(np.float32),
        "latent_std": np.full((4, 4, 2, 2), 0.01, dtype=np.float32),
        "emb": emb.numpy(),
        "n_captions": n_caps,
    }
    owners = {5: frozenset({"teacher_1"}), 6: frozenset({"teacher_1"})}
    owners |= {7: frozenset({"teacher_2"}), 8: frozenset({"teacher_2"})}
    teachers = {"teacher_1": CondRecorder(), "teacher_2": CondRecorder()}

    def label(diversify: bool) -> dict[str, np.ndarray]:
        lab = SoftTargetLabeller(teachers, owners, NoiseSchedule(), 6, 0, diversify=diversify)
        return lab(batch)

    out = label(True)
    assert len(out["row_id"]) == 24 and out["x_t"].shape == (24, 4, 2, 2)
    assert (out["caption"] < np.repeat(n_caps, 6)).all() and out["caption"].max() > 0
    again = label(True)
    assert all(np.array_equal(out[k], again[k]) for k in out)  # byte-identical on retry
    # the target of row r, draw d is the OTHER teacher's eps under caption c of row r
    for i in range(24):
        r = list(rows).index(out["row_id"][i])
        c = emb[r, out["caption"][i]]
        x_t = torch.from_numpy(out["x_t"][i])
        want = 0.1 * x_t + c.mean()
        assert torch.allclose(torch.from_numpy(out["target"][i]), want, atol=1e-5)
        assert out["teachers"][i] == ("teacher_2" if r < 2 else "teacher_1")
    assert (label(False)["caption"] == 0).all()
    with pytest.raises(PrivacyInvariantError):
        bad = {**owners, 5: frozenset({"teacher_1", "teacher_2"})}
        SoftTargetLabeller(teachers, bad, NoiseSchedule(), 1, 0)(batch)


# ----------------------------------------------------------------------------- DualMD + CFG


class Recording:
    """An EpsModel that logs (name, batch size, t, cond) per call and returns zeros."""

    def __init__(self, name: str, log: list[tuple[str, int, int, Optional[torch.Tensor]]]) -> None:
        self.name, self.log = name, log

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        self.log.append((self.name, x.shape[0], int(t[0]), cond))
        return torch.zeros_like(x)


def test_dualmd_with_cfg_gives_both_halves_of_a_step_to_that_steps_teacher() -> None:
    from raydefense.defense.dualmd import DualMDPipeline

    log: list[tuple[str, int, int, Optional[torch.Tensor]]] = []
    t1, t2 = Recording("teacher_1", log), Recording("teacher_2", log)
    cond, uncond = torch.ones(3, 5, 2), torch.zeros(3, 5, 2)
    DualMDPipeline([t1, t2], NoiseSchedule()).generate(
        (3, 4, 2, 2), "ddim", 4, 0, cond=cond, uncond=uncond, guidance_scale=7.5, clip=False
    )
    assert [(n, b) for n, b, _, _ in log] == [("teacher_1", 6), ("teacher_2", 6)] * 2
    first = log[0][3]
    assert first is not None
    assert torch.equal(first[:3], uncond) and torch.equal(first[3:], cond)  # one batched call
    assert [t for _, _, t, _ in log] == [750, 500, 250, 0]
    # no guidance: one plain conditional call per step, still alternating
    log.clear()
    sample([t1, t2], NoiseSchedule(), (3, 4, 2, 2), "ddim", 2, cond=cond, clip=False)
    assert [(n, b) for n, b, _, _ in log] == [("teacher_1", 3), ("teacher_2", 3)]
    log.clear()
    ddim_path([t1, t2], NoiseSchedule(), torch.zeros(1, 4, 2, 2), [200, 100, 0])
    assert [(n, t) for n, _, t, _ in log] == [("teacher_1", 200), ("teacher_2", 100)]


# ----------------------------------------------------------------------------- interface attacks


def test_public_interface_is_per_seed_and_batch_independent(sd_cfg: ModelConfig) -> None:
    codec = SDCodec(sd_cfg)
    net = build_net(sd_cfg, (3, 32, 32)).eval()
    from raydefense.diffusion.eps import FrozenEps

    iface = SamplerInterface(
        [FrozenEps(net)],
        NoiseSchedule.of(sd_cfg),
        SamplingConfig(num_steps=3, guidance_scale=2.0),
        (4, 16, 16),
        codec,
        codec.embed([""])[0],
    )
    cond = codec.embed(["one", "two"])
    both = iface.generate(cond, [11, 12])
    assert both.shape == (2, 3, 32, 32)
    # a row's output does not depend on its batch (up to CPU kernels chosen by batch size)
    assert torch.allclose(both[1], iface.generate(cond[1:], [12])[0], atol=1e-4)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    var = iface.vary(images, 200, 2, [1, 2], cond)
    assert var.shape == images.shape
    assert torch.allclose(var[0], iface.vary(images[:1], 200, 2, [1], cond[:1])[0], atol=1e-4)


class Replayer:
    """A fake public interface that 'memorised' some images: generations/variations of a
    member return the member itself, of anything else noise."""

    def __init__(self, members: torch.Tensor) -> None:
        self.members = members

    def _lookup(self, key: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(seeds[0]) % 2**31)
        out = torch.rand(len(seeds), *self.members.shape[1:], generator=g) * 2 - 1
        for i in range(len(seeds)):
            for m in self.members:
                if torch.equal(key[i], m):
                    out[i] = m
        return out

    def generate(self, cond: Optional[torch.Tensor], seeds: list[int]) -> torch.Tensor:
        assert cond is not None
        return self._lookup(
            cond[:, 0, : self.members[0].numel()].reshape(-1, *self.members.shape[1:]), seeds
        )

    def vary(
        self,
        images: torch.Tensor,
        t_start: int,
        num_steps: int,
        seeds: list[int],
        cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        return self._lookup(images, seeds)


def test_pang_wang_and_rediffuse_score_memorised_images_higher() -> None:
    images = torch.rand(6, 3, 4, 4) * 2 - 1
    members = images[:3]
    # the "caption embedding" of an image carries the image, so the replayer can recognise it
    cond = torch.zeros(6, 2, 48)
    cond[:, 0] = images.flatten(1)
    ids = torch.arange(6)
    pw = PangWang({"num_generations": 2})
    s = pw.score_interface(PublicQuery(Replayer(members), images, ids, 0, cond))
    assert s.shape == (6, 2) and (s[:3].min(0).values > s[3:].max(0).values).all()
    with pytest.raises(ValueError, match="captions"):
        pw.score_interface(PublicQuery(Replayer(members), images, ids, 0, None))
    rd = ReDiffuse({"average": 2})
    r = rd.score_interface(PublicQuery(Replayer(members), images, ids, 0))
    assert r.shape == (6, 1) and r[:3].min() > r[3:].max()
    assert rd.settings() == [{"t_start": 200, "steps": 2, "average": 2, "p": 1.0}]
    # Their Stable Diffusion settings: t 50, one DDIM step, one draw, scored by SSIM.
    sd = ReDiffuse({"t_start": 50, "step": 50, "average": 1, "distance": "ssim"})
    r = sd.score_interface(PublicQuery(Replayer(members), images, ids, 0))
    assert torch.allclose(r[:3, 0], torch.ones(3), atol=1e-5) and r[3:].max() < 0.9
    assert sd.settings() == [{"t_start": 50, "steps": 1, "average": 1, "distance": "ssim"}]
    # A sibling of the eps-query attacks, not a subclass refusing their method.
    assert isinstance(rd, ColumnAttack) and not isinstance(rd, QueryAttack)


def test_pang_wang_feature_column_uses_a_local_image_model(tmp_path: Any) -> None:
    """attacks.pang_wang.feature_model: their DeiT feature similarity from a local model dir
    (here a tiny random DeiT the test saves, with its image processor); a member's generation
    is the member itself, so its cosine is 1. A directory that is no such model is one line."""
    from transformers import DeiTConfig, DeiTImageProcessor, DeiTModel

    from raydefense.attacks.pang_wang import FeatureModel
    from raydefense.errors import ConfigError

    torch.manual_seed(0)
    conf = DeiTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32)  # fmt: skip
    DeiTModel(conf).save_pretrained(tmp_path / "deit")
    size = {"height": 16, "width": 16}
    DeiTImageProcessor(size=size, crop_size=size).save_pretrained(tmp_path / "deit")
    images = torch.rand(6, 3, 4, 4) * 2 - 1
    cond = torch.zeros(6, 2, 48)
    cond[:, 0] = images.flatten(1)
    pw = PangWang({"num_generations": 2, "feature_model": str(tmp_path / "deit")})
    assert [p["similarity"] for p in pw.settings()] == ["ssim", "l2", "feature"]
    s = pw.score_interface(PublicQuery(Replayer(images[:3]), images, torch.arange(6), 0, cond))
    assert s.shape == (6, 3)
    assert torch.allclose(s[:3, 2], torch.ones(3), atol=1e-5) and (s[3:, 2] < 0.999).all()
    assert FeatureModel(str(tmp_path / "deit"))(images).shape == (6, 6, 16)  # cls, dist, 4 patches
    with pytest.raises(ConfigError, match="not a local transformers image model"):
        FeatureModel(str(tmp_path))


def test_similarities() -> None:
    a = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-5)
    assert (ssim(a, -a) < 0.5).all() and torch.equal(mse(a, a), torch.zeros(2))


# ----------------------------------------------------------------------------- config


def test_text_to_image_config_errors() -> None:
    with pytest.raises(ConfigError, match="train.hflip flips pixels"):
        load_config(preset="tiny_t2i", overrides=["train.hflip=true"])
    with pytest.raises(ConfigError, match="prompt_diversification"):
        load_config(preset="smoke", overrides=["data.prompt_diversification=true"])
    smoke = load_config(preset="smoke", overrides=["attacks.enabled=[loss,pang_wang]"])
    with pytest.raises(ConfigError, match="'pang_wang' needs captions"):
        build_attacks(smoke)


def test_tiny_t2i_preset_runs_the_text_to_image_attacks() -> None:
    cfg = load_config(preset="tiny_t2i")
    assert isinstance(cfg, ExperimentConfig) and cfg.model.kind == "sd"
    names = {a.name for a in build_attacks(cfg)}
    assert {"pang_wang", "rediffuse", "secmi_stat", "pia"} <= names
    assert any(isinstance(a, TextQueryAttack) for a in build_attacks(cfg)) == ("clid" in names)


def test_rediffuse_queries_an_unconditional_models_public_interface() -> None:
    """ReDiffuse on a pixel-space UNet2DModel (no codec, no captions): variations are clipped
    pixels, seeded per row, and DualMD's interface alternates its teachers."""
    from raydefense.diffusion.eps import FrozenEps

    cfg = UNet2DConfig(block_out_channels=[8, 16], norm_num_groups=4)
    torch.manual_seed(0)
    nets = [FrozenEps(build_net(cfg, (1, 8, 8)).eval()) for _ in range(2)]
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    ids = torch.tensor([5, 6, 7])
    single = SamplerInterface(nets[:1], NoiseSchedule(), SamplingConfig(num_steps=4), (1, 8, 8))
    scores = ReDiffuse({"average": 2}).score_interface(PublicQuery(single, images, ids, 0))
    alone = ReDiffuse({"average": 2}).score_interface(PublicQuery(single, images[1:2], ids[1:2], 0))
    assert scores.shape == (3, 1) and torch.allclose(scores[1], alone[0], atol=1e-5)
    gen = single.generate(None, [1, 2])
    assert gen.shape == (2, 1, 8, 8) and gen.abs().max() <= 1.0
    log: list[tuple[str, int, int, Optional[torch.Tensor]]] = []
    dual = SamplerInterface(
        [Recording("teacher_1", log), Recording("teacher_2", log)],
        NoiseSchedule(),
        SamplingConfig(num_steps=4),
        (1, 8, 8),
    )
    dual.vary(images, 200, 2, [1, 2, 3])
    assert [(n, t) for n, _, t, _ in log] == [("teacher_1", 200), ("teacher_2", 100)]


def test_every_digits_caption_fits_the_tiny_tokenizer(codec: SDCodec) -> None:
    """A truncated caption would lose its digit ("a handwritten digit se..."): the tiny
    tokenizer holds every digits_captioned caption whole."""
    from raydefense.data.sources import digit_captions

    captions = [c for k in range(10) for c in digit_captions(k)]
    ids = codec.token_ids(captions)
    for caption, row in zip(captions, ids.tolist()):
        body = [i for i in row[1:] if i != codec.end_id]  # a space only ends a word: no token
        assert len(body) == len(caption.replace(" ", "")), caption
