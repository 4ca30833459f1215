"""Ray job entrypoint for a sweep (`raydefense sweep`): attack hyperparameters, or training
hyperparameters with `--set sweep.kind=training`.

    ray job submit --working-dir . -- python jobs/sweep.py --preset digits [--set k=v ...]
"""

from __future__ import annotations

import argparse
import sys

from raydefense.cli import add_config_args, config_argv, main


def parse() -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_config_args(p)
    args = p.parse_args()
    return ["sweep", *config_argv(args)]


if __name__ == "__main__":
    sys.exit(main(parse()))
