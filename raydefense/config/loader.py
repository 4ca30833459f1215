"""Loading a config: YAML presets shipped with the package (experiment and hardware presets), a
user file that names a preset in `base:`, and `--set a.b=v` overrides checked against the schema."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import (
    ValidationError,
)

from raydefense.config.attack_sections import ATTACK_SETTINGS
from raydefense.config.experiment import ExperimentConfig, first_error
from raydefense.errors import ConfigError
from raydefense.families import DEFAULT_FAMILY, ModelConfig, model_family

DEFAULT_PRESET = "digits"


EXPERIMENT_PRESETS = "raydefense.presets"


HARDWARE_PRESETS = "raydefense.presets.hardware"


# What a hardware preset may set: placement and speed only, never what a model learns or how it
# is audited (so it changes no fingerprint and no number).
HARDWARE_SECTIONS = ("resources",)


def _names(package: str) -> list[str]:
    files = resources.files(package).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def experiment_preset_names() -> list[str]:
    """Presets of what runs (data, model, training, attacks): digits, smoke, ..."""
    return _names(EXPERIMENT_PRESETS)


def hardware_preset_names() -> list[str]:
    """Presets of where it runs (the `resources` section): cpu2, cpu16, ..."""
    return _names(HARDWARE_PRESETS)


def preset_names() -> list[str]:
    return experiment_preset_names() + hardware_preset_names()


def _yaml(package: str, name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files(package).joinpath(f"{name}.yaml").read_text()) or {}


def _preset_dict(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """An experiment preset's tree; a preset may start from another with `base:` (its own
    keys win, merged section by section)."""
    if name in seen:
        raise ConfigError(
            f"experiment preset {name!r} names itself as a base ({' -> '.join(seen)})"
        )
    if name not in experiment_preset_names():
        hint = (
            f" ({name!r} is a hardware preset: add an experiment preset or --config)"
            if name in hardware_preset_names()
            else ""
        )
        raise ConfigError(
            f"unknown experiment preset {name!r}{hint}; choose one of: "
            f"{', '.join(experiment_preset_names())}"
        )
    tree = _yaml(EXPERIMENT_PRESETS, name)
    base = tree.pop("base", None)
    return _deep_merge(_preset_dict(base, (*seen, name)), tree) if base else tree


def _hardware_dict(name: str) -> dict[str, Any]:
    tree = _yaml(HARDWARE_PRESETS, name)
    extra = sorted(set(tree) - set(HARDWARE_SECTIONS))
    if extra:  # a shipped file that breaks the rule is a bug, said plainly
        raise ConfigError(
            f"hardware preset {name!r} sets {', '.join(extra)}; hardware presets "
            f"may only set {', '.join(HARDWARE_SECTIONS)}"
        )
    return tree


def split_presets(presets: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """`--preset` values -> (the experiment preset or None, the hardware presets in order).

    Raises:
        ConfigError: an unknown name, or more than one experiment preset.
    """
    hardware = set(hardware_preset_names())
    unknown = [p for p in presets if p not in hardware and p not in experiment_preset_names()]
    if unknown:
        raise ConfigError(
            f"unknown preset {unknown[0]!r}; experiment presets: "
            f"{', '.join(experiment_preset_names())}; hardware presets: "
            f"{', '.join(sorted(hardware))}"
        )
    experiments = [p for p in presets if p not in hardware]
    if len(experiments) > 1:
        raise ConfigError(
            f"--preset {experiments[0]} and --preset {experiments[1]} are both "
            "experiment presets; give one, plus any hardware presets "
            f"({', '.join(sorted(hardware))})"
        )
    return (experiments[0] if experiments else None), [p for p in presets if p in hardware]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, section by section; a `model` section that names another
    family than the base's starts from the base's schedule only (`switch_family`)."""
    out = dict(base)
    if isinstance(over.get("model"), dict) and isinstance(out.get("model"), dict):
        out["model"] = switch_family(out["model"], over["model"].get("kind"))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_value(text: str) -> Any:
    """`--set` values are YAML scalars/lists: 3, 1e-3, true, null, [32, 64], s3://b/p."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply_override(tree: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r} is not KEY=VALUE (for example train.steps=500)")
    key, value = assignment.split("=", 1)
    set_path(tree, key.strip(), _parse_value(value))


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted config key in a config dict (as `--set` does), checked against the schema.

    Raises:
        ConfigError: one line naming the unknown part of the key and the valid keys there.
    """
    parts = key.split(".")
    node: Any = tree
    known: Any = ExperimentConfig.model_fields
    for i, part in enumerate(parts):
        if known == "free":  # below a dict-typed field (sweep.attacks): any key
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
            continue
        registered = i == 1 and parts[0] == "attacks" and part in ATTACK_SETTINGS
        if not registered and (known is None or part not in known):
            where = ".".join(parts[:i]) or "the top level"
            choices = ", ".join(sorted(known)) if known else "(none: not a section)"
            raise ConfigError(
                f"unknown config key {key!r}: {part!r} is not in {where}; "
                f"valid keys there: {choices}"
            )
        if registered:  # a registered attack's section (ATTACK_SETTINGS)
            sub: Any = ATTACK_SETTINGS.get(part).model_fields
        else:
            annotation = known[part].annotation
            # Optional[Section] (data.captioner): its keys are the section's
            members = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
            if getattr(annotation, "model_fields", None) is None and len(members) == 1:
                annotation = members[0]
            sub = getattr(annotation, "model_fields", None)
            if sub is None and getattr(annotation, "__origin__", None) is dict:
                sub = "free"
        if i == 0 and part == "model":  # the keys of the family the tree selects so far
            current = node.get("model") or {}
            sub = _family_fields(current.get("kind", DEFAULT_FAMILY))
        if i == len(parts) - 1:
            if i == 1 and parts[0] == "model" and part == "kind":  # another family's fields go
                switched = dict(switch_family(node, value))
                node.clear()
                node.update(switched)
            node[part] = value
        else:
            if node.get(part) is None:  # an unset optional section
                node[part] = {}
            node = node[part]
            known = sub


