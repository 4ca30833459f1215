"""What a DistillMD student's batch costs to assemble, per way of holding its soft targets.

    python benchmarks/soft_target_inputs.py [--examples 20000] [--batches 200] [--batch 128]
    python benchmarks/soft_target_inputs.py --tiny   # 512 examples, a few batches (CI)

For CIFAR-10's pixel shape [3, 32, 32] and SD's latent shape [4, 64, 64], the student's inputs
(x_t, t, the float32 target) for random batches, as `BatchSource` draws them, side by side:

  stored       x_t and targets held in RAM (distill.store_x_t=true, the layout before #28)
  regenerated  x_t remade per batch from the (row, draw) seeds (`RegeneratedInputs`, the
               default), targets in RAM
  disk         regenerated x_t, targets memory-mapped from a file in --disk-dir
               (distill.disk_dir; the file was just written, so its pages are hot: this is the
               software path, not the drive)

Reported per mode: milliseconds per batch (median over rounds), examples/s, host bytes per
example, and the time ratio to `stored`. A check asserts every mode delivers the same bytes.
Context for the ratio: an H100 fp32 step of cifar10_ddpm's 35.7M-parameter UNet at batch 128 is
on the order of 100 ms (benchmarks/gpu_bench.py measures it), SD v1.5's at batch 16 several
hundred; the digits step here is about 60 ms at batch 64.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from raydefense.data.examples import SoftTargetData
from raydefense.data.tables import targets_buffer
from raydefense.defense.footprint import bytes_per_example
from raydefense.diffusion.noising import RegeneratedInputs, noised_inputs
from raydefense.diffusion.schedule import NoiseSchedule

FULL = {"examples": 20_000, "batches": 200, "batch": 128, "rounds": 3}
TINY = {"examples": 512, "batches": 4, "batch": 32, "rounds": 1}
SHAPES = {"pixel [3, 32, 32]": (3, 32, 32), "latent [4, 64, 64]": (4, 64, 64)}


def build(shape: tuple[int, int, int], n: int, draws: int, disk_dir: str) -> dict:
    """The three holdings of the same n examples (n / draws rows, `draws` draws each)."""
    sched = NoiseSchedule()
    rows = n // draws
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((rows, *shape), generator=g) * 2 - 1
    pos = np.repeat(np.arange(rows), draws)
    row_id = pos * 3 + 11
    draw = np.tile(np.arange(draws), rows)
    t, x_t, _ = noised_inputs(7, sched, x0[pos], row_id, draw)
    target = torch.randn((len(pos), *shape), generator=g)
    on_disk = targets_buffer(tuple(target.shape), torch.float32, disk_dir)
    on_disk[:] = target
    group = torch.from_numpy(pos % 2)
    regen = RegeneratedInputs(7, sched, x0, pos, row_id, draw, t)
    tt = torch.from_numpy(t)
    return {
        "stored": SoftTargetData(x_t=x_t, t=tt, target=target, group=group),
        "regenerated": SoftTargetData(x_t=None, t=tt, target=target, group=group, regenerate=regen),
        "disk": SoftTargetData(x_t=None, t=tt, target=on_disk, group=group, regenerate=regen),
    }


def one_round(data: SoftTargetData, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Seconds for every batch, and a checksum of what was delivered."""
    total = 0.0
    t0 = time.perf_counter()
    for idx in batches:
        x_t, t, target = data.inputs(idx), data.t[idx], data.target[idx].float()
        total += float(x_t.sum()) + float(target.sum()) + float(t.sum())
    return time.perf_counter() - t0, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a few batches: the path, for CI")
    ap.add_argument("--examples", type=int, default=FULL["examples"])
    ap.add_argument("--batches", type=int, default=FULL["batches"])
    ap.add_argument("--batch", type=int, default=FULL["batch"])
    ap.add_argument("--disk-dir", default=None, help="where the disk mode maps its targets")
    args = ap.parse_args()
    p = (
        dict(TINY)
        if args.tiny
        else {**FULL, **{k: getattr(args, k) for k in FULL if k != "rounds"}}
    )
    torch.set_num_threads(1)  # one data path per training worker's host thread
    print(
        f"soft-target inputs: {p['examples']} examples, {p['batches']} random batches of "
        f"{p['batch']}, median of {p['rounds']} rounds, 1 thread"
    )
    with tempfile.TemporaryDirectory(prefix="raydefense-bench-", dir=args.disk_dir) as disk:
        for label, shape in SHAPES.items():
            modes = build(shape, p["examples"], 4, disk)
            g = torch.Generator().manual_seed(1)
            batches = [torch.randint(p["examples"], (p["batch"],), generator=g)
                       for _ in range(p["batches"])]  # fmt: skip
            times: dict[str, list[float]] = {m: [] for m in modes}
            sums: dict[str, float] = {}
            for _ in range(p["rounds"]):  # interleaved, so load spreads over every mode
                for m, data in modes.items():
                    secs, sums[m] = one_round(data, batches)
                    times[m].append(secs)
            if len(set(sums.values())) != 1:
                raise SystemExit(f"modes delivered different bytes: {sums}")
            base = statistics.median(times["stored"])
            print(f"\n{label}")
            head = ("mode", "ms/batch", "examples/s", "bytes/example", "vs stored")
            print(f"{head[0]:<12} {head[1]:>9} {head[2]:>11} {head[3]:>14} {head[4]:>10}")
            for m, ts in times.items():
                secs = statistics.median(ts)
                held = bytes_per_example(shape, False, store_x_t=(m == "stored"))
                if m == "disk":
                    held -= 4 * int(np.prod(shape))  # the targets are in the file, not RAM
                ms = 1000 * secs / p["batches"]
                rate = p["batches"] * p["batch"] / secs
                print(f"{m:<12} {ms:>9.2f} {rate:>11.0f} {held:>14,} {secs / base:>9.2f}x")


if __name__ == "__main__":
    main()
