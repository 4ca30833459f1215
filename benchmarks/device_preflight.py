"""Import every module the device run needs, before anything touches CUDA; one line naming what
is missing and how to carry it. Run by benchmarks/gpu.sh; exits 4 on a missing import."""

from __future__ import annotations

import argparse
import importlib
import sys

# The third-party packages the Ray-free core imports on the device path, and the project's
# modules that benchmarks/gpu_bench.py runs (importing them pulls in the rest).
MODULES = [
    "torch",
    "numpy",
    "yaml",
    "pydantic",
    "pydantic_core",
    "diffusers",
    "safetensors",
    "raydefense.config",
    "raydefense.attacks.base",
    "raydefense.defense.distillmd",
    "raydefense.diffusion.training",
    "raydefense.diffusion.sampling",
    "raydefense.diffusion.backbones.sd",
]
FORBIDDEN = ("ray", "mlflow", "boto3")  # not on the device: the core must not need them


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheels", default=".whl", help="where the carried wheels were looked for")
    args = p.parse_args()
    missing: dict[str, str] = {}  # the module that failed -> the module it lacked
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing[name] = e.name or str(e)
    if missing:
        what = ", ".join(f"{m} (no module {lack!r})" for m, lack in missing.items())
        print(
            f"device_preflight: cannot import {what}; fetch the wheels here with "
            f"`python benchmarks/device_wheels.py` (a package not pinned yet goes into "
            f"benchmarks/device-wheels.txt) and carry {args.wheels}",
            file=sys.stderr,
        )
        return 4
    pulled = sorted(m for m in FORBIDDEN if m in sys.modules)
    if pulled:
        print(
            f"device_preflight: the core imported {pulled}, which the device lacks; "
            "keep them behind raydefense.distributed / the CLI",
            file=sys.stderr,
        )
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
