"""CPU scaling of Ray Train fits, side by side on one local Ray cluster.

    python benchmarks/cpu_scaling.py [--preset digits] [--steps 300]
    python benchmarks/cpu_scaling.py --tiny   # smoke preset's model, 4 steps: the path (CI)

Two ratios, each from fits of the preset's model on its prepared data (same steps, same global
batch), timed in one process:
- DDP: one fit with 2 workers (1 CPU each, gloo) vs the same fit with 1 worker (2 CPUs);
- concurrency: two fits at once (resources.concurrent_fits=2) vs the same two one after the other.
On a 2-core machine neither can beat 1.0 by much: the point is what the orchestration costs.
With --tiny the fits are all start-up, so its ratios only show that the path runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from modes import parse_args

from raydefense.config import load_config
from raydefense.distributed.runtime import init_ray
from raydefense.distributed.train import FitSpec, fit_many
from raydefense.pipeline import stage_prepare
from raydefense.run.context import RunContext
from raydefense.storage import Storage

FULL = {"preset": "digits", "steps": 300}
TINY = {"preset": "smoke", "steps": 4}


def timed_fits(cfg, storage, models: list[str], tag: str, **resources) -> float:
    c = cfg.model_copy(update={"resources": cfg.resources.model_copy(update=resources)})
    specs = [
        FitSpec(model=m, kind="ddpm", model_index=i + 1, run_name=f"{m}-{tag}")
        for i, m in enumerate(models)
    ]
    t0 = time.perf_counter()
    fit_many(c, storage, specs, tracking_uri=None)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", help=f"default {FULL['preset']}")
    p.add_argument("--steps", type=int, help=f"default {FULL['steps']}")
    args = parse_args(p, TINY, FULL)
    root = tempfile.mkdtemp(prefix="raydefense-scaling-")
    cfg = load_config(
        args.preset,
        overrides=[
            f"storage.root={root}",
            f"train.steps={args.steps}",
            f"train.checkpoint_every={args.steps}",
            f"train.log_every={args.steps}",
            "train.val_rows=0",
            "resources.local_num_cpus=4",
        ],
    )
    storage = Storage(cfg.storage.root, cfg.experiment)
    stage_prepare(RunContext(cfg=cfg, storage=storage))
    init_ray(cfg.resources)
    teachers = ["teacher_1", "teacher_2"]
    one = timed_fits(cfg, storage, teachers[:1], "w1", workers_per_model=1, cpus_per_worker=2,
                     torch_threads=2)  # fmt: skip
    two = timed_fits(cfg, storage, teachers[:1], "w2", workers_per_model=2, cpus_per_worker=1,
                     torch_threads=1)  # fmt: skip
    seq = timed_fits(cfg, storage, teachers, "seq", workers_per_model=1, cpus_per_worker=1,
                     concurrent_fits=1, torch_threads=2)  # fmt: skip
    par = timed_fits(cfg, storage, teachers, "par", workers_per_model=1, cpus_per_worker=1,
                     concurrent_fits=2, torch_threads=1)  # fmt: skip
    out = {
        "preset": args.preset,
        "steps": args.steps,
        "batch": cfg.train.batch_size,
        "fit_1_worker_s": one,
        "fit_2_workers_s": two,
        "ddp_speedup": one / two,
        "two_fits_sequential_s": seq,
        "two_fits_concurrent_s": par,
        "concurrency_speedup": seq / par,
    }
    print(
        f"\nCPU scaling, preset={args.preset}, {args.steps} steps at batch {cfg.train.batch_size}"
    )
    print(f"one fit: 1 worker {one:.1f}s, 2 DDP workers {two:.1f}s -> x{one / two:.2f}")
    print(f"two fits: sequential {seq:.1f}s, concurrent {par:.1f}s -> x{seq / par:.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
