"""GPU throughput of the paper-scale path, section by section, written as JSON after each one.

    bash benchmarks/gpu.sh                                 # on the GPU machine (installs wheels)
    python benchmarks/gpu_bench.py --out gpu.json          # the same, the project on the path
    python benchmarks/gpu_bench.py --tiny --out tiny.json  # CPU, tiny models (what CI runs)

Sections run in order of value, each inside its own time budget, and the JSON is rewritten after
each one, so a run cut short by its time limit keeps every section it finished:

1. `env`: the GPU model told apart (H100 SXM / PCIe / NVL, H200 SXM / NVL, A100, L40S: their
   peaks differ by up to 30%), dense peaks per precision, torch / CUDA / cuDNN versions, PyTorch's
   TF32 defaults and `cudnn.benchmark` as found, and the packages' versions and paths (the
   carried wheels show up here), and the FLOPs of one training step (torch.utils.flop_counter).
2. `train_fp32`, `train_tf32`, `train_bf16`: the `cifar10_ddpm` preset's real step
   (`raydefense.diffusion.training.TrainStep`: flips, lr warmup, DDPM loss, grad clip 1.0, fused
   AdamW, EMA 0.9999) on the 35.7M UNet at batch 128. "fp32" is strict fp32 (`train.tf32=false`
   turns TF32 off for convolutions too, which PyTorch leaves on by default); "tf32" is TF32
   convolutions and matmuls; "bf16" is bf16 autocast. Steps/s, samples/s, and MFU = FLOPs per
   step x steps/s / the dense peak of that precision.
3. `scoring`: SecMI_stat (t_sec 100, k 10) and PIA (t = 10..300) images/s.
4. `soft_targets`: DistillMD labelling rows/s (two teachers, 4 draws per row).
5. `sampling`: DualMD's alternating sampler vs one model, images/s (100 DDIM steps).
6. `sd15_step`: an SD-1.5-shaped UNet2DConditionModel (860M parameters, random weights)
   fine-tuned at batch 16, 512 px, bf16 + gradient checkpointing: `sd15_pokemon`'s step.
7. `train_bf16_compile`: bf16 + torch.compile, last (compiling can take minutes).

Bad input is one line on stderr and a non-zero exit, the sections already measured left in the
JSON: a GPU whose peaks the table lacks (exit 2: pass --peak), or a budget too small for the next
section (exit 3). Random weights and images: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

# Dense peaks in TFLOP/s from NVIDIA's datasheets (the sparse figures halved). fp32 is the
# CUDA-core rate; tf32 and bf16 the tensor-core rates.
PEAKS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.5},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H200 SXM": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0},
}


class BenchError(Exception):
    """One line for the user; `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def identify_gpu(name: str, sm_count: int) -> str:
    """The PEAKS key of a CUDA device from its name and multiprocessor count.

    H100 SXM and NVL both have 132 SMs and PCIe 114; the driver's names: "NVIDIA H100 80GB HBM3"
    (SXM), "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200" (SXM), "NVIDIA H200 NVL".
    Raises BenchError (exit 2) for a GPU the table does not know.
    """
    upper = name.upper()
    for family in ("H100", "H200"):
        if family in upper:
            if "NVL" in upper:
                return f"{family} NVL"
            if "PCIE" in upper or (family == "H100" and sm_count == 114):
                return "H100 PCIe" if family == "H100" else "H200 NVL"
            return f"{family} SXM"
    for key in ("A100", "L40S"):
        if key in upper:
            return key
    raise BenchError(
        f"gpu_bench: no peak FLOP/s known for {name!r} ({sm_count} SMs); pass its dense peaks "
        "from the datasheet as --peak fp32=TFLOPS,tf32=TFLOPS,bf16=TFLOPS",
        2,
    )


def parse_peaks(text: str) -> dict[str, float]:
    """ "fp32=66.9,tf32=494.7,bf16=989.4" -> {precision: TFLOP/s}."""
    try:
        peaks = {k.strip(): float(v) for k, v in (p.split("=") for p in text.split(","))}
    except ValueError:
        peaks = {}
    if set(peaks) != {"fp32", "tf32", "bf16"} or min(peaks.values()) <= 0:
        raise BenchError(
            f"gpu_bench: --peak {text!r} is not fp32=X,tf32=Y,bf16=Z (dense TFLOP/s, all > 0)", 2
        )
    return peaks


@dataclass(frozen=True)
class Scale:
    """What one run measures: the full paper scale on a GPU, or tiny models on CPU."""

    tiny: bool
    device: str
    shape: tuple[int, int, int]
    batch: int
    score_batch: int
    gen_batch: int
    gen_steps: int
    warmup: int  # untimed steps before each rate (first calls allocate, autotune, compile)
    max_calls: Optional[int]  # tiny: stop after this many timed calls (CI checks the path)

    @classmethod
    def of(cls, tiny: bool) -> Scale:
        if tiny:
            return cls(True, "cpu", (1, 8, 8), 8, 16, 4, 10, 1, 3)
        return cls(False, "cuda", (3, 32, 32), 128, 256, 64, 100, 5, None)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_rate(
    fn: Callable[[], Any],
    items: int,
    deadline: float,
    device: str,
    warmup: int,
    max_calls: Optional[int] = None,
    min_calls: int = 3,
) -> dict[str, float]:
    """items/s of fn after `warmup` untimed calls, timed until `deadline` (time.monotonic())
    or `max_calls` timed calls.

    The host is never synced inside the timed loop (a sync per call would add the launch
    latency to every call); one sync closes it. Raises BenchError (exit 3) when the warm-up
    leaves no time for `min_calls` timed calls.
    """
    t_warm = time.monotonic()
    for _ in range(warmup):
        fn()
    sync(device)
    per_call = (time.monotonic() - t_warm) / max(warmup, 1)
    if time.monotonic() + min_calls * per_call > deadline:
        raise BenchError("", 3)
    calls, t0 = 0, time.monotonic()
    while calls < min_calls or (time.monotonic() < deadline and calls != max_calls):
        fn()
        calls += 1
    sync(device)
    seconds = time.monotonic() - t0
    return {"per_s": calls * items / seconds, "calls": calls, "seconds": seconds}


# --- sections ---------------------------------------------------------------------------------


def section_env(ctx: Context) -> dict[str, Any]:
    from raydefense.config import load_config
    from raydefense.diffusion.backbones import build_net

    s = ctx.scale
    out: dict[str, Any] = {
        "device": s.device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # As found: PyTorch's defaults are TF32 convolutions on, TF32 matmuls off.
        "default_tf32": {
            "cudnn_conv": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        },
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "packages": {
            name: {"version": getattr(mod, "__version__", None), "path": mod.__file__}
            for name in ("diffusers", "pydantic", "pydantic_core", "numpy", "raydefense")
            for mod in [importlib.import_module(name)]
        },
    }
    if s.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        name = ctx.device_name or props.name
        out.update(
            gpu_name=name,
            sm_count=props.multi_processor_count,
            memory_gib=props.total_memory / 2**30,
            capability=f"{props.major}.{props.minor}",
        )
    else:
        name = ctx.device_name or platform.processor() or "cpu"
        out.update(gpu_name=name if ctx.device_name else None, cpu=platform.processor())
    model_cfg = load_config("cifar10_ddpm").model if not s.tiny else ctx.tiny_model
    out["model_params"] = sum(p.numel() for p in build_net(model_cfg, s.shape).parameters())
    out["batch"] = s.batch
    out["train_flops_per_step"] = ctx.train_flops()
    ctx.env = out
    if ctx.peaks_override is not None:
        out["gpu_model"], out["peaks_tflops"] = "given by --peak", ctx.peaks_override
    elif s.device == "cuda" or ctx.device_name:
        out["gpu_model"] = None
        out["peaks_tflops"] = None
        ctx.write()  # the environment stays in the JSON even when the table lacks this GPU
        sm = out.get("sm_count", 0)
        out["gpu_model"] = identify_gpu(name, sm)
        out["peaks_tflops"] = PEAKS[out["gpu_model"]]
    else:
        out["gpu_model"], out["peaks_tflops"] = None, None  # CPU: no MFU
    return out


def train_section(mode: str) -> Callable[[Context], dict[str, Any]]:
    options = {
        "fp32": {"precision": "fp32", "tf32": False},
        "tf32": {"precision": "fp32", "tf32": True},
        "bf16": {"precision": "bf16", "tf32": False},
        "bf16_compile": {"precision": "bf16", "tf32": False, "compile": True},
    }[mode]
    peak_of = "bf16" if mode.startswith("bf16") else mode

    def run(ctx: Context) -> dict[str, Any]:
        from raydefense.config import load_config
        from raydefense.data.examples import ImageData
        from raydefense.diffusion.schedule import NoiseSchedule
        from raydefense.diffusion.training import TrainStep, prepare_fit

        s = ctx.scale
        preset = load_config("cifar10_ddpm")
        model_cfg = preset.model if not s.tiny else ctx.tiny_model
        # The preset's own step: flips, warmup, grad clip, EMA decay; only the length, the
        # batch (tiny) and the precision change.
        cfg = preset.train.model_copy(
            update={"steps": 10**9, "batch_size": s.batch, "val_rows": 0, **options}
        )
        schedule = NoiseSchedule.of(model_cfg)
        data = ImageData(torch.rand(max(4 * s.batch, 64), *s.shape) * 2 - 1)
        fit = prepare_fit(
            data, model_cfg, cfg, schedule, s.shape, seed=0, model_index=0, device=s.device
        )
        fit.model.train()
        step = TrainStep(fit, cfg, schedule, s.device)
        counter = iter(range(10**9))
        warmup = s.warmup * (4 if mode == "bf16_compile" else 1)
        r = timed_rate(
            lambda: step(next(counter)), s.batch, ctx.deadline, s.device, warmup, s.max_calls
        )
        peaks = ctx.env.get("peaks_tflops")
        out = {
            "precision": {
                "fp32": "strict fp32 (TF32 off for convolutions and matmuls)",
                "tf32": "TF32 convolutions and matmuls",
                "bf16": "bf16 autocast",
                "bf16_compile": "bf16 autocast + torch.compile",
            }[mode],
            "steps_per_s": r["per_s"] / s.batch,
            "samples_per_s": r["per_s"],
            "timed_steps": r["calls"],
            "mfu": ctx.env["train_flops_per_step"] * r["per_s"] / s.batch / (peaks[peak_of] * 1e12)
            if peaks
            else None,
            "mfu_against": f"{peak_of} dense peak" if peaks else None,
        }
        if s.device == "cuda":
            out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        return out

    return run


def frozen_nets(ctx: Context) -> list[Any]:
    from raydefense.config import load_config
    from raydefense.diffusion.backbones import build_net
    from raydefense.diffusion.eps import FrozenEps

    s = ctx.scale
    model_cfg = load_config("cifar10_ddpm").model if not s.tiny else ctx.tiny_model
    torch.manual_seed(0)
    nets = [build_net(model_cfg, s.shape).to(s.device).eval().requires_grad_(False) for _ in "ab"]
    return [FrozenEps(n) for n in nets]


def section_scoring(ctx: Context) -> dict[str, Any]:
    from raydefense.attacks.base import ATTACKS, Query
    from raydefense.config import load_config
    from raydefense.diffusion.schedule import NoiseSchedule

    s, eps = ctx.scale, frozen_nets(ctx)
    x0 = torch.rand(s.score_batch, *s.shape, device=s.device) * 2 - 1
    ids = torch.arange(s.score_batch)
    out: dict[str, Any] = {}
    attacks = ("secmi_stat", "pia")
    start = time.monotonic()
    for i, name in enumerate(attacks):
        a = ATTACKS.get(name)(getattr(load_config("cifar10_ddpm").attacks, name))
        # Each attack gets an equal share of what is left.
        share = start + (ctx.deadline - start) * (i + 1) / len(attacks)
        r = timed_rate(
            lambda a=a: a.score(Query(eps[0], NoiseSchedule(), x0, ids, 0)),
            s.score_batch,
            share,
            s.device,
            1,
            s.max_calls,
        )
        out[f"{name}_images_per_s"] = r["per_s"]
    return out


def section_soft_targets(ctx: Context) -> dict[str, Any]:
    from raydefense.defense.distillmd import SoftTargetLabeller
    from raydefense.diffusion.schedule import NoiseSchedule

    s, eps = ctx.scale, frozen_nets(ctx)
    x0 = torch.rand(s.score_batch, *s.shape) * 2 - 1
    labeller = SoftTargetLabeller(
        {"teacher_1": eps[0], "teacher_2": eps[1]},
        {i: frozenset({f"teacher_{1 + i % 2}"}) for i in range(s.score_batch)},
        NoiseSchedule(),
        draws=4,
        seed=0,
        device=s.device,
    )
    rows = {
        "row_id": np.arange(s.score_batch),
        "shard": np.arange(s.score_batch) % 2,
        "image": x0.numpy(),
    }
    r = timed_rate(lambda: labeller(rows), s.score_batch, ctx.deadline, s.device, 1, s.max_calls)
    return {"rows_per_s": r["per_s"], "draws_per_row": 4}


def section_sampling(ctx: Context) -> dict[str, Any]:
    from raydefense.diffusion.sampling import sample
    from raydefense.diffusion.schedule import NoiseSchedule

    s, eps = ctx.scale, frozen_nets(ctx)
    shape = (s.gen_batch, *s.shape)
    half = time.monotonic() + (ctx.deadline - time.monotonic()) / 2
    rates = {}
    for name, models, until in (("single", eps[:1], half), ("dualmd", eps, ctx.deadline)):
        rates[name] = timed_rate(
            lambda m=models: sample(
                m, NoiseSchedule(), shape, num_steps=s.gen_steps, device=s.device
            ),
            s.gen_batch,
            until,
            s.device,
            1,
            s.max_calls,
        )["per_s"]
    return {
        "ddim_steps": s.gen_steps,
        "single_images_per_s": rates["single"],
        "dualmd_images_per_s": rates["dualmd"],
        "dualmd_vs_single": rates["dualmd"] / rates["single"],
    }


# SD v1.5's UNet2DConditionModel config (random weights: speed does not depend on them).
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
TINY_UNET = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}


def section_sd15_step(ctx: Context) -> dict[str, Any]:
    """Fine-tuning steps/s of an SD-1.5-shaped UNet (the `sd` backbone's network) at batch 16,
    512 px (64 x 64 latents, 77 x 768 text embeddings), bf16 autocast with gradient
    checkpointing, AdamW. Tiny: the tiny pipeline's UNet shapes on CPU (fp32)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from raydefense.diffusion.backbones.sd import SDUNetNet
    from raydefense.diffusion.objectives import ddpm_loss
    from raydefense.diffusion.schedule import NoiseSchedule

    s = ctx.scale
    conf, batch, tokens = (TINY_UNET, 4, (16, 32)) if s.tiny else (SD15_UNET, 16, (77, 768))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**conf)
    if not s.tiny:
        unet.enable_gradient_checkpointing()
    net = SDUNetNet(unet).to(s.device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    side = conf["sample_size"]
    x0 = torch.randn(batch, 4, side, side, device=s.device)
    cond = torch.randn(batch, *tokens, device=s.device)
    schedule = NoiseSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    bf16 = s.device == "cuda"

    def step() -> None:
        t = torch.randint(1000, (batch,), device=s.device)
        with torch.autocast(s.device, dtype=torch.bfloat16, enabled=bf16):
            loss = ddpm_loss(net, schedule, x0, t, torch.randn_like(x0), cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:  # one step, recomputation included
        step()
    flops = float(counter.get_total_flops())
    r = timed_rate(step, batch, ctx.deadline, s.device, 1, s.max_calls)
    peaks = ctx.env.get("peaks_tflops")
    return {
        "params": sum(p.numel() for p in unet.parameters()),
        "batch": batch,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "flops_per_step": flops,
        "steps_per_s": r["per_s"] / batch,
        "samples_per_s": r["per_s"],
        "mfu": flops * r["per_s"] / batch / (peaks["bf16"] * 1e12) if peaks and bf16 else None,
    }


@dataclass(frozen=True)
class Section:
    name: str
    run: Callable[[Context], dict[str, Any]]
    budget_s: float  # of the default 300 s run; --budget scales every section's share
    min_s: float  # (scaled likewise) below this the section cannot measure anything worth keeping


# In order of value; compile last. Budgets sum to 270 s of the 300 s default.
SECTIONS = [
    Section("env", section_env, 20, 2),
    Section("train_fp32", train_section("fp32"), 30, 10),
    Section("train_bf16", train_section("bf16"), 25, 8),
    Section("train_tf32", train_section("tf32"), 25, 8),
    Section("scoring", section_scoring, 30, 10),
    Section("soft_targets", section_soft_targets, 20, 6),
    Section("sampling", section_sampling, 30, 10),
    Section("sd15_step", section_sd15_step, 40, 15),
    Section("train_bf16_compile", train_section("bf16_compile"), 50, 30),
]
DEFAULT_BUDGET_S = 300.0


class Context:
    """What the sections share: the scale, the JSON being written, and the current deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.scale = Scale.of(args.tiny)
        self.out_path = Path(args.out)
        self.device_name: Optional[str] = args.device_name
        self.peaks_override = parse_peaks(args.peak) if args.peak else None
        self.env: dict[str, Any] = {}
        self.deadline = 0.0
        self.started = time.monotonic()
        self.result: dict[str, Any] = {
            "mode": "tiny" if args.tiny else "full",
            "budget_s": args.budget,
            "sections": {},
            "incomplete": None,
        }
        from raydefense.families import UNet2DConfig

        self.tiny_model = UNet2DConfig(block_out_channels=[16, 32], norm_num_groups=8)

    def train_flops(self) -> float:
        """FLOPs of one training step's forward + backward at the run's batch (the optimizer
        and EMA are elementwise noise), counted on the device by torch.utils.flop_counter."""
        from torch.utils.flop_counter import FlopCounterMode

        from raydefense.config import load_config
        from raydefense.diffusion.backbones import build_net

        s = self.scale
        cfg = load_config("cifar10_ddpm").model if not s.tiny else self.tiny_model
        net = build_net(cfg, s.shape).to(s.device)
        x = torch.randn(s.batch, *s.shape, device=s.device)
        t = torch.randint(0, cfg.num_train_timesteps, (s.batch,), device=s.device)
        with FlopCounterMode(display=False) as counter:
            net(x, t).pow(2).mean().backward()
        return float(counter.get_total_flops())

    def write(self) -> None:
        """Rewrite the JSON atomically (a kill mid-write leaves the previous one)."""
        self.result["sections"].setdefault("env", self.env)
        self.result["seconds"] = time.monotonic() - self.started
        tmp = self.out_path.with_name(self.out_path.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str))
        os.replace(tmp, self.out_path)


def run_sections(args: argparse.Namespace) -> int:
    ctx = Context(args)
    wanted = set(args.sections.split(",")) if args.sections else None
    unknown = (wanted or set()) - {s.name for s in SECTIONS}
    if unknown:
        raise BenchError(
            f"gpu_bench: unknown section(s) {sorted(unknown)}; "
            f"choose from {[s.name for s in SECTIONS]}",
            2,
        )
    compile_ok = args.compile == "yes" or (args.compile == "auto" and not args.tiny)
    share = args.budget / DEFAULT_BUDGET_S
    end = ctx.started + args.budget
    for sec in SECTIONS:
        if sec.name != "env" and wanted is not None and sec.name not in wanted:
            continue
        if sec.name == "train_bf16_compile" and not compile_ok:
            continue
        left = end - time.monotonic()
        if left < sec.min_s * share:
            ctx.result["incomplete"] = {"section": sec.name, "seconds_left": left}
            ctx.write()
            raise BenchError(
                f"gpu_bench: {left:.0f} s of --budget {args.budget:.0f} left, section "
                f"{sec.name!r} needs at least {sec.min_s * share:.0f} s; raise --budget or "
                "pick sections with --sections",
                3,
            )
        ctx.deadline = time.monotonic() + min(sec.budget_s * share, left)
        t0 = time.monotonic()
        try:
            result = sec.run(ctx)
        except BenchError as e:
            if e.code != 3 or str(e):
                raise
            ctx.result["incomplete"] = {"section": sec.name, "reason": "budget"}
            ctx.write()
            raise BenchError(
                f"gpu_bench: section {sec.name!r} could not time 3 calls inside its "
                f"{sec.budget_s * share:.0f} s budget; raise --budget",
                3,
            ) from None
        result["section_seconds"] = time.monotonic() - t0
        ctx.result["sections"][sec.name] = result
        ctx.write()
        print(f"{sec.name}: {summary(sec.name, result)}", flush=True)
    print(f"wrote {ctx.out_path} ({time.monotonic() - ctx.started:.0f} s)")
    return 0


def summary(name: str, r: dict[str, Any]) -> str:
    """One printed line per section."""
    if name == "env":
        peaks = r.get("peaks_tflops")
        return (
            f"{r.get('gpu_model') or r['device']}, torch {r['torch']}, "
            f"{r['train_flops_per_step'] / 1e12:.3f} TFLOP per training step"
            + (f", peaks {peaks}" if peaks else "")
        )
    if name.startswith("train_") or name == "sd15_step":
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        return f"{r['steps_per_s']:.2f} steps/s, {r['samples_per_s']:.0f} samples/s{mfu}"
    return ", ".join(
        f"{k} {v:.3g}" for k, v in r.items() if isinstance(v, float) and k != "section_seconds"
    )


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models on CPU, seconds per section")
    p.add_argument("--out", default="gpu_bench.json")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole run, shared by the sections in proportion "
        "(default 300; tiny 120)",
    )
    p.add_argument("--sections", default=None, help="comma-separated subset (env always runs)")
    p.add_argument(
        "--compile",
        choices=["auto", "yes", "no"],
        default="auto",
        help="the bf16+compile section: auto = on CUDA only",
    )
    p.add_argument("--peak", default=None, help="dense peaks: fp32=X,tf32=Y,bf16=Z TFLOP/s")
    p.add_argument(
        "--device-name",
        default=None,
        help="the GPU name to look up in the peak table (default: the driver's)",
    )
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 120.0 if args.tiny else DEFAULT_BUDGET_S
    if args.tiny:
        torch.set_num_threads(1)  # a path check: one thread never waits on a busy core
    elif not torch.cuda.is_available():
        print(
            "gpu_bench: no CUDA device here; run with --tiny for the CPU smoke mode",
            file=sys.stderr,
        )
        return 2
    try:
        return run_sections(args)
    except BenchError as e:
        print(str(e), file=sys.stderr)
        return e.code


if __name__ == "__main__":
    sys.exit(main())
