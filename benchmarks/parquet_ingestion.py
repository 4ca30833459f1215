"""Parquet ingestion into a Ray Train worker vs the same rows from worker memory, local vs S3.

    python benchmarks/parquet_ingestion.py [--rows 20000] [--repeats 3] [--batch 64]
                                           [--no-ray-data]
    python benchmarks/parquet_ingestion.py --tiny   # 256 rows, one round: the path (CI)

Builds a table in the project's own format (an ImagePool of N random 3x32x32 uint8 images, split
by `make_plan`, written by `write_plan` as `prepare/rows.parquet` + membership + plan.json) under a
local root and under `s3://bench/prefix` on a real S3 server on loopback (`LocalS3`, SeaweedFS).
Then one single-worker `TorchTrainer` times every mode side by side, in rounds that interleave
the modes (so load from other jobs spreads over all of them): the in-process modes first, after
one untimed warm-up round, then the Ray Data modes (their read tasks would otherwise still run
while the next in-process mode is timed):

  memory       the uint8 rows already in worker memory: decode to float32 [-1, 1] (as
               `model_training_images`) and draw one epoch of batches (`images[idx]`, as the
               training loop's BatchSource) - the baseline
  parquet/*    the training worker's real path: `read_plan(Storage(root))` (rows.parquet read
               whole through pyarrow.fs, membership, plan.json, validation), then the same decode
               and the same batches
  raydata/*    the alternative design: `ray.data.read_parquet(rows.parquet)` passed as a trainer
               dataset, consumed with `get_dataset_shard(...).iter_torch_batches` (decoded per
               batch in the collate_fn; streaming file order, no shuffle)

Every mode delivers all N rows as float32 batches; a checksum over the delivered pixels must match
the memory baseline. Reported: the median (and the fastest) round, rows/s, MB/s of pixel payload
(N x 3072 bytes), the time to the first batch, the throughput ratio to `memory`, and S3 vs local.
Random pixels are incompressible, like photos under Parquet's Snappy, so the file is about the
pixel size. Both roots are hot (page cache / a loopback server): this measures the software path,
not a network.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from modes import parse_args

EXPERIMENT = "bench"
BUCKET = "bench"
FULL = {"rows": 20_000, "repeats": 3, "batch": 64}
TINY = {"rows": 256, "repeats": 1, "batch": 32}


def build_plan(rows: int, seed: int = 0):
    """A Plan over `rows` random 3x32x32 images (make_plan's default split: half members)."""
    from raydefense.config import DataConfig
    from raydefense.data.plan import make_plan
    from raydefense.data.pool import ImagePool

    rng = np.random.default_rng(seed)
    pool = ImagePool(
        images=rng.integers(0, 256, (rows, 3, 32, 32), dtype=np.uint8),
        labels=rng.integers(0, 10, rows).astype(np.int64),
        name="random32",
    )
    return make_plan(pool, DataConfig(), seed)


def _epoch(images: torch.Tensor, batch: int, seed: int) -> tuple[int, float]:
    """One epoch of batches in a seeded random order, as the training loop indexes its rows."""
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(images)))
    n, check = 0, 0.0
    for i in range(0, len(perm), batch):
        x0 = images[perm[i : i + batch]]
        n += len(x0)
        check += float(x0.sum(dtype=torch.float64))
    return n, check


