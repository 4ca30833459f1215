"""The student fit's memory model from the config alone (raydefense.defense.footprint): the
figures docs/architecture.md states for `sd15_pokemon` and `cifar10_ddpm`. (That the model's
bytes per example are what `read_soft_targets` holds is checked in test_distillmd.py.)"""

from __future__ import annotations

import pytest
import torch

from raydefense.config import load_config
from raydefense.defense.footprint import student_footprint
from raydefense.diffusion.backbones import build_net

GIB = 2**30
SD15_PARAMS = 859_520_964  # UNet2DConditionModel at SD v1.5's config (benchmarks/gpu_bench.py)


def test_sd15_pokemon_distillmd_fits_the_h200_host() -> None:
    cfg = load_config("sd15_pokemon")
    assert cfg.distill.target_dtype == "bfloat16"  # the preset's: it trains under bf16 autocast
    f = student_footprint(cfg, (4, 64, 64), cond_shape=(77, 768), params=SD15_PARAMS)
    assert (f.draws_per_row, f.examples) == (770, 320_320)  # 20k steps x 16 / 416 members
    # The target (32 KiB in bfloat16), t, group, the (position, row, draw) keys x_t is
    # regenerated from, the caption drawn and the (row, caption) index of the condition.
    assert f.bytes_per_example == 32_832
    assert f.sources == 416 * 2 * 4 * 4 * 64 * 64  # each row's latent mean and std, once
    assert f.host_peak / GIB == pytest.approx(9.9, abs=0.05)
    assert f.host_peak < 128 * GIB  # the `h200` preset's host
    # One [77, 768] float32 condition and x_t per example, as the student held them before.
    assert f.examples * f.bytes_per_example_per_example_cond / GIB == pytest.approx(109.7, abs=0.1)
    assert f.gpu_state / GIB == pytest.approx(16.0, abs=0.05)  # 20 B per parameter
    fp32 = student_footprint(
        with_distill(cfg, target_dtype="float32"), (4, 64, 64), cond_shape=(77, 768)
    )
    assert fp32.bytes_per_example == 65_600 and fp32.host_peak / GIB == pytest.approx(
        19.7, abs=0.05
    )
    stored = with_distill(cfg, target_dtype="float32", store_x_t=True)
    f = student_footprint(stored, (4, 64, 64), cond_shape=(77, 768))
    assert f.bytes_per_example == 131_104 and f.host_peak / GIB == pytest.approx(39.2, abs=0.05)
    f = student_footprint(with_distill(cfg, disk_dir="/nvme"), (4, 64, 64), cond_shape=(77, 768))
    assert f.host_peak / GIB < 0.3 and f.on_disk / GIB == pytest.approx(9.78, abs=0.01)


def test_cifar10_ddpm_auto_draws_do_not_fit_any_host() -> None:
    """Fresh noise for each of the student's 780k x 128 examples: 99.9M examples, 1.1 TiB as
    the student holds them (2.2 TiB with x_t stored). A known shortfall (docs/architecture.md):
    the paper-scale student needs its soft targets streamed, or distill.draws_per_row set to
    what the host holds."""
    cfg = load_config("cifar10_ddpm")
    with torch.device("meta"):
        params = sum(p.numel() for p in build_net(cfg.model, (3, 32, 32)).parameters())
    f = student_footprint(cfg, (3, 32, 32), num_members=25_000, params=params)
    assert params == 35_746_307 and (f.draws_per_row, f.examples) == (3994, 99_850_000)
    assert f.host_peak / 2**40 == pytest.approx(1.12, abs=0.01)
    assert f.gpu_state / GIB == pytest.approx(0.67, abs=0.01)
    stored = student_footprint(with_distill(cfg, store_x_t=True), (3, 32, 32), num_members=25_000)
    assert stored.host_peak / 2**40 == pytest.approx(2.23, abs=0.01)
    half = student_footprint(
        with_distill(cfg, target_dtype="bfloat16"), (3, 32, 32), num_members=25_000
    )
    assert half.host_peak / 2**40 == pytest.approx(0.56, abs=0.01)
    # distill.disk_dir: the targets are mapped from local disk; RAM holds the keys and rows.
    disk = student_footprint(
        with_distill(cfg, target_dtype="bfloat16", disk_dir="/nvme"), (3, 32, 32), 25_000
    )
    assert disk.on_disk / 2**40 == pytest.approx(0.56, abs=0.01)
    assert disk.host_peak / GIB == pytest.approx(4.01, abs=0.01)  # 40 B of keys x 99.9M + rows
    fixed = with_distill(cfg, draws_per_row=100)
    assert student_footprint(fixed, (3, 32, 32), num_members=25_000).host_peak / GIB < 30


def with_distill(cfg, **update):
    return cfg.model_copy(update={"distill": cfg.distill.model_copy(update=update)})


def test_an_unknown_member_count_is_one_line() -> None:
    with pytest.raises(ValueError, match="pass num_members"):
        student_footprint(load_config("cifar10_ddpm"), (3, 32, 32))
