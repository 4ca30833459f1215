"""Time the pipeline stage by stage (fresh storage root), then a cached rerun, and print both.

    python benchmarks/pipeline_stages.py [--preset digits] [--set KEY=VALUE ...]

Everything runs in one process on the same machine, so the ratios (stage share of the total, cold
vs cached rerun) are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from raydefense.cli import execute


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="raydefense-bench-")
    sets = args.overrides + [
        f"storage.root={root}/runs",
        f"tracking.uri=sqlite:///{root}/mlflow.db",
    ]

    t0 = time.perf_counter()
    results = execute("run", args.preset, None, sets)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    execute("run", args.preset, None, sets)
    cached = time.perf_counter() - t0

    timings = results["timings"]
    stages_total = sum(timings.values())
    print(f"\npipeline stages, preset={args.preset} ({root})")
    print(f"{'stage':<10} {'seconds':>9} {'share':>7}")
    for stage, secs in timings.items():
        print(f"{stage:<10} {secs:>9.1f} {secs / stages_total:>6.1%}")
    print(f"{'stages':<10} {stages_total:>9.1f}")
    print(f"{'wall':<10} {cold:>9.1f}   (incl. Ray start-up and MLflow)")
    print(f"cached rerun: {cached:.1f} s  = {cached / cold:.3f} x the cold run")
    print(
        json.dumps(
            {
                "preset": args.preset,
                "timings": timings,
                "wall_s": round(cold, 1),
                "cached_rerun_s": round(cached, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