def _worker(config: dict) -> None:
    """The Ray Train worker: every mode, `repeats` interleaved rounds, one report at the end."""
    import ray.train
    from ray.data.collate_fn import NumpyBatchCollateFn

    import raydefense
    from raydefense.data.pool import to_model_range
    from raydefense.data.tables import decode_images, read_plan
    from raydefense.storage import Storage

    torch.set_num_threads(config["threads"])
    batch, shape = config["batch"], tuple(config["shape"])
    roots = {
        "local": Storage(config["local_root"], EXPERIMENT),
        "s3": Storage(config["s3_root"], EXPERIMENT),
    }
    resident = read_plan(roots["local"]).images  # untimed: the rows already in worker memory

    class Decode(NumpyBatchCollateFn):
        def __call__(self, b: dict) -> torch.Tensor:
            return torch.from_numpy(decode_images(b["image"], shape))

    def memory(r: int) -> tuple:
        t0 = time.perf_counter()
        images = torch.from_numpy(to_model_range(resident))
        first = time.perf_counter() - t0
        return (*_epoch(images, batch, r), first, t0)

    def parquet(where: str):
        def run(r: int) -> tuple:
            t0 = time.perf_counter()
            plan = read_plan(roots[where])
            images = torch.from_numpy(to_model_range(plan.images))
            first = time.perf_counter() - t0
            return (*_epoch(images, batch, r), first, t0)

        return run

    def raydata(where: str):
        def run(r: int) -> tuple:
            shard = ray.train.get_dataset_shard(where)
            t0 = time.perf_counter()
            n, check, first = 0, 0.0, None
            for x0 in shard.iter_torch_batches(batch_size=batch, collate_fn=Decode()):
                if first is None:
                    first = time.perf_counter() - t0
                n += len(x0)
                check += float(x0.sum(dtype=torch.float64))
            return n, check, first, t0

        return run

    # In-process modes first (one untimed warm-up round: imports, S3 connection), then the Ray
    # Data modes, whose read tasks and coordinator would otherwise still be running while the
    # next in-process mode is timed. Rounds interleave the modes within each group.
    groups = [{"memory": memory, "parquet/local": parquet("local"), "parquet/s3": parquet("s3")}]
    if config["ray_data"]:
        groups.append({"raydata/local": raydata("local"), "raydata/s3": raydata("s3")})
    seconds: dict[str, list] = {}
    firsts: dict[str, list] = {}
    checks: dict[str, float] = {}
    for g, modes in enumerate(groups):
        for r in range(-1 if g == 0 else 0, config["repeats"]):
            for m, fn in modes.items():
                n, check, first, t0 = fn(max(r, 0))
                if r < 0:
                    continue
                seconds.setdefault(m, []).append(time.perf_counter() - t0)
                firsts.setdefault(m, []).append(first)
                if n != len(resident):
                    raise RuntimeError(f"{m} delivered {n} rows, expected {len(resident)}")
                checks.setdefault(m, check)
    metrics = {
        "seconds": seconds,
        "first_batch_s": firsts,
        "checksums": checks,
        "rows": int(len(resident)),
        "worker_raydefense": raydefense.__file__,
        "torch_threads": torch.get_num_threads(),
    }
    # Train V2 keeps only metrics reported with a checkpoint in result.metrics.
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "timings.json"), "w") as f:
            json.dump(metrics, f)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, help=f"images in rows.parquet, default {FULL['rows']}")
    p.add_argument(
        "--repeats", type=int, help=f"rounds; the median is reported, default {FULL['repeats']}"
    )
    p.add_argument("--batch", type=int, help=f"default {FULL['batch']}")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the worker (default 1, Ray's default for a 1-CPU "
        "worker; more threads only add contention to these small batches)",
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        default=4,
        help="logical CPUs of the local Ray cluster (Ray Data needs some beside the "
        "trainer's worker)",
    )
    p.add_argument(
        "--no-ray-data",
        dest="ray_data",
        action="store_false",
        help="skip the ray.data.read_parquet modes",
    )
    args = parse_args(p, TINY, FULL)

    import ray
    import ray.data
    import ray.train
    import ray.train.torch

    from raydefense.data.tables import write_plan
    from raydefense.layout import ROWS
    from raydefense.storage import Storage
    from raydefense.testing.local_s3 import LocalS3

    tmp = tempfile.mkdtemp(prefix="raydefense-ingest-")
    t0 = time.perf_counter()
    plan = build_plan(args.rows)
    build_s = time.perf_counter() - t0
    try:
        with LocalS3(os.path.join(tmp, "s3")) as s3:
            s3.create_bucket(BUCKET)
            # Before ray.init: the workers inherit the endpoint and the credentials.
            os.environ.update(s3.env())
            storages = {
                "local": Storage(os.path.join(tmp, "local"), EXPERIMENT),
                "s3": Storage(f"s3://{BUCKET}/prefix", EXPERIMENT),
            }
            sizes = {}
            for where, st in storages.items():
                write_plan(st, plan)
                sizes[where] = st.fs.get_file_info(st.path(ROWS)).size

            os.environ.pop("RAY_ADDRESS", None)
            # The dashboard serves the State API that Ray Train's placement-group cleaner polls
            # (without it the cleaner takes the controller for dead and removes the worker).
            ray.init(
                address="local",
                num_cpus=args.num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                object_store_memory=512 * 1024**2,
                logging_level=logging.WARNING,
            )
            try:
                ctx = ray.data.DataContext.get_current()
                ctx.enable_progress_bars = False
                ctx.print_on_execution_start = False
                datasets = (
                    {
                        w: ray.data.read_parquet(st.path(ROWS), filesystem=st.fs).select_columns(
                            ["image"]
                        )
                        for w, st in storages.items()
                    }
                    if args.ray_data
                    else None
                )
                trainer = ray.train.torch.TorchTrainer(
                    _worker,
                    train_loop_config={
                        "local_root": storages["local"].root_uri,
                        "s3_root": storages["s3"].root_uri,
                        "shape": list(plan.images.shape[1:]),
                        "batch": args.batch,
                        "repeats": args.repeats,
                        "threads": args.threads,
                        "ray_data": args.ray_data,
                    },
                    scaling_config=ray.train.ScalingConfig(num_workers=1),
                    run_config=ray.train.RunConfig(
                        name="parquet-ingestion", storage_path=os.path.join(tmp, "ray_train")
                    ),
                    datasets=datasets,
                )
                m = trainer.fit().metrics
            finally:
                ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the tables, the S3 server's data, Ray Train's run
    print_table(m, sizes, args, plan.images.shape[1:], build_s)


