"""The core must import and run without Ray (Ray lives in raydefense.distributed and the CLI)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import raydefense


def core_modules() -> list[str]:
    out = []
    for m in pkgutil.walk_packages(raydefense.__path__, "raydefense."):
        if m.name.startswith(("raydefense.distributed", "raydefense.cli")):
            continue
        out.append(m.name)
    return out


def test_core_does_not_import_ray():
    mods = core_modules()
    assert "raydefense.pipeline" in mods and "raydefense.attacks.secmi" in mods
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
