"""The backbone seam: `model.kind` picks the network family; the training loop, checkpoints,
loading, the eps interface and white-box attacks reach networks only through it. A toy family
registered here trains, checkpoints, resumes and is attacked with no other code change."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal, Optional

import pytest
import torch

from raydefense.attacks.base import Query
from raydefense.attacks.gsa import GSA1
from raydefense.config import MODEL_FAMILIES, ExperimentConfig, ModelConfig, TrainConfig
from raydefense.diffusion.backbones import BACKBONES, build_net, load_eps, load_net
from raydefense.diffusion.backbones.unet2d import UNet2DNet, load_unet
from raydefense.diffusion.eps import EpsNet, FrozenEps
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.training import fit
from raydefense.families import UNet2DConfig
from raydefense.run.fingerprints import config_tree, stage_fingerprints
from tests.unit.test_training import ListReporter, images

SCHED = NoiseSchedule()
SMALL = UNet2DConfig(block_out_channels=[8, 16], norm_num_groups=4)


class ToyNet(EpsNet):
    """eps = conv3x3(x_t) + a learned per-timestep bias: a second family in a few lines."""

    def __init__(self, channels: int, steps: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.bias = torch.nn.Embedding(steps, 1)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        return self.conv(x_t) + self.bias(t)[:, :, None, None]

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        meta = {"channels": self.conv.in_channels, "steps": self.bias.num_embeddings}
        torch.save({"meta": meta, "state": self.state_dict()}, os.path.join(directory, "toy.pt"))


class Toy:
    def build(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> EpsNet:
        return ToyNet(image_shape[0], cfg.num_train_timesteps)

    def load(self, directory: str) -> EpsNet:
        blob = torch.load(os.path.join(directory, "toy.pt"))
        net = ToyNet(**blob["meta"])
        net.load_state_dict(blob["state"])
        return net.eval().requires_grad_(False)

    def data_shape(
        self, cfg: ModelConfig, image_shape: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        return image_shape


class ToyConfig(ModelConfig):
    """`model.kind: toy`: the schedule only."""

    kind: Literal["toy"] = "toy"  # type: ignore[assignment]


@pytest.fixture
def toy() -> Iterator[ModelConfig]:
    """The `toy` family registered (schema and backbone) for one test, and a config of it."""
    with MODEL_FAMILIES.registered("toy", ToyConfig), BACKBONES.registered("toy", Toy()):
        yield ToyConfig()


def test_unet2d_is_the_default_backbone_and_unknown_kinds_are_refused() -> None:
    assert isinstance(ExperimentConfig().model, UNet2DConfig) and "unet2d" in BACKBONES
    net = build_net(SMALL, (1, 8, 8))
    assert isinstance(net, UNet2DNet)
    out = net(torch.zeros(2, 1, 8, 8), torch.tensor([0, 999]))
    assert out.shape == (2, 1, 8, 8) and out.requires_grad  # a plain tensor, with autograd
    with pytest.raises(ValueError, match="unknown model family 'latent_sd'; choose one of"):
        ExperimentConfig.model_validate({"model": {"kind": "latent_sd"}})
    with pytest.raises(ValueError, match="square"):
        build_net(SMALL, (1, 8, 6))


def test_unet2d_saves_plain_diffusers_directories(tmp_path: Any) -> None:
    """What `EpsNet.save` writes, diffusers loads without raydefense, and load_net reads back."""
    torch.manual_seed(0)
    net = build_net(SMALL, (1, 8, 8))
    net.save(str(tmp_path / "ema"))
    bare = load_unet(str(tmp_path), "ema")
    back = load_net(SMALL, str(tmp_path), "ema")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 500])
    want = net(x, t).detach()
    assert torch.equal(bare(x, t).sample, want) and torch.equal(back(x, t), want)
    assert not back.training and not any(p.requires_grad for p in back.parameters())
    with pytest.raises(ValueError, match="weights must be one of"):
        load_net(SMALL, str(tmp_path), "best")


def test_frozen_eps_runs_without_autograd() -> None:
    eps = FrozenEps(build_net(SMALL, (1, 8, 8)))
    out = eps(torch.zeros(1, 1, 8, 8), torch.tensor([10]))
    assert not out.requires_grad
    with pytest.raises(ValueError, match="unconditional"):
        eps(torch.zeros(1, 1, 8, 8), torch.tensor([10]), cond=torch.zeros(1, 4))


def test_a_new_backbone_trains_resumes_and_is_attacked_through_the_seam(
    toy: ModelConfig, tmp_path: Any
) -> None:
    train = TrainConfig(steps=6, batch_size=4, checkpoint_every=3, log_every=3, lr=1e-2)
    full = ListReporter()
    fit(images(), toy, train, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=full)
    assert os.path.isfile(os.path.join(full.ckpt, "ema", "toy.pt"))
    # Resume from the step-3 checkpoint through the toy's own load: exactly the same weights.
    crashed = ListReporter(stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        fit(images(), toy, train, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=crashed)
    resumed = ListReporter(resume_from=crashed.ckpt)
    fit(images(), toy, train, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=resumed)
    for weights in ("ema", "raw"):
        a, b = load_net(toy, full.ckpt, weights), load_net(toy, resumed.ckpt, weights)
        assert isinstance(a, ToyNet)
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), (weights, k)
    # The eps interface and a white-box attack work on it unchanged.
    eps = load_eps(toy, full.ckpt, "raw")
    x0, ids = images(3).images, torch.arange(3)
    assert eps(x0, torch.tensor([1, 2, 3])).shape == x0.shape
    feats = GSA1({"num_timesteps": 2}).features(Query(eps, SCHED, x0, ids, 0))
    assert feats.shape == (3, 3) and torch.all(feats >= 0)  # conv weight, conv bias, embedding


def test_the_default_kind_keeps_fingerprints_and_another_kind_changes_them(
    toy: ModelConfig,
) -> None:
    """Models trained before `model.kind` existed keep their fingerprints (the default kind is
    not hashed); another family retrains every model but reuses the prepared data."""
    cfg = ExperimentConfig()
    assert "kind" not in config_tree(cfg)["model"]
    other = ExperimentConfig.model_validate({"model": {"kind": "toy"}})
    assert isinstance(other.model, ToyConfig) and config_tree(other)["model"]["kind"] == "toy"
    a, b = stage_fingerprints(cfg), stage_fingerprints(other)
    assert a["prepare"] == b["prepare"] and a["train"] != b["train"]
