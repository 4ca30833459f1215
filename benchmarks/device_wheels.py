"""Fetch the wheels the GPU machine lacks into an ignored folder, and check they fit the carry.

    python benchmarks/device_wheels.py                        # cp312 wheels into .whl/
    python benchmarks/device_wheels.py --python-version 3.11  # for this interpreter (CI)

The GPU machine has no network: its Python 3.12 has torch, numpy, safetensors, transformers,
pyarrow, pandas and scikit-learn, but not diffusers or pydantic. Their exact wheels (pinned in
benchmarks/device-wheels.txt) travel inside the working tree, which may hold 64 MiB in all;
`bash benchmarks/gpu.sh` installs them there with `pip install --no-index --no-deps`. This
fetches them (binary wheels only, manylinux x86-64, no dependencies resolved: the list is
complete), removes other versions of the same projects from the folder (two versions of one
project stop the whole install), and prints the sizes: the wheels, the tree that travels with
them (tracked plus untracked-not-ignored files), and their total against the limit. Exit 1 with
one line when pip cannot fetch a pin or the total is over the limit.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = Path(__file__).with_name("device-wheels.txt")
LIMIT_MIB = 64.0
# pip matches manylinux tags exactly: the ones these wheels are built for, newest first.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (28, 27, 24, 17)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def read_pins(path: Path = PINS) -> dict[str, str]:
    """{normalised project name: version} from a `name==version` per line file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            if not version:
                raise SystemExit(f"device_wheels: {path}: {line!r} is not pinned as name==version")
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    """PEP 503 names, as wheel files spell them with underscores."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_project(path: Path) -> tuple[str, str]:
    """(normalised project, version) of a wheel file name."""
    name, version = path.name.split("-")[:2]
    return normalise(name), version


def tree_bytes(root: Path, wheels: Path) -> int:
    """Bytes of what travels with the wheels: tracked and untracked-not-ignored files (in a
    copy that is no git checkout, every file outside the wheel folder)."""
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
    )
    if proc.returncode == 0:
        paths = [root / p for p in proc.stdout.decode().split("\0") if p]
    else:
        paths = [p for p in root.rglob("*") if wheels.resolve() not in p.resolve().parents]
    return sum(p.stat().st_size for p in paths if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dest", default=str(ROOT / ".whl"), help="the (git-ignored) wheel folder")
    p.add_argument("--python-version", default="3.12", help="the device's Python (3.12)")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = p.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    pins = read_pins()
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--python-version",
        args.python_version,
        "--implementation",
        "cp",
        "-d",
        str(dest),
    ]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    proc = subprocess.run(
        cmd + [f"{n}=={v}" for n, v in pins.items()], capture_output=True, text=True
    )
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln] or [proc.stderr.strip()]
        print(f"device_wheels: pip could not fetch the pins: {err[0]}", file=sys.stderr)
        return 1
    kept = []
    for whl in sorted(dest.glob("*.whl")):
        name, version = wheel_project(whl)
        if pins.get(name) == version:
            kept.append(whl)
        else:
            whl.unlink()  # another version, or a project no longer pinned
    missing = set(pins) - {wheel_project(w)[0] for w in kept}
    if missing:
        print(f"device_wheels: no wheel for {sorted(missing)} in {dest}", file=sys.stderr)
        return 1
    wheels = sum(w.stat().st_size for w in kept)
    inside = dest.resolve().is_relative_to(ROOT)
    tree = tree_bytes(ROOT, dest)
    total = wheels + tree
    mib = 2**20
    for w in kept:
        print(f"{w.stat().st_size / mib:8.2f} MiB  {w.name}")
    print(f"{wheels / mib:8.2f} MiB  wheels ({len(kept)}, Python {args.python_version})")
    print(f"{tree / mib:8.2f} MiB  the working tree that travels with them")
    print(f"{total / mib:8.2f} MiB  in all, of the {args.limit_mib:.0f} MiB carry limit")
    if not inside:
        print(f"note: {dest} is outside the repository; the device run reads <repo>/.whl")
    if total > args.limit_mib * mib:
        print(
            f"device_wheels: {total / mib:.1f} MiB is over the {args.limit_mib:.0f} MiB carry "
            "limit; drop untracked files or pins",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
