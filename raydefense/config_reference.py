"""The configuration reference, generated from the pydantic schema (`raydefense config
--reference`; checked in as docs/config-reference.md, and a test fails when they differ)."""

from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from raydefense.config import ExperimentConfig, ModelConfig, model_families

HEADER = """# Configuration reference

Generated from the schema in `raydefense/config.py` by `raydefense config --reference`; do not
edit by hand (a test fails when this file and the schema differ). How presets, `--config` files
and `--set` combine: [configuration.md](configuration.md). `raydefense config show --preset NAME`
prints a resolved config; `raydefense config --schema` prints the JSON schema.
"""


def _type_name(annotation: Any) -> str:
    """A short, readable type: `int`, `str | null`, `'ema' | 'raw'`, `list[int]`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple, dict, set):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return ""
    text = json.dumps(value, default=str)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _section(model: type[BaseModel], prefix: str, level: int) -> list[str]:
    doc = " ".join((model.__doc__ or "").split())
    lines = [f"{'#' * level} `{prefix}`", ""]
    if doc and model is not ExperimentConfig:
        lines += [doc, ""]
    rows, subsections = [], []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            subsections.append((sub, f"{prefix}.{name}" if prefix else name))
            continue
        key = f"{prefix}.{name}" if prefix else name
        optional = [a for a in get_args(sub) if isinstance(a, type) and issubclass(a, BaseModel)]
        if optional:  # Optional[Section] (unset by default): a row, and the section's keys
            subsections.append((optional[0], key))
        rows.append(
            f"| `{key}` | {_cell(_type_name(field.annotation))} | {_default(field)} | "
            f"{_cell(field.description or '')} |"
        )
    if rows:
        lines += ["| Key | Type | Default | Description |", "|---|---|---|---|", *rows, ""]
    for sub, key in subsections:
        lines += _section(sub, key, min(level + 1, 4) if prefix else 2)
        if sub is ModelConfig:
            lines += _families(key, 3)
    return lines


def _families(prefix: str, level: int) -> list[str]:
    """One table per registered model family: the fields its schema adds to `model`."""
    lines = []
    for kind, family in model_families().items():
        doc = " ".join((family.__doc__ or "").split())
        caps = [c for c in ("latent", "conditional") if getattr(family, c)]
        lines += [f"{'#' * level} `{prefix}` of `kind: {kind}`", ""]
        lines += [f"{doc} Capabilities: {', '.join(caps) or 'none'}.", ""]
        rows = [
            f"| `{prefix}.{name}` | {_cell(_type_name(field.annotation))} | {_default(field)} | "
            f"{_cell(field.description or '')} |"
            for name, field in family.model_fields.items()
            if name not in ModelConfig.model_fields
        ]
        if rows:
            lines += ["| Key | Type | Default | Description |", "|---|---|---|---|", *rows, ""]
    return lines


def reference_markdown() -> str:
    """docs/config-reference.md: every key of ExperimentConfig with its type, default and
    description, one table per section (section docstrings as their introductions)."""
    body = _section(ExperimentConfig, "", 2)
    body[0] = "## Top level"
    return HEADER + "\n" + "\n".join(body).rstrip() + "\n"


def json_schema() -> str:
    """ExperimentConfig's JSON schema (pydantic), indented."""
    schema = ExperimentConfig.model_json_schema()
    # `model` is validated by its family's schema: one of the registered ones, by `kind`.
    defs = schema.setdefault("$defs", {})
    options = []
    for family in model_families().values():
        sub = family.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[family.__name__] = sub
        options.append({"$ref": f"#/$defs/{family.__name__}"})
    model = schema["properties"]["model"]
    defs.pop(ModelConfig.__name__, None)  # only the families are referenced
    schema["properties"]["model"] = {
        "oneOf": options,
        "discriminator": {"propertyName": "kind"},
        **{k: v for k, v in model.items() if k not in ("$ref", "allOf")},
    }
    return json.dumps(schema, indent=2) + "\n"
