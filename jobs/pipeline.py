"""Ray job entrypoint for the whole pipeline (or up to one stage).

    ray job submit --working-dir . -- python jobs/pipeline.py --preset digits [--set k=v ...]
"""

from __future__ import annotations

import argparse
import sys

from raydefense.cli import COMMANDS, add_config_args, main


def parse() -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=list(COMMANDS), default="run",
                   help="run (default) or the command to stop after")
    add_config_args(p)
    args = p.parse_args()
    argv = [args.stage]
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
