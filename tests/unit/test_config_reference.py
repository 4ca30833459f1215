"""The configuration reference cannot drift: docs/config-reference.md is what `raydefense config
--reference` generates from the schema; `config show` and `config --schema` print the resolved
config and the JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from raydefense.cli import build_parser, config_text
from raydefense.config import ExperimentConfig, load_config
from raydefense.config_reference import reference_markdown

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "config-reference.md"


def test_checked_in_reference_matches_the_schema() -> None:
    assert REFERENCE.read_text() == reference_markdown(), (
        "docs/config-reference.md is stale: regenerate it with "
        "`raydefense config --reference > docs/config-reference.md`"
    )


def test_reference_lists_every_key() -> None:
    text = reference_markdown()

    def keys(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                out += keys(sub, key + ".")
            else:
                out.append(key)
        return out

    missing = [k for k in keys(ExperimentConfig) if f"| `{k}` |" not in text]
    assert not missing and len(keys(ExperimentConfig)) >= 150


def test_config_show_and_schema() -> None:
    args = build_parser().parse_args(["config", "show", "--preset", "smoke", "--set", "seed=3"])
    shown = yaml.safe_load(config_text(args))
    assert shown == load_config("smoke", overrides=["seed=3"]).model_dump(mode="json")
    schema = json.loads(config_text(build_parser().parse_args(["config", "--schema"])))
    assert schema["title"] == "ExperimentConfig" and "data" in schema["properties"]
