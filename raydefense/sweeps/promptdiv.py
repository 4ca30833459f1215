"""Prompt-diversification study (text-to-image; paper §3.1, Tables 3-4): the same config with
`data.prompt_diversification` off (the base experiment) and on (`<experiment>-promptdiv`), every
model retrained under each setting (it applies to the baseline too), and one table comparing
them (`raydefense.report.text_to_image`):

    <root>/<base experiment>/promptdiv/summary.json, summary.md

The base report then carries the table with both column groups. Plain Python: `promptdiv_runs`
plans the two runs and `tabulate_promptdiv` compares them; the `promptdiv` command
(`raydefense.commands`) runs them in between.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Optional, Union

from raydefense import layout
from raydefense.config import load_config
from raydefense.console import result
from raydefense.errors import ConfigError, RaydefenseError
from raydefense.report.text_to_image import DIVERSIFICATION_LABELS, t2i_markdown, t2i_table
from raydefense.run.session import absolutize
from raydefense.storage import Storage

log = logging.getLogger("raydefense")

SUFFIX = "-promptdiv"


def promptdiv_experiment(experiment: str) -> str:
    """Where the diversified run of `experiment` lives."""
    return f"{experiment}{SUFFIX}"


def promptdiv_runs(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Optional[list[str]],
) -> dict[bool, tuple[str, list[str]]]:
    """The study's two runs: diversification off / on -> (its experiment, its overrides: the
    user's, then the setting's).

    Raises:
        ConfigError: not a text-to-image config, or the base already diversifies.
    """
    overrides = list(overrides or [])
    cfg = absolutize(load_config(preset, config, overrides))
    if not cfg.model.conditional:
        raise ConfigError(
            f"raydefense promptdiv compares caption settings of a text-to-image model; "
            f"model.kind={cfg.model.kind} takes no captions: use model.kind=sd (e.g. --preset "
            "tiny_t2i)"
        )
    if cfg.data.prompt_diversification:
        raise ConfigError(
            "raydefense promptdiv runs the base without prompt diversification and "
            f"{promptdiv_experiment(cfg.experiment)} with it: drop "
            "data.prompt_diversification=true from the config"
        )
    on = promptdiv_experiment(cfg.experiment)
    return {
        False: (cfg.experiment, overrides),
        True: (on, [*overrides, "data.prompt_diversification=true",
                    f"experiment={json.dumps(on)}"]),
    }  # fmt: skip


def tabulate_promptdiv(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Optional[list[str]],
) -> dict[str, Any]:
    """Read both runs' report/results.json and write promptdiv/summary.{json,md} under the base
    experiment (`raydefense promptdiv` runs them first, unless --aggregate-only, and re-renders
    the base report after).

    Raises:
        ConfigError: not a text-to-image config, or the base already diversifies.
        RaydefenseError: a run has no results.json yet.
    """
    runs = promptdiv_runs(preset, config, overrides)
    cfg = absolutize(load_config(preset, config, list(overrides or [])))
    results = {}
    for on, (experiment, _) in runs.items():
        storage = Storage(cfg.storage.root, experiment)
        if not storage.exists(layout.RESULTS):
            raise RaydefenseError(
                f"{experiment} has no results at {storage.uri(layout.RESULTS)}; run "
                "`raydefense promptdiv` (same options) without --aggregate-only first"
            )
        results[DIVERSIFICATION_LABELS[on]] = storage.read_json(layout.RESULTS)
    table = t2i_table(results)
    summary = {
        "experiments": {DIVERSIFICATION_LABELS[on]: e for on, (e, _) in runs.items()},
        **table,
    }
    base = Storage(cfg.storage.root, cfg.experiment)
    base.write_json(layout.PROMPTDIV_SUMMARY, summary)
    base.write_bytes(f"{layout.PROMPTDIV}/summary.md", (t2i_markdown(table) + "\n").encode())
    result(f"raydefense: prompt-diversification study in {base.uri(layout.PROMPTDIV)}")
    result(t2i_markdown(table).split("\n\n")[0])
    return summary
