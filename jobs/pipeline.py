"""Ray job entrypoint for the whole pipeline (or up to one stage).

ray job submit --working-dir . -- python jobs/pipeline.py --preset digits [--set k=v ...]
"""

from __future__ import annotations

import argparse
import sys

from raydefense.cli import COMMANDS, add_config_args, config_argv, main


def parse() -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--stage",
        choices=list(COMMANDS),
        default="run",
        help="run (default) or the command to stop after",
    )
    add_config_args(p)
    args = p.parse_args()
    return [args.stage, *config_argv(args)]


if __name__ == "__main__":
    sys.exit(main(parse()))
