"""Prompt-diversification study (text-to-image; paper §3.1, Tables 3-4): the same config with
`data.prompt_diversification` off (the base experiment) and on (`<experiment>-promptdiv`), every
model retrained under each setting (it applies to the baseline too), and one table comparing
them (`raydefense.report.text_to_image`):

    <root>/<base experiment>/promptdiv/summary.json, summary.md

The base report then carries the table with both column groups. Plain Python: the CLI calls
`run_promptdiv`, which runs the pipeline through `raydefense.cli.execute` unless aggregate_only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
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


def run_promptdiv(
    preset: Union[str, Sequence[str], None],
    config: Optional[str],
    overrides: Optional[list[str]],
    force: Optional[list[str]],
    aggregate_only: bool = False,
    run: Optional[Callable[..., Any]] = None,
) -> dict[str, Any]:
    """`raydefense promptdiv`: run the pipeline without and with prompt diversification
    (unless aggregate_only), write promptdiv/summary.{json,md} under the base experiment and
    re-render its report. `run` is the CLI's execute(command, preset, config, overrides, force).

    Raises:
        ConfigError: not a text-to-image config, or the base already diversifies.
        RaydefenseError: (aggregate_only) a run has no results.json yet.
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
    settings = {
        False: (cfg.experiment, []),
        True: (
            promptdiv_experiment(cfg.experiment),
            [
                "data.prompt_diversification=true",
                f"experiment={json.dumps(promptdiv_experiment(cfg.experiment))}",
            ],
        ),
    }
    if not aggregate_only:
        if run is None:
            raise ValueError("run_promptdiv needs `run` (the CLI's execute) unless aggregate_only")
        for on, (experiment, extra) in settings.items():
            log.info(
                "prompt-diversification study: %s (%s)", experiment, DIVERSIFICATION_LABELS[on]
            )
            run("run", preset, config, overrides + extra, force)
    results = {}
    for on, (experiment, _) in settings.items():
        storage = Storage(cfg.storage.root, experiment)
        if not storage.exists(layout.RESULTS):
            raise RaydefenseError(
                f"{experiment} has no results at {storage.uri(layout.RESULTS)}; run "
                "`raydefense promptdiv` (same options) without --aggregate-only first"
            )
        results[DIVERSIFICATION_LABELS[on]] = storage.read_json(layout.RESULTS)
    table = t2i_table(results)
    summary = {
        "experiments": {DIVERSIFICATION_LABELS[on]: e for on, (e, _) in settings.items()},
        **table,
    }
    base = Storage(cfg.storage.root, cfg.experiment)
    base.write_json(layout.PROMPTDIV_SUMMARY, summary)
    base.write_bytes(f"{layout.PROMPTDIV}/summary.md", (t2i_markdown(table) + "\n").encode())
    result(f"raydefense: prompt-diversification study in {base.uri(layout.PROMPTDIV)}")
    result(t2i_markdown(table).split("\n\n")[0])
    if run is not None and not aggregate_only:
        run("report", preset, config, overrides, [])  # the base report gains both columns
    return summary
