"""GPU throughput of the paper-scale path, side by side in one process, written as JSON.

    python benchmarks/gpu_bench.py --out gpu.json            # the 35.7M CIFAR-10 UNet, batch 128
    python benchmarks/gpu_bench.py --tiny --out tiny.json    # CPU, a tiny UNet (CI)

Measured (random weights and images: speed does not depend on them):
- training: the real loop (`raydefense.diffusion.training.fit`: DDPM loss, AdamW, grad clip, EMA,
  the per-report loss check) in fp32, bf16 autocast and bf16 + torch.compile: steps/s and
  samples/s per GPU, and MFU = FLOPs per step (counted by torch.utils.flop_counter on one
  forward + backward) x steps/s / the GPU's dense bf16 peak;
- scoring: SecMI_stat (t_sec 100, k 10) and PIA (t = 10..300) images/s with the attacks' code;
- soft targets: DistillMD labelling rows/s (two teachers, 4 draws per row);
- sampling: DualMD's alternating sampler vs a single model, images/s (100 DDIM steps);
- text-to-image: fine-tuning steps/s of an SD-1.5-shaped UNet2DConditionModel (860M parameters,
  random weights) at batch 16, 512 px, bf16 + gradient checkpointing (`sd15_pokemon`'s step).
`benchmarks/gpu.sh` wraps this with a time limit; benchmarks/RESULTS.md has the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import torch

from raydefense.attacks.base import ATTACKS
from raydefense.config import ModelConfig, TrainConfig, load_config
from raydefense.data.examples import ImageData
from raydefense.defense.distillmd import SoftTargetLabeller
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.eps import FrozenEps
from raydefense.diffusion.sampling import sample
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.training import fit

# Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment; --peak-tflops overrides.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


class _Timer:
    """A Reporter for `fit` that keeps each report's throughput (nothing is stored)."""

    world_rank, world_size = 0, 1

    def __init__(self) -> None:
        self.reports: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir: Optional[str]) -> None:
        self.reports.append(dict(metrics))

    def latest_checkpoint(self) -> None:
        return None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rate(fn: Callable[[], Any], items: int, seconds: float, device: str) -> float:
    """items/s of fn after one warm-up call, over at least `seconds`."""
    fn()
    sync(device)
    done, t0 = 0, time.perf_counter()
    while True:
        fn()
        done += items
        sync(device)
        if time.perf_counter() - t0 >= seconds:
            return done / (time.perf_counter() - t0)


