"""Importing models trained elsewhere (`raydefense audit`): where the weights are found, their
digest, which targets an audit has, and the one-line errors for models that do not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from raydefense.audit.imported import check_imported, import_model, locate
from raydefense.audit.targets import audit_targets
from raydefense.config import ExperimentConfig, load_config
from raydefense.errors import ConfigError
from raydefense.run.fingerprints import stage_fingerprints
from raydefense.storage import Storage


def tiny_unet(seed: int = 0, channels: int = 1, size: int = 8) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )


def smoke(**audit: str) -> ExperimentConfig:
    return load_config(
        "smoke", overrides=[f"audit.models.{r}={json.dumps(u)}" for r, u in audit.items()]
    )


def test_every_source_form_is_located(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    tiny_unet().save_pretrained(plain)
    m = locate("baseline", "x", str(plain))
    assert m.raw == m.ema == str(plain) and m.scheduler is None

    pipe = tmp_path / "pipe"
    DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler()).save_pretrained(pipe)
    m = locate("baseline", "x", str(pipe))
    assert m.raw == m.ema == str(pipe / "unet")
    assert m.scheduler == str(pipe / "scheduler" / "scheduler_config.json")

    ours = tmp_path / "models" / "baseline"
    tiny_unet(1).save_pretrained(ours / "unet")
    tiny_unet(2).save_pretrained(ours / "ema")
    m = locate("baseline", "x", str(ours))
    assert (m.raw, m.ema) == (str(ours / "unet"), str(ours / "ema"))
    # MLflow artifacts: the shallowest model below the download
    m = locate("baseline", "x", str(tmp_path / "models"))
    assert m.ema == str(ours / "ema")

    with pytest.raises(ConfigError, match="is not a directory; give a diffusers UNet"):
        locate("baseline", "x", str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^audit model student=x: no diffusers UNet under"):
        locate("student", "x", str(tmp_path / "empty"))


def test_the_digest_follows_the_weights(tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        tiny_unet(seed).save_pretrained(tmp_path / name)
    a, b, c = (locate("baseline", n, str(tmp_path / n)).digest() for n in "abc")
    assert a == b != c and len(a) == 64


def test_audit_targets_and_fingerprints() -> None:
    assert audit_targets(smoke(baseline="p")) == ["baseline"]
    both = smoke(teacher_1="p", teacher_2="q", student="s")
    assert audit_targets(both) == ["teacher_1", "teacher_2", "dualmd", "student"]
    with pytest.raises(ConfigError, match="needs teacher_1, teacher_2: import all K teachers"):
        audit_targets(smoke(teacher_1="p"))
    with pytest.raises(ConfigError, match="unknown role 'teacher'"):
        smoke(teacher="p")
    # an unused audit section leaves every fingerprint as it was; new weights move the targets'
    # fingerprints but not the shadow models'
    plain = load_config("smoke")
    assert "audit" not in json.dumps(stage_fingerprints(plain))
    one = smoke(baseline="p").model_copy(deep=True)
    one.audit.digests = {"baseline": "0" * 64}
    other = one.model_copy(deep=True)
    other.audit.digests = {"baseline": "1" * 64}
    fa, fb, fp = stage_fingerprints(one), stage_fingerprints(other), stage_fingerprints(plain)
    assert fa["targets"] != fb["targets"] and fa["evaluate"] != fb["evaluate"]
    # (the plan may differ from a full run's: only the audited roles need regime-matched shadows)
    assert fa["shadows"] == fb["shadows"] == fp["shadows"] and fa["prepare"] == fb["prepare"]
    assert plain.fingerprint() == load_config("smoke").fingerprint()


def test_models_that_do_not_fit_fail_in_one_line(tmp_path: Path) -> None:
    cfg = load_config("smoke")
    tiny_unet(channels=3, size=16).save_pretrained(tmp_path / "rgb")
    with pytest.raises(ConfigError, match=r"takes 3x16x16 inputs, but the data are 1x8x8"):
        check_imported(cfg, locate("baseline", "rgb", str(tmp_path / "rgb")), (1, 8, 8))
    pipe = tmp_path / "pipe"
    sched = DDPMScheduler(beta_end=0.012)
    DDPMPipeline(unet=tiny_unet(), scheduler=sched).save_pretrained(pipe)
    with pytest.raises(ConfigError, match=r"trained with beta_end=0.012, but model.beta_end=0.02"):
        check_imported(cfg, locate("baseline", "pipe", str(pipe)), (1, 8, 8))
    sd = load_config("smoke", overrides=["model.kind=sd", "model.pipeline=tiny"])
    with pytest.raises(
        ConfigError, match="is a UNet2DModel, but model.kind=sd: set model.kind=unet2d"
    ):
        check_imported(sd, locate("baseline", "pipe", str(pipe)), (1, 8, 8))
    good = tmp_path / "good"
    tiny_unet().save_pretrained(good)
    m = locate("baseline", "good", str(good))
    check_imported(cfg, m, (1, 8, 8))
    storage = Storage(str(tmp_path / "runs"), "audit")
    import_model(storage, m)
    assert storage.exists("models/baseline/unet/config.json")
    assert storage.exists("models/baseline/ema/config.json")
    assert storage.read_json("models/baseline/imported.json")["sha256"] == m.digest()
