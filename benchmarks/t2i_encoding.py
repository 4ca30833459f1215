"""What encoding the rows once (prepare) saves a text-to-image fit, measured side by side.

    python benchmarks/t2i_encoding.py [--steps 30] [--batch 16] [--pipeline tiny]
    python benchmarks/t2i_encoding.py --tiny   # 2 steps at batch 2, 1 thread (CI)

Three ways to run the same fine-tuning step of the `sd` backbone (UNet forward + backward +
AdamW), on the same images and captions, timed in one process:
- cached (raydefense's path): latents drawn from the stored posterior moments, stored caption
  embeddings;
- encode latents per step: the VAE encoder runs on the batch at every step (diffusers'
  train_text_to_image without latent caching), embeddings stored;
- encode both per step: VAE encoder and CLIP text encoder at every step.
Prints steps/s and the ratios. The tiny pipeline's VAE and text encoder are small next to its
UNet, so its saving is a lower bound: SD v1.5's VAE encoder at 512 px costs about as much as a
UNet forward (see benchmarks/RESULTS.md for what was measured here).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from modes import parse_args

from raydefense.config import DataConfig
from raydefense.data.pool import to_model_range
from raydefense.data.sources import load_digits_captioned
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.backbones.sd import SDCodec
from raydefense.diffusion.objectives import ddpm_loss
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.families import SDConfig

SD = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012}
FULL = {"steps": 30, "batch": 16, "threads": 2}
# One thread: on a loaded 2-core CI box two OpenMP threads wait on each other.
TINY = {"steps": 2, "batch": 2, "threads": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, help=f"timed steps per mode, default {FULL['steps']}")
    p.add_argument("--batch", type=int, help=f"default {FULL['batch']}")
    p.add_argument("--pipeline", default="tiny")
    p.add_argument("--threads", type=int, help=f"default {FULL['threads']}")
    args = parse_args(p, TINY, FULL)
    torch.set_num_threads(args.threads)
    cfg = SDConfig(pipeline=args.pipeline, beta_schedule="scaled_linear", **SD)
    codec = SDCodec(cfg)
    pool = load_digits_captioned(DataConfig(source="digits_captioned"))
    assert pool.captions is not None
    n = args.batch * 4
    images = torch.from_numpy(to_model_range(pool.images[:n]))
    captions = [c[0] for c in pool.captions[:n]]
    mean, std = codec.latent_moments(images)
    emb = codec.embed(captions)
    schedule = NoiseSchedule.of(cfg)

    def run(mode: str) -> float:
        torch.manual_seed(0)
        net = build_net(cfg, tuple(images.shape[1:]))  # type: ignore[arg-type]
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        for step in range(args.steps + 2):
            if step == 2:  # two warm-up steps (allocator, first-call overheads)
                t0 = time.perf_counter()
            idx = torch.randint(n, (args.batch,), generator=g)
            if mode == "cached":
                x0 = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)
                cond = emb[idx]
            else:
                m, s = codec.latent_moments(images[idx])
                x0 = m + s * torch.randn(m.shape, generator=g)
                cond = (
                    emb[idx]
                    if mode == "encode_latents"
                    else codec.embed([captions[i] for i in idx.tolist()])
                )
            t = torch.randint(schedule.num_train_timesteps, (args.batch,), generator=g)
            loss = ddpm_loss(net, schedule, x0, t, torch.randn(x0.shape, generator=g), cond)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return args.steps / (time.perf_counter() - t0)

    rates = {m: run(m) for m in ("cached", "encode_latents", "encode_both")}
    out = {
        "pipeline": args.pipeline,
        "batch": args.batch,
        "steps": args.steps,
        "steps_per_s": {k: round(v, 2) for k, v in rates.items()},
        "speedup_cached_vs_encode_latents": round(rates["cached"] / rates["encode_latents"], 2),
        "speedup_cached_vs_encode_both": round(rates["cached"] / rates["encode_both"], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