def flops_per_step(model_cfg: ModelConfig, shape: tuple[int, int, int], batch: int) -> float:
    """FLOPs of one training step's forward + backward (the optimizer is noise), counted on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build_net(model_cfg, shape)
    x = torch.randn(batch, *shape)
    t = torch.randint(0, model_cfg.num_train_timesteps, (batch,))
    with FlopCounterMode(display=False) as counter:
        net(x, t).pow(2).mean().backward()
    return float(counter.get_total_flops())


def train_rate(
    model_cfg: ModelConfig,
    shape: tuple[int, int, int],
    batch: int,
    steps: int,
    device: str,
    **options: Any,
) -> dict[str, float]:
    """The training loop's own throughput: the second half of `steps` (the first warms up,
    compiles, and fills the allocator)."""
    half = max(1, steps // 2)
    cfg = TrainConfig(
        steps=2 * half,
        batch_size=batch,
        lr=2e-4,
        log_every=half,
        checkpoint_every=10**9,
        val_rows=0,
        **options,
    )
    images = ImageData(torch.rand(max(4 * batch, 64), *shape) * 2 - 1)
    timer = _Timer()
    fit(images, model_cfg, cfg, NoiseSchedule(), shape, seed=0, model_index=0, reporter=timer,
        device=device)  # fmt: skip
    last = timer.reports[-1]
    return {"samples_per_s": last["samples_per_s"], "steps_per_s": last["samples_per_s"] / batch}


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


def sd_unet_rate(tiny: bool, device: str, steps: int) -> dict[str, Any]:
    """Fine-tuning steps/s of an SD-1.5-shaped UNet (the `sd` backbone's network) at batch 16,
    512 px (64 x 64 latents, 77 x 768 text embeddings), bf16 autocast with gradient
    checkpointing, AdamW: what one `sd15_pokemon` fit runs per step. --tiny: the tiny pipeline's
    UNet shapes on CPU (fp32)."""
    from diffusers import UNet2DConditionModel

    from raydefense.diffusion.backbones.sd import SDUNetNet
    from raydefense.diffusion.objectives import ddpm_loss

    conf, batch, tokens = (TINY_UNET, 4, (16, 32)) if tiny else (SD15_UNET, 16, (77, 768))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**conf)
    if not tiny:
        unet.enable_gradient_checkpointing()
    net = SDUNetNet(unet).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    side = conf["sample_size"]
    x0 = torch.randn(batch, 4, side, side, device=device)
    cond = torch.randn(batch, *tokens, device=device)
    schedule = NoiseSchedule(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    bf16 = device == "cuda"

    def step() -> None:
        t = torch.randint(1000, (batch,), device=device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = ddpm_loss(net, schedule, x0, t, torch.randn_like(x0), cond)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    sps = steps / (time.perf_counter() - t0)
    params = sum(p.numel() for p in unet.parameters())
    return {"params": params, "batch": batch, "steps_per_s": sps, "samples_per_s": sps * batch}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a tiny UNet on CPU, seconds per part")
    p.add_argument("--out", default="gpu_bench.json")
    p.add_argument("--steps", type=int, default=None, help="training steps per mode")
    p.add_argument("--seconds", type=float, default=None, help="seconds per rate measurement")
    p.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                   help="bf16+compile mode: auto = on CUDA only")  # fmt: skip
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        torch.set_num_threads(2)
        model_cfg = ModelConfig(block_out_channels=[16, 32], norm_num_groups=8)
        shape, batch, score_batch, gen_batch, gen_steps = (1, 8, 8), 8, 16, 4, 10
        steps, seconds = args.steps or 8, args.seconds or 0.5
    else:
        model_cfg = load_config("cifar10_ddpm").model
        shape, batch, score_batch, gen_batch, gen_steps = (3, 32, 32), 128, 256, 64, 100
        steps, seconds = args.steps or 200, args.seconds or 10.0
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops or next(
        (v for k, v in BF16_PEAK_TFLOPS.items() if device == "cuda" and k in name), None
    )
    out: dict[str, Any] = {
        "mode": "tiny" if args.tiny else "full",
        "device": device,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "model_params": sum(p.numel() for p in build_net(model_cfg, shape).parameters()),
        "batch": batch,
        "bf16_peak_tflops": peak,
    }
    t_start = time.perf_counter()
    flops = flops_per_step(model_cfg, shape, batch)
    out["train_flops_per_step"] = flops
    modes: dict[str, dict[str, Any]] = {"fp32": {}, "bf16": {"precision": "bf16"}}
    if args.compile == "yes" or (args.compile == "auto" and device == "cuda"):
        modes["bf16+compile"] = {"precision": "bf16", "compile": True}
    out["train"] = {}
    for mode, opts in modes.items():
        r = train_rate(model_cfg, shape, batch, steps, device, **opts)
        r["mfu"] = flops * r["steps_per_s"] / (peak * 1e12) if peak else None
        out["train"][mode] = r
        print(f"train {mode}: {r['steps_per_s']:.2f} steps/s, {r['samples_per_s']:.0f} samples/s")

    torch.manual_seed(0)
    schedule = NoiseSchedule()
    nets = [build_net(model_cfg, shape).to(device).eval().requires_grad_(False) for _ in range(2)]
    eps = [FrozenEps(n) for n in nets]
    x0 = torch.rand(score_batch, *shape, device=device) * 2 - 1
    ids = torch.arange(score_batch)
    out["scoring_images_per_s"] = {}
    for attack in ("secmi_stat", "pia"):
        a = ATTACKS.get(attack)(getattr(load_config("cifar10_ddpm").attacks, attack))
        r = rate(lambda a=a: a.score(eps[0], schedule, x0, ids, 0), score_batch, seconds, device)
        out["scoring_images_per_s"][attack] = r
        print(f"score {attack}: {r:.0f} images/s")

    labeller = SoftTargetLabeller(
        {"teacher_1": eps[0], "teacher_2": eps[1]},
        {i: frozenset({f"teacher_{1 + i % 2}"}) for i in range(score_batch)},
        schedule,
        draws=4,
        seed=0,
        device=device,
    )
    rows = {
        "row_id": np.arange(score_batch),
        "shard": np.arange(score_batch) % 2,
        "image": x0.cpu().numpy(),
    }
    out["soft_target_rows_per_s"] = rate(lambda: labeller(rows), score_batch, seconds, device)
    print(f"soft targets: {out['soft_target_rows_per_s']:.0f} rows/s (4 draws each)")

    gen_shape = (gen_batch, *shape)
    single = rate(
        lambda: sample([eps[0]], schedule, gen_shape, num_steps=gen_steps, device=device),
        gen_batch,
        seconds,
        device,
    )
    dual = rate(
        lambda: sample(eps, schedule, gen_shape, num_steps=gen_steps, device=device),
        gen_batch,
        seconds,
        device,
    )
    out["sampler_images_per_s"] = {
        "single": single,
        "dualmd": dual,
        "dualmd_vs_single": dual / single,
    }
    print(f"sampling ({gen_steps} DDIM steps): single {single:.1f}, DualMD {dual:.1f} images/s")
    out["sd15_unet_finetune"] = sd_unet_rate(args.tiny, device, 3 if args.tiny else 20)
    r = out["sd15_unet_finetune"]
    print(f"SD-1.5-shaped UNet fine-tuning: {r['steps_per_s']:.2f} steps/s at batch {r['batch']}")
    out["seconds"] = time.perf_counter() - t_start
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out} ({out['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
