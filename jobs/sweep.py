"""Ray job entrypoint for an attack sweep (`raydefense sweep`).

    ray job submit --working-dir . -- python jobs/sweep.py --preset digits [--set k=v ...]
"""

from __future__ import annotations

import argparse
import sys

from raydefense.cli import add_config_args, main


def parse() -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(p)
    args = p.parse_args()
    argv = ["sweep"]
    if args.preset:
        argv += ["--preset", args.preset]
    if args.config:
        argv += ["--config", args.config]
    for o in args.overrides:
        argv += ["--set", o]
    for f in args.force:
        argv += ["--force", f]
    return argv


if __name__ == "__main__":
    sys.exit(main(parse()))