def print_table(
    m: dict, sizes: dict, args: argparse.Namespace, shape: tuple, build_s: float
) -> None:
    rows = m["rows"]
    pixel_mb = rows * int(np.prod(shape)) / 1e6
    med = {k: statistics.median(v) for k, v in m["seconds"].items()}
    first = {k: statistics.median(v) for k, v in m["first_batch_s"].items()}
    base = m["checksums"]["memory"]
    bad = [k for k, c in m["checksums"].items() if abs(c - base) > 1e-6 * max(1.0, abs(base))]
    if bad:
        raise RuntimeError(f"modes delivered different pixels than memory: {bad}")

    best = {k: min(v) for k, v in m["seconds"].items()}
    print(
        f"\nparquet ingestion into a Ray Train worker: {rows:,} rows x 3x32x32 uint8, "
        f"batch {args.batch}, {args.repeats} rounds, {m['torch_threads']} torch thread(s)"
    )
    print(
        f"payload: {pixel_mb:.1f} MB pixels; rows.parquet {sizes['local'] / 1e6:.1f} MB local, "
        f"{sizes['s3'] / 1e6:.1f} MB on S3 (plan built in {build_s:.1f} s)"
    )
    print(f"worker imports raydefense from {m['worker_raydefense']}")
    print(
        "rates from the median round; 'best' is the fastest round (least disturbed by other "
        "load); ratios are throughput / memory throughput"
    )
    print(
        f"{'mode':<14} {'median s':>9} {'best s':>8} {'rows/s':>9} {'MB/s':>7} "
        f"{'1st batch':>10} {'vs memory':>10} {'(best)':>7}"
    )
    for k, s in med.items():
        print(
            f"{k:<14} {s:>9.3f} {best[k]:>8.3f} {rows / s:>9,.0f} {pixel_mb / s:>7.1f} "
            f"{first[k]:>9.3f}s {med['memory'] / s:>10.3f} {best['memory'] / best[k]:>7.3f}"
        )
    pairs = [("parquet", "parquet/local", "parquet/s3"), ("raydata", "raydata/local", "raydata/s3")]
    for name, loc, rem in pairs:
        if loc in med:
            print(
                f"{name}: S3 / local throughput = {med[loc] / med[rem]:.3f} "
                f"(best rounds {best[loc] / best[rem]:.3f})"
            )
    print(
        json.dumps(
            {
                "rows": rows,
                "batch": args.batch,
                "repeats": args.repeats,
                "parquet_bytes": sizes,
                "seconds": m["seconds"],
                "median_s": {k: round(v, 4) for k, v in med.items()},
                "best_s": {k: round(v, 4) for k, v in best.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