def switch_family(model: dict[str, Any], kind: Any) -> dict[str, Any]:
    """A `model` dict moved to family `kind`: unchanged for its own family (or kind None); for
    another, only the keys every family shares (kind, the noise schedule) are kept, since the
    old family's own fields mean nothing to the new one."""
    if kind is None or kind == model.get("kind", DEFAULT_FAMILY):
        return model
    shared = {k: v for k, v in model.items() if k in ModelConfig.model_fields}
    return {**shared, "kind": kind}


def _family_fields(kind: Any) -> dict[str, Any]:
    """The `model` keys of family `kind` (a ConfigError naming the families when unknown)."""
    return dict(model_family(str(kind)).model_fields)


def load_config(
    preset: Union[str, Sequence[str], None] = None,
    config_file: Optional[str] = None,
    overrides: Optional[list[str]] = None,
) -> ExperimentConfig:
    """Build a config: an experiment preset or a YAML file (which may name a `base:` preset),
    then hardware presets in order (`resources` only), then `--set` overrides.

    `preset`: one name or several (`["digits", "cpu2"]`): at most one experiment preset and any
    number of hardware presets.

    Raises:
        ConfigError: one line naming the bad key or value.
    """
    presets = [preset] if isinstance(preset, str) else list(preset or [])
    preset, hardware = split_presets(presets)
    if preset and config_file:
        raise ConfigError(
            "give either an experiment --preset or --config, not both (hardware "
            "presets combine with either)"
        )
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {config_file!r} does not exist")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {config_file!r} is not valid YAML: {e}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"config file {config_file!r} must hold a mapping of sections")
        base = user.pop("base", None)
        tree = _deep_merge(_preset_dict(base), user) if base else user
    else:
        tree = _preset_dict(preset or DEFAULT_PRESET)
    for name in hardware:
        tree = _deep_merge(tree, _hardware_dict(name))
    for assignment in overrides or []:
        _apply_override(tree, assignment)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as e:
        loc, msg, value = first_error(e)
        if not loc:  # a check across sections: its message names the settings
            raise ConfigError(f"invalid config: {msg}") from None
        raise ConfigError(f"invalid config value at {loc}: {msg} (got {value!r})") from None
