"""Attack scoring throughput against the raw UNet rate of the same model and batch.

    python benchmarks/attack_throughput.py [--preset digits] [--batch 256] [--threads 2]
    python benchmarks/attack_throughput.py --tiny   # smoke preset, batch 16, 0.2 s a rate (CI)

For each attack the ideal rate is `unet_rate / unet_passes_per_image` (forward passes; GSA counts a
forward+backward pass against the measured forward+backward rate). The printed ratio
`measured / ideal` is the efficiency of the attack code around the UNet (goal >= 0.8): everything
is timed in one process, side by side, on the same random-weight model (speed does not depend on
the weights). Attacks that make no eps queries of their own (DualMD's router attack, the
reference and combined attacks: they recombine other attacks' score columns) and the attacks on
generated images have no rate here: one line names them.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from modes import parse_args

from raydefense.attacks.base import ATTACKS, Query
from raydefense.config import load_config
from raydefense.diffusion.backbones import build_net
from raydefense.diffusion.eps import FrozenEps
from raydefense.diffusion.schedule import NoiseSchedule

# Why an attack kind has no rate here (no UNet pass per audited image of its own).
SKIPPED_KINDS = {
    "generated": "they score generated images by distance",
    "adaptive": "they recombine other attacks' score columns",
    "reference": "they recombine other attacks' score columns",
    "combined": "they recombine other attacks' score columns",
}
FULL = {"preset": "digits", "batch": 256, "threads": 2, "seconds": 3.0}
# One thread: on a loaded 2-core CI box two OpenMP threads wait on each other (a batch-16
# forward took 1-4 s instead of 0.01 s).
TINY = {"preset": "smoke", "batch": 16, "threads": 1, "seconds": 0.2}


def unet_passes(attack: Any) -> float:
    """UNet passes per image that the attack's math needs (no overhead)."""
    c = attack.cfg
    name = attack.name
    if name == "loss":
        return len(c.timesteps) * c.draws
    if name in ("secmi_stat", "secmi_nn"):
        return c.t_sec // c.k + 1
    if name in ("pia", "pian"):
        return 1 + len(attack.timesteps)
    if name == "sima":
        return len(attack.timesteps)
    if name in ("gsa1", "gsa2"):
        return c.num_timesteps  # forward+backward passes (one per timestep)
    raise KeyError(name)


def rate(fn: Callable[[], Any], n_images: int, min_seconds: float = 3.0) -> float:
    fn()  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        fn()
        done += n_images
    return done / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", help=f"default {FULL['preset']}")
    p.add_argument("--batch", type=int, help=f"default {FULL['batch']}")
    p.add_argument("--threads", type=int, help=f"default {FULL['threads']}")
    p.add_argument("--seconds", type=float, help=f"per rate, default {FULL['seconds']}")
    args = parse_args(p, TINY, FULL)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.preset)
    schedule = NoiseSchedule(
        cfg.model.num_train_timesteps, cfg.model.beta_start, cfg.model.beta_end
    )
    torch.manual_seed(0)
    unet = build_net(cfg.model, (1, 8, 8)).eval().requires_grad_(False)
    eps = FrozenEps(unet)
    B = args.batch
    x = torch.rand(B, 1, 8, 8) * 2 - 1
    ids = torch.arange(B)
    t = torch.full((B,), 100, dtype=torch.long)
    fwd = rate(lambda: eps(x, t), B, args.seconds)

    def fwd_bwd() -> None:
        u = unet.requires_grad_(True)
        loss = u(x, t).pow(2).mean()
        loss.backward()
        u.zero_grad(set_to_none=True)
        u.requires_grad_(False)

    fb = rate(fwd_bwd, B, args.seconds)
    print(f"\nattack throughput, preset={args.preset}, batch={B}, threads={args.threads}")
    print(f"UNet forward: {fwd:,.0f} images/s; forward+backward: {fb:,.0f} images/s")
    print(f"{'attack':<12} {'passes':>7} {'images/s':>10} {'ideal':>10} {'ratio':>6}")
    skipped: dict[str, list[str]] = {}
    for name in cfg.attacks.enabled:
        cls = ATTACKS.get(name)
        if cls.kind in SKIPPED_KINDS:
            skipped.setdefault(SKIPPED_KINDS[cls.kind], []).append(name)
            continue
        attack = cls(getattr(cfg.attacks, name), cfg.model.num_train_timesteps)
        passes = unet_passes(attack)
        base = fb if attack.access == "white-box" else fwd
        if attack.kind == "query":
            fn = lambda a=attack: a.score(Query(eps, schedule, x, ids, cfg.seed, cache={}))  # noqa: E731
        else:
            fn = lambda a=attack: a.features(Query(eps, schedule, x, ids, cfg.seed, cache={}))  # noqa: E731
        got = rate(fn, B, args.seconds)
        ideal = base / passes
        print(f"{name:<12} {passes:>7g} {got:>10,.1f} {ideal:>10,.1f} {got / ideal:>6.2f}")
    if skipped:
        why = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in skipped.items())
        print(f"skipped, no eps queries of their own: {why}")


if __name__ == "__main__":
    main()
