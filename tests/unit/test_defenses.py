"""Defenses side by side (#30): `train.variants` (a defense trained like the baseline with other
settings, audited as target baseline_<name>), DP-SGD as a training mode (`train.dp`), and what
each target cost and proves (results.json `defenses`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from raydefense import layout
from raydefense.config import ExperimentConfig, load_config
from raydefense.data.given import load_pool
from raydefense.data.plan import make_plan
from raydefense.diffusion.dp_sgd import epsilon_spent
from raydefense.errors import ConfigError
from raydefense.pipeline import stage_evaluate, stage_prepare, stage_report, stage_train
from raydefense.roster import (
    BASELINE,
    model_index,
    parse_draw,
    shadow_name,
    sort_targets,
    training_role,
)
from raydefense.run.fingerprints import model_fingerprint, stage_fingerprints

from conftest import in_process_context, tiny_config

VARIANTS = "{dp: {dp: {noise_multiplier: 1.0, max_grad_norm: 0.5}}, flips: {hflip: true}}"


def test_a_variant_is_the_baselines_settings_with_its_departures() -> None:
    cfg = ExperimentConfig.model_validate(
        {
            "train": {
                "lr": 1e-3,
                "baseline": {"steps": 50},
                "variants": {
                    "dp": {"dp": {"epsilon": 3.0}, "lr": 5e-4},
                    "wd": {"weight_decay": 0.1, "dropout": 0.3},
                },
            }
        }
    )
    dp, wd = cfg.train.for_role("baseline_dp"), cfg.train.for_role("baseline_wd")
    assert dp.steps == wd.steps == 50 and dp.lr == 5e-4 and wd.lr == 1e-3
    assert dp.dp is not None and dp.dp.epsilon == 3.0 and wd.dp is None
    assert wd.weight_decay == 0.1 and cfg.train.model_dropout("baseline_wd") == 0.3
    assert cfg.train.variant_targets() == ("baseline_dp", "baseline_wd")
    with pytest.raises(ValueError, match="unknown training role 'baseline_nope'"):
        cfg.train.for_role("baseline_nope")


@pytest.mark.parametrize(
    "train, message",
    [
        ({"variants": {"Big": {}}}, "lower-case letters and digits"),
        ({"dp": {"epsilon": 1.0, "noise_multiplier": 1.0}}, "set exactly one"),
        ({"dp": {}}, "set exactly one"),
        ({"dp": {"epsilon": 1.0, "max_grad_norm": 0}}, "greater than 0"),
        ({"student": {"dp": {"epsilon": 1.0}}}, "the student learns from soft targets"),
        ({"variants": {"a": {"dp": {"epsilon": 1.0}, "hflip": True}}}, "without torch.compile"),
    ],
)
def test_bad_dp_and_variant_settings_are_refused(train: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExperimentConfig.model_validate({"train": train})


def test_dp_on_a_latent_family_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"^invalid config: train.variants.p.dp: .* latents; unset it$"
    ):
        load_config("tiny_t2i", overrides=["train.variants={p: {dp: {epsilon: 8}}}"])


def test_variant_names_parse_and_share_their_baselines_batches() -> None:
    assert training_role("baseline_dp") == "baseline_dp"
    assert parse_draw("shadow_2_baseline_dp") == ("shadow", 1, "baseline_dp", -1)
    assert parse_draw("online_1_baseline_dp_eps1") == ("online", 0, "baseline_dp_eps1", -1)
    assert shadow_name(1, "baseline_dp") == "shadow_2_baseline_dp"
    assert training_role("shadow_2_baseline_dp") == "baseline_dp"
    # A paired comparison: the baseline's initial weights and batches.
    assert model_index("baseline_dp", 2) == model_index(BASELINE, 2)
    assert model_index("shadow_2_baseline_dp", 2) == model_index("shadow_2", 2)
    assert model_index("online_1_baseline_dp", 2) == model_index("online_1", 2)
    assert sort_targets(["student", "dualmd", "baseline_dp", "teacher_1", "baseline"]) == [
        "baseline",
        "baseline_dp",
        "teacher_1",
        "dualmd",
        "student",
    ]


def test_variants_train_nothing_else_again() -> None:
    """Adding variants changes the plan (their rows) and the train stage, but no model that
    trained without them: the baseline, teachers, shadows and student keep their fingerprints."""
    plain = load_config("digits")
    with_variants = load_config("digits", overrides=[f"train.variants={VARIANTS}"])
    a, b = stage_fingerprints(plain), stage_fingerprints(with_variants)
    for m in ("baseline", "teacher_1", "teacher_2", "student", "shadow_1", "shadow_1_student"):
        assert model_fingerprint(a, m) == model_fingerprint(b, m), m
    assert a["distill"] == b["distill"] and a["prepare"] != b["prepare"]
    own = {
        model_fingerprint(b, m) for m in ("baseline_dp", "baseline_flips", "shadow_1_baseline_dp")
    }
    assert len(own) == 3 and not own & {model_fingerprint(a, "baseline")}


def test_the_plan_gives_variants_their_baselines_rows_after_every_other_row(
    tmp_path: Path,
) -> None:
    cfg = tiny_config(tmp_path)
    pool, _ = load_pool(cfg.data)
    plain = make_plan(pool, cfg.data, cfg.seed, 1, None, ("baseline", "teacher"))
    roles = ("baseline", "teacher", "baseline_dp")
    plan = make_plan(pool, cfg.data, cfg.seed, 1, None, roles, variants=("baseline_dp",))
    n = len(plain.models)
    assert plan.models[:n] == plain.models
    assert np.array_equal(plan.membership[:n], plain.membership)
    assert plan.models[n:] == ["baseline_dp", "shadow_1_baseline_dp"]
    assert np.array_equal(plan.rows_of("baseline_dp"), plan.rows_of("baseline"))
    assert np.array_equal(plan.rows_of("shadow_1_baseline_dp"), plan.rows_of("shadow_1"))
    assert plan.meta["variants"] == ["baseline_dp"] and "variants" not in plain.meta


def test_an_unreachable_epsilon_is_one_line_before_any_fit(tmp_path: Path) -> None:
    cfg = tiny_config(
        tmp_path,
        **{
            "train.variants": "{dp: {dp: {epsilon: 0.001}}}",
            "attacks.enabled": "[loss]",
            "tracking.register_models": "false",
        },
    )
    ctx = in_process_context(cfg)
    stage_prepare(ctx)
    with pytest.raises(ConfigError, match=r"^baseline_dp: train.dp: epsilon=0.001 .* out of reach"):
        stage_train(ctx)
    assert not os.path.exists(ctx.storage.path("models"))


def test_defenses_are_trained_audited_and_costed_side_by_side(tmp_path: Path) -> None:
    """A DP-SGD variant and an augmentation variant, each with a regime-matched shadow for
    LiRA, trained on the in-process executor and audited beside the baseline: results.json
    holds each target's worst case, its training cost and the DP fit's accountant epsilon."""
    cfg = tiny_config(
        tmp_path,
        **{
            "train.variants": VARIANTS,
            "attacks.targets": "[baseline, baseline_dp, baseline_flips]",
            "attacks.enabled": "[loss, lira]",
            "tracking.register_models": "false",
        },
    )
    ctx = in_process_context(cfg)
    stage_prepare(ctx)
    stage_train(ctx)
    storage = ctx.storage
    for m in ("baseline_dp", "shadow_1_baseline_dp", "baseline_flips", "shadow_1_baseline_flips"):
        assert storage.exists(layout.marker(layout.model_dir(m))), m
    record = storage.read_json(layout.training_record("baseline_dp"))
    q = cfg.train.batch_size / cfg.data.num_members
    expected = epsilon_spent(q, 1.0, cfg.train.steps, 1e-5)[0]
    assert record["dp"]["epsilon"] == pytest.approx(expected)
    assert record["dp"]["max_grad_norm"] == 0.5 and record["steps"] == cfg.train.steps
    assert record["cpu_seconds"] > 0 and record["train_seconds"] > 0
    assert storage.read_json(layout.training_record("baseline_flips"))["dp"] is None
    stage_evaluate(ctx)
    results = stage_report(ctx)
    assert set(results["privacy"]) == {"baseline", "baseline_dp", "baseline_flips"}
    d = results["defenses"]
    assert d["baseline_dp"]["dp"]["epsilon"] == pytest.approx(expected)
    assert d["baseline"]["dp"] is None and d["baseline_flips"]["dp"] is None
    assert all(d[t]["complete"] and d[t]["cpu_seconds"] > 0 for t in d)
    # LiRA on a variant compares it with the shadow trained like it.
    assert list(results["references"]["baseline_dp"]["models"]) == ["shadow_1_baseline_dp"]
    assert list(results["references"]["baseline_flips"]["models"]) == ["shadow_1_baseline_flips"]
    labels = {p["label"] for p in results["privacy_utility"]["points"]}
    assert {"baseline_dp", "baseline_flips"} <= labels
    report = storage.read_bytes(f"{layout.REPORT}/report.md").decode()
    assert "## Defenses side by side" in report and "(δ=1e-05)" in report
    on_disk = json.loads(storage.read_bytes(layout.RESULTS))
    assert on_disk["defenses"]["baseline_dp"]["dp"]["noise_multiplier"] == 1.0
