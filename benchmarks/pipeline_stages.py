"""Time the pipeline stage by stage (fresh storage root), then a cached rerun, and print both.

    python benchmarks/pipeline_stages.py [--preset digits] [--set KEY=VALUE ...] [--executor ray]
    python benchmarks/pipeline_stages.py --tiny   # smoke preset shrunk to TINY_SETS, in-process

Everything runs in one process on the same machine, so the ratios (stage share of the total, cold
vs cached rerun) are measured side by side. --tiny runs every stage on a handful of rows and
steps (the tests' tiny config) on the in-process executor (`--executor local`: no Ray start-up
or Ray Train trainers, whose fixed costs would be all it measured), so it checks the path, not
the shares; the Ray path of the pipeline is the e2e tests'.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from raydefense.commands import execute

# The smoke preset shrunk to seconds per stage, as tests/conftest.py's tiny_config; --set wins.
TINY_SETS = [
    "data.num_members=16",
    "data.num_nonmembers=16",
    "train.steps=4",
    "train.batch_size=8",
    "train.checkpoint_every=2",
    "train.log_every=2",
    "distill.draws_per_row=2",
    "attacks.bootstrap=20",
    "attacks.loss.draws=2",
    "attacks.secmi_stat.t_sec=20",
    "sampling.num_images=4",
    "sampling.num_steps=4",
    "sampling.quality_draws=1",
    # Two query attacks: no shadow or reference models to train, so the path stays seconds long
    # (the attack suite has its own benchmark).
    "attacks.enabled=[loss, secmi_stat]",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CI smoke mode: smoke preset, TINY_SETS")
    p.add_argument("--preset", help="default digits (--tiny: smoke)")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--executor", choices=("ray", "local"), help="default ray (--tiny: local)")
    args = p.parse_args()
    args.preset = args.preset or ("smoke" if args.tiny else "digits")
    args.executor = args.executor or ("local" if args.tiny else "ray")
    root = tempfile.mkdtemp(prefix="raydefense-bench-")
    sets = (TINY_SETS if args.tiny else []) + args.overrides
    sets += [f"storage.root={root}/runs", f"tracking.uri=sqlite:///{root}/mlflow.db"]

    t0 = time.perf_counter()
    results = execute("run", args.preset, None, sets, executor=args.executor)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    execute("run", args.preset, None, sets, executor=args.executor)
    cached = time.perf_counter() - t0

    timings = results["timings"]
    stages_total = sum(timings.values())
    print(f"\npipeline stages, preset={args.preset}, executor {args.executor} ({root})")
    print(f"{'stage':<10} {'seconds':>9} {'share':>7}")
    for stage, secs in timings.items():
        print(f"{stage:<10} {secs:>9.1f} {secs / stages_total:>6.1%}")
    print(f"{'stages':<10} {stages_total:>9.1f}")
    print(f"{'wall':<10} {cold:>9.1f}   (incl. the executor's start-up and MLflow)")
    print(f"cached rerun: {cached:.1f} s  = {cached / cold:.3f} x the cold run")
    print(
        json.dumps(
            {
                "preset": args.preset,
                "executor": args.executor,
                "timings": timings,
                "wall_s": round(cold, 1),
                "cached_rerun_s": round(cached, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
