"""Config tree: presets, YAML files with a base preset, --set overrides, one-line errors."""

from __future__ import annotations

import pytest

from raydefense.config import ExperimentConfig, load_config, preset_names
from raydefense.errors import ConfigError


def test_presets_ship_with_the_package():
    assert {"digits", "smoke"} <= set(preset_names())
    cfg = load_config()  # the default preset
    assert cfg.experiment == "digits" and cfg.data.source == "digits"
    assert load_config("smoke").experiment == "smoke"


def test_set_overrides_parse_yaml_values():
    cfg = load_config(
        "smoke",
        overrides=[
            "train.steps=7",
            "model.block_out_channels=[8, 16]",
            "storage.root=s3://bucket/prefix",
            "train.lr=3e-4",
            "distill.draws_per_row=5",
            "distill.teacher_assignment=one_other",
        ],
    )
    assert cfg.train.steps == 7
    assert cfg.model.block_out_channels == [8, 16]
    assert cfg.storage.root == "s3://bucket/prefix"
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.distill.draws_per_row == 5
    assert cfg.distill.teacher_assignment == "one_other"
    assert load_config("smoke").distill.teacher_assignment == "mean"  # the default


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.stepz=3", "train.stepz"),
        ("nosection.x=1", "nosection"),
        ("train.steps.deep=1", "train.steps.deep"),
        ("train.steps=-1", "train.steps"),
        ("train.steps=many", "train.steps"),
        ("data.on_duplicate=ignore", "data.on_duplicate"),
        ("attacks.secmi_stat.t_sec=25", "multiple of k"),
        ("model.block_out_channels=[30, 64]", "norm_num_groups"),
        ("noequals", "KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides=[override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_bad_teacher_assignment_lists_the_choices():
    with pytest.raises(ConfigError) as e:
        load_config("smoke", overrides=["distill.teacher_assignment=random"])
    msg = str(e.value)
    assert "distill.teacher_assignment" in msg and "'mean'" in msg and "'one_other'" in msg
    assert "random" in msg and "\n" not in msg


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="digits"):
        load_config("nope")


def test_config_file_with_base(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("base: smoke\nexperiment: mine\ntrain:\n  steps: 11\n")
    cfg = load_config(config_file=str(f), overrides=["train.batch_size=4"])
    assert (cfg.experiment, cfg.train.steps, cfg.train.batch_size) == ("mine", 11, 4)
    assert cfg.model.block_out_channels == [16, 32]  # inherited from smoke
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepsx: 1\n")
    with pytest.raises(ConfigError, match="stepsx"):
        load_config(config_file=str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_file=str(tmp_path / "missing.yaml"))


def test_flat_params_and_fingerprint_are_stable():
    a, b = load_config("smoke"), load_config("smoke")
    assert a.fingerprint() == b.fingerprint()
    flat = a.flat_params()
    assert flat["train.steps"] == "100" and flat["data.source"] == "digits"
    assert load_config("smoke", overrides=["seed=1"]).fingerprint() != a.fingerprint()
    assert isinstance(ExperimentConfig.model_validate(a.model_dump()), ExperimentConfig)


def test_teacher_assignment_reruns_distill_but_not_the_teachers():
    from raydefense.runs.fingerprints import stage_fingerprints

    a = stage_fingerprints(load_config("smoke"))
    b = stage_fingerprints(load_config("smoke", overrides=["distill.teacher_assignment=one_other"]))
    assert a["targets"] == b["targets"] and a["train"] == b["train"]
    assert a["distill"] != b["distill"]
