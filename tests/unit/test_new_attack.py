"""An attack added by new code only: its class and its settings section are registered from this
file (the section beside the class), `--set` reaches its settings, and a run's evaluate stage
scores it through the in-process executor with no edit to any raydefense module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raydefense import layout
from raydefense.attacks.base import ATTACKS, Query, QueryAttack, call_eps
from raydefense.config import ATTACK_SETTINGS, ExperimentConfig
from raydefense.errors import ConfigError
from raydefense.pipeline import stage_evaluate, stage_prepare, stage_train

from conftest import in_process_context, tiny_config


class DenoiseGapSettings(BaseModel):
    """attacks.denoise_gap: the timestep of its one deterministic query."""

    model_config = ConfigDict(extra="forbid")
    t: int = Field(50, ge=0, description="the query timestep")


class DenoiseGap(QueryAttack):
    """-||eps(x0, t)||^2 per row: one eps call, no randomness."""

    name = "denoise_gap"
    access = "gray-box"

    def __init__(self, cfg: Any, num_train_timesteps: int = 1000) -> None:
        self.cfg = DenoiseGapSettings.model_validate(dict(cfg))

    def settings(self) -> list[dict[str, Any]]:
        return [{"t": self.cfg.t}]

    @torch.no_grad()
    def score(self, q: Query) -> torch.Tensor:
        t = torch.full((q.batch_size,), self.cfg.t, dtype=torch.long)
        eps = call_eps(q.eps, q.x0.float(), t, q.cond).float()
        return -eps.pow(2).flatten(1).sum(1)[:, None]


@pytest.fixture
def denoise_gap() -> Iterator[None]:
    with (
        ATTACKS.registered("denoise_gap", DenoiseGap),
        ATTACK_SETTINGS.registered("denoise_gap", DenoiseGapSettings),
    ):
        yield


def test_the_attack_settings_are_a_config_section(denoise_gap: None, tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, **{"attacks.denoise_gap.t": "20"})
    section = cfg.attacks.section("denoise_gap")
    assert isinstance(section, DenoiseGapSettings) and section.t == 20
    assert cfg.model_dump()["attacks"]["denoise_gap"] == {"t": 20}  # hashed like any section
    assert tiny_config(tmp_path).attacks.section("denoise_gap") == DenoiseGapSettings()
    with pytest.raises(ValidationError, match="denoise_gap.t"):
        ExperimentConfig.model_validate({"attacks": {"denoise_gap": {"t": -1}}})
    with pytest.raises(ConfigError, match="'tt' is not in attacks.denoise_gap"):
        tiny_config(tmp_path, **{"attacks.denoise_gap.tt": "20"})
    with pytest.raises(ValidationError, match="attacks.nope is neither a setting nor"):
        ExperimentConfig.model_validate({"attacks": {"nope": {}}})


def test_a_new_attack_is_scored_through_the_in_process_executor(
    denoise_gap: None, tmp_path: Path
) -> None:
    cfg = tiny_config(
        tmp_path,
        **{
            "train.steps": "6",
            "train.checkpoint_every": "3",
            "tracking.register_models": "false",
            "attacks.targets": "[baseline, dualmd]",
            "attacks.enabled": "[loss, denoise_gap]",
        },
    )
    ctx = in_process_context(cfg)
    storage = ctx.storage
    stage_prepare(ctx)
    stage_train(ctx)
    stage_evaluate(ctx)
    scores = storage.read_table(layout.SCORES).to_pandas()
    gap = scores[scores.attack == "denoise_gap"]
    assert set(gap.target) == {"baseline", "dualmd"} and len(gap) == 2 * 32
    assert np.isfinite(gap.score).all() and (gap.score <= 0).all()
