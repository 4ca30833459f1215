"""What a step of each defense's training costs, side by side in one process.

    python benchmarks/defense_costs.py [--preset digits] [--steps 40]
    python benchmarks/defense_costs.py --tiny   # smoke preset's model, 3 steps: the path (CI)

For the preset's model and batch (`train.batch_size`), on the first 512 rows of its pool, each
training mode runs `--steps` steps of the real training loop (`raydefense.diffusion.training.fit`,
after one warm-up step), one mode after another:

  plain        the baseline's, a teacher's and a shadow's step (weight decay costs the same)
  hflip        with random horizontal flips
  dp k=1       DP-SGD (Poisson batch of the same expected size, per-example gradients by
               torch.func, clipping, noise), one (t, noise) draw per row
  dp k=4       DPDM's noise multiplicity 4
  distill      the DistillMD student's step on soft targets
  label        the labeller's work per soft target: one EMA-teacher eps prediction, no grad
               (per example; a batch of `distill.label_batch_size`)

Reported per mode: wall milliseconds and CPU milliseconds (process time, every thread) per step,
and the ratio to `plain`. A defense's training cost is the sum over its fits of steps times its
mode's per-step cost (DualMD: K teachers; the student: its teachers, rows x draws labels and its
own steps; docs/defenses.md). With --tiny the steps are all start-up: it only shows the path runs.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Optional

import torch
from modes import parse_args

from raydefense.config import DPConfig, load_config
from raydefense.data.examples import ImageData, SoftTargetData
from raydefense.data.given import load_pool
from raydefense.data.pool import to_model_range
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.private_step import private_training_of
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.training import fit

FULL = {"preset": "digits", "steps": 40}
TINY = {"preset": "smoke", "steps": 3}
ROWS = 512  # training rows (digits' members): the Poisson batches are drawn from them


class _Reporter:
    world_rank, world_size = 0, 1

    def report(self, metrics: dict, checkpoint_dir: Optional[str]) -> None:
        pass

    def latest_checkpoint(self) -> Optional[str]:
        return None


def _timed(run: Any) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", help=f"default {FULL['preset']}")
    p.add_argument("--steps", type=int, help=f"default {FULL['steps']}")
    args = parse_args(p, TINY, FULL)
    cfg = load_config(args.preset)
    pool, _ = load_pool(cfg.data)
    rows = torch.from_numpy(to_model_range(pool.images[:ROWS]))
    c, h, w = rows.shape[1:]
    shape = (int(c), int(h), int(w))
    sched = NoiseSchedule.of(cfg.model)
    base = cfg.train.for_role("baseline").model_copy(
        update={"val_rows": 0, "log_every": 10**6, "checkpoint_every": 10**6}
    )
    batch = base.batch_size
    g = torch.Generator().manual_seed(0)
    images = ImageData(rows)
    n = 4 * batch
    soft = SoftTargetData(
        x_t=torch.randn((n, *shape), generator=g),
        t=torch.randint(sched.num_train_timesteps, (n,), generator=g),
        target=torch.randn((n, *shape), generator=g),
        group=torch.arange(n) % cfg.data.num_shards,
    )

    def steps_of(data: Any, train: Any, private: Any = None) -> tuple[float, float]:
        """Per-step (wall s, CPU s) of `args.steps` steps after one warm-up step."""
        one = train.model_copy(update={"steps": 1})
        fit(data, cfg.model, one, sched, shape, seed=0, model_index=0, reporter=_Reporter(),
            private=private)  # fmt: skip
        full = train.model_copy(update={"steps": args.steps})
        wall, cpu = _timed(
            lambda: fit(
                data,
                cfg.model,
                full,
                sched,
                shape,
                seed=0,
                model_index=0,
                reporter=_Reporter(),
                private=private,
            )  # fmt: skip
        )
        return wall / args.steps, cpu / args.steps

    modes: dict[str, tuple[float, float]] = {}
    modes["plain"] = steps_of(images, base)
    modes["hflip"] = steps_of(images, base.model_copy(update={"hflip": True}))
    for k in (1, 4):
        dp = base.model_copy(update={"dp": DPConfig(noise_multiplier=1.0, multiplicity=k)})
        modes[f"dp k={k}"] = steps_of(images, dp, private_training_of(dp, ROWS))
    modes["distill"] = steps_of(soft, base)
    teacher = build_net(cfg.model, shape).eval().requires_grad_(False)
    label_batch = min(cfg.distill.label_batch_size, n)
    x, t = soft.x_t[:label_batch], soft.t[:label_batch]  # type: ignore[index]
    with torch.inference_mode():
        teacher(x, t)  # warm-up
        wall, cpu = _timed(lambda: [teacher(x, t) for _ in range(args.steps)])
    modes["label"] = (wall / (args.steps * label_batch), cpu / (args.steps * label_batch))

    plain_wall = modes["plain"][0]
    print(
        f"\ndefense training costs, preset={args.preset}, batch {batch}, {args.steps} steps "
        f"per mode, {torch.get_num_threads()} threads"
    )
    print(f"{'mode':<10} {'wall ms':>9} {'CPU ms':>9} {'x plain':>8}")
    for mode, (wall, cpu) in modes.items():
        unit = "/example" if mode == "label" else ""
        ratio = f"{wall / plain_wall:8.2f}" if mode != "label" else f"{'':>8}"
        print(f"{mode:<10} {1000 * wall:9.3f} {1000 * cpu:9.3f} {ratio}{unit}")
    print(
        json.dumps(
            {
                "preset": args.preset,
                "batch": batch,
                "steps": args.steps,
                "threads": torch.get_num_threads(),
                "ms_per_step": {m: round(1000 * w, 3) for m, (w, _) in modes.items()},
                "cpu_ms_per_step": {m: round(1000 * c, 3) for m, (_, c) in modes.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
