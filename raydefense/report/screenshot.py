"""Screenshot a report (or any page, e.g. the MLflow UI) with headless Chromium.

    python -m raydefense.report.screenshot runs/digits/report/report.html --out report.png
    python -m raydefense.report.screenshot http://127.0.0.1:5000 --out mlflow.png

Chromium comes from Debian (`apt-get install chromium`); nothing is downloaded at run time.
`colour_fraction` tells a rendered figure (coloured ROC curves, sample grids) from a page whose
images failed to load (text and borders only are grey).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> Optional[str]:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(
    target: str,
    out: str,
    width: int = 1400,
    height: int = 2400,
    timeout_s: float = 120.0,
    budget_ms: int = 5000,
) -> str:
    """Render `target` (a local .html path or a URL) to the PNG `out`; returns out.

    budget_ms: virtual time the page gets to load and run scripts (single-page apps such as the
    MLflow UI need several seconds)."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found; install it (Debian: apt-get install chromium)")
    url = target if "://" in target else "file://" + os.path.abspath(target)
    with tempfile.TemporaryDirectory(prefix="raydefense-chromium-") as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={os.path.abspath(out)}",
            url,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0 or not os.path.isfile(out):
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out


def colour_fraction(png: str, min_saturation: int = 100, min_value: int = 80) -> float:
    """Fraction of clearly coloured pixels (HSV saturation and value over the thresholds, of 255;
    the value bound ignores the noisy hue of near-black anti-aliased text)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        hsv = np.asarray(im.convert("RGB").convert("HSV"))
    return float(((hsv[..., 1] >= min_saturation) & (hsv[..., 2] >= min_value)).mean())


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("target", help="report.html (or a report directory) or a URL")
    p.add_argument("--out", default="report.png")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=2400)
    p.add_argument("--wait-ms", type=int, default=5000, help="virtual time to load (default 5000)")
    args = p.parse_args(argv)
    target = args.target
    if os.path.isdir(target):
        target = os.path.join(target, "report.html")
    try:
        screenshot(target, args.out, args.width, args.height, budget_ms=args.wait_ms)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"raydefense: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {colour_fraction(args.out):.1%} coloured pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
