"""The attack grid: `sweep.attacks` expanded into grid points, each an attack object.

Per query or learned attack, the Cartesian product of value lists over fields of its
`attacks.<name>` section. A point's key `<attack>@<index>` is the name a scoring worker resolves
back into the point's attack (`resolve_attack`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from raydefense.attacks import ATTACKS, Attack
from raydefense.audit.targets import shadows_needed
from raydefense.config import AttacksConfig, ExperimentConfig, first_error
from raydefense.errors import ConfigError


def sweepable_attacks() -> list[str]:
    """Registry names of the attacks a sweep can score: query attacks (per-row scores from eps
    queries) and learned ones (per-row features, then one classifier fit per grid point and
    target during scoring). Generated-image attacks need generation and are not swept."""
    return [n for n in ATTACKS.names() if ATTACKS.get(n).kind in ("query", "learned")]


@dataclass(frozen=True)
class GridPoint:
    """One grid point of one attack: `values` overrides fields of `attacks.<attack>`."""

    attack: str
    index: int
    values: tuple[tuple[str, Any], ...]

    @property
    def key(self) -> str:
        """The attack name the scoring worker resolves (`<attack>@<index>`)."""
        return f"{self.attack}@{self.index}"

    def section(self, cfg: ExperimentConfig) -> Any:
        base = cfg.attacks.section(self.attack)
        assert base is not None, f"attack {self.attack!r} has no settings section"
        return type(base).model_validate({**base.model_dump(), **dict(self.values)})


def grid_points(cfg: ExperimentConfig) -> list[GridPoint]:
    """Expand `sweep.attacks` into grid points (attacks in the given order, each the Cartesian
    product of its fields' value lists).

    Raises:
        ConfigError: one line naming the unknown attack or field and the valid choices, an empty
            or non-list value list, or a grid point the attack's config refuses.
    """
    space = cfg.sweep.attacks
    valid = sweepable_attacks()
    if not space:
        raise ConfigError(
            "sweep.attacks is empty; give a grid per attack, e.g. --set "
            "'sweep.attacks={secmi_stat: {t_sec: [50, 100]}}' (sweepable attacks: "
            f"{', '.join(valid)})"
        )
    points: list[GridPoint] = []
    for name, grid in space.items():
        if name in ATTACKS and name not in valid:
            raise ConfigError(
                f"attack {name!r} in sweep.attacks cannot be swept (a "
                f"{ATTACKS.get(name).kind} attack; sweeps rescore query and "
                f"learned attacks); choose from: {', '.join(valid)}"
            )
        if name not in valid:
            raise ConfigError(
                f"unknown attack {name!r} in sweep.attacks; choose from: {', '.join(valid)}"
            )
        if ATTACKS.get(name).trains_on == "shadow" and not shadows_needed(cfg):
            raise ConfigError(
                f"sweeping {name!r} needs shadow models, which prepare plans only "
                f"when a shadow-trained attack is enabled; add {name} to "
                "attacks.enabled"
            )
        section_type = type(getattr(AttacksConfig(), name))
        fields = sorted(section_type.model_fields)
        if not grid:
            raise ConfigError(
                f"sweep.attacks.{name} is empty; list values for some of its "
                f"fields: {', '.join(fields)}"
            )
        for field, values in grid.items():
            if field not in section_type.model_fields:
                raise ConfigError(
                    f"unknown field {field!r} in sweep.attacks.{name}; valid "
                    f"fields of attacks.{name}: {', '.join(fields)}"
                )
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"sweep.attacks.{name}.{field} must be a non-empty list of "
                    f"values (got {values!r})"
                )
        names = list(grid)
        for i, combo in enumerate(itertools.product(*(grid[f] for f in names))):
            p = GridPoint(name, i, tuple(zip(names, combo)))
            try:
                p.section(cfg)
            except ValidationError as e:
                raise ConfigError(
                    f"sweep.attacks.{name} point {dict(p.values)} is invalid: {first_error(e)[1]}"
                ) from None
            points.append(p)
    return points


def point_attack(cfg: ExperimentConfig, point: GridPoint) -> Attack:
    """The attack object of one grid point."""
    return ATTACKS.get(point.attack)(point.section(cfg), cfg.model.num_train_timesteps)


def resolve_attack(cfg: ExperimentConfig, key: str) -> Attack:
    """`<attack>@<index>` -> that grid point's attack object (what a scoring actor builds)."""
    for p in grid_points(cfg):
        if p.key == key:
            return point_attack(cfg, p)
    raise ConfigError(f"no sweep point {key!r} in sweep.attacks")
