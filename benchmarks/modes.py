"""The two modes every benchmark has: the full measurement, and `--tiny` (CI's smoke mode: the
same code path at sizes that take seconds, so the benchmark cannot rot). Options given on the
command line win over the mode's values."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any


def parse_args(
    parser: argparse.ArgumentParser, tiny: Mapping[str, Any], full: Mapping[str, Any]
) -> argparse.Namespace:
    """Add `--tiny`, parse, and fill every option left unset from the chosen mode."""
    parser.add_argument("--tiny", action="store_true", help=f"CI smoke mode: {dict(tiny)}")
    args = parser.parse_args()
    for key, value in (tiny if args.tiny else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args
