"""A model family added by new code only: its schema (fields, checks, capabilities) and its
backbone are registered from this file, and a run of it is prepared, trained by the in-process
executor and audited (scored on the in-process pool) with no edit to any raydefense module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pytest
import torch
from pydantic import Field, ValidationError

from raydefense import layout
from raydefense.config import MODEL_FAMILIES, ExperimentConfig, ModelConfig, as_family, load_config
from raydefense.diffusion.backbones import BACKBONES
from raydefense.diffusion.eps import EpsNet
from raydefense.pipeline import stage_evaluate, stage_prepare, stage_train

from conftest import in_process_context, tiny_config


class MixerConfig(ModelConfig):
    """`model.kind: mixer`: two convolutions and a learned per-timestep bias."""

    kind: Literal["mixer"] = "mixer"  # type: ignore[assignment]
    hidden: int = Field(8, ge=1, description="hidden channels")


class MixerNet(EpsNet):
    def __init__(self, channels: int, hidden: int, steps: int) -> None:
        super().__init__()
        self.inp = torch.nn.Conv2d(channels, hidden, 3, padding=1)
        self.out = torch.nn.Conv2d(hidden, channels, 3, padding=1)
        self.bias = torch.nn.Embedding(steps, hidden)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        h = torch.nn.functional.silu(self.inp(x_t) + self.bias(t)[:, :, None, None])
        return self.out(h)

    def save(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        meta = {
            "channels": self.inp.in_channels,
            "hidden": self.inp.out_channels,
            "steps": self.bias.num_embeddings,
        }
        torch.save({"meta": meta, "state": self.state_dict()}, f"{directory}/mixer.pt")


class Mixer:
    def build(self, cfg: ModelConfig, image_shape: tuple[int, int, int]) -> EpsNet:
        mixer = as_family(cfg, MixerConfig)
        return MixerNet(image_shape[0], mixer.hidden, mixer.num_train_timesteps)

    def load(self, directory: str) -> EpsNet:
        blob = torch.load(f"{directory}/mixer.pt")
        net = MixerNet(**blob["meta"])
        net.load_state_dict(blob["state"])
        return net.eval().requires_grad_(False)

    def data_shape(
        self, cfg: ModelConfig, image_shape: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        return image_shape


@pytest.fixture
def mixer() -> Iterator[None]:
    with MODEL_FAMILIES.registered("mixer", MixerConfig), BACKBONES.registered("mixer", Mixer()):
        yield


def test_the_family_schema_validates_its_own_fields(mixer: None, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"model.kind": "mixer", "model.hidden": "4"})
    # Switching family keeps the schedule and drops the smoke preset's UNet layout.
    assert isinstance(cfg.model, MixerConfig) and cfg.model.hidden == 4
    assert cfg.model.num_train_timesteps == load_config("smoke").model.num_train_timesteps
    with pytest.raises(ValidationError, match="model.hidden"):
        ExperimentConfig.model_validate({"model": {"kind": "mixer", "hidden": 0}})
    with pytest.raises(ValidationError, match="block_out_channels"):
        ExperimentConfig.model_validate({"model": {"kind": "mixer", "block_out_channels": [8]}})
    # Its capabilities rule settings in and out like the built-in families'.
    with pytest.raises(ValidationError, match="model.kind=mixer takes none"):
        ExperimentConfig.model_validate(
            {"model": {"kind": "mixer"}, "data": {"prompt_diversification": True}}
        )


def test_a_new_family_is_trained_and_audited_through_the_in_process_executor(
    mixer: None, tmp_path: Path
) -> None:
    cfg = tiny_config(
        tmp_path,
        **{
            "model.kind": "mixer",
            "train.steps": "6",
            "train.checkpoint_every": "3",
            "tracking.register_models": "false",
            "attacks.targets": "[baseline, dualmd]",
            "attacks.enabled": "[loss, secmi_stat]",
        },
    )
    ctx = in_process_context(cfg)
    storage = ctx.storage
    stage_prepare(ctx)
    stage_train(ctx)
    for m in ("baseline", "teacher_1", "teacher_2"):
        assert os.path.isfile(storage.path(f"{layout.model_dir(m)}/ema/mixer.pt"))
    stage_evaluate(ctx)
    scores = storage.read_table(layout.SCORES).to_pandas()
    assert set(scores.target) == {"baseline", "dualmd"}
    assert set(scores.attack) == {"loss", "secmi_stat"}
    assert np.isfinite(scores.score).all()
