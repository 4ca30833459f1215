"""`raydefense profile`: load a finished run's targets, compute their denoising-error profile
(`raydefense.audit.profile`) and write it as report/timestep_profile.{json,md}."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from raydefense import layout
from raydefense.audit.profile import PROFILE_JSON, PROFILE_MD, profile
from raydefense.config import ExperimentConfig
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError, RaydefenseError
from raydefense.report.profile_tables import profile_markdown
from raydefense.roster import BASELINE, STUDENT, teacher_name
from raydefense.storage import Storage


def run_profile(
    cfg: ExperimentConfig, timesteps: Sequence[int], draws: int, storage: Storage
) -> dict[str, Any]:
    """`raydefense profile`: load the run's plan and its trained targets (the attacks' weights),
    profile them, write report/timestep_profile.{json,md}. In-process on this machine's CPU
    (a few minutes at digits size).

    Raises:
        ConfigError: a latent (text-to-image) model, or bad timesteps/draws.
        RaydefenseError: no trained student or baseline under the experiment yet.
    """
    from raydefense.data.tables import read_plan
    from raydefense.diffusion.backbones import load_eps

    if cfg.model.latent:
        raise ConfigError(
            "raydefense profile measures pixel-space models; model.kind=sd is not supported"
        )
    if draws < 1:
        raise ConfigError(f"--draws {draws} must be at least 1")
    names = [BASELINE] + [teacher_name(k) for k in range(cfg.data.num_shards)] + [STUDENT]
    missing = [m for m in names if not storage.exists(layout.marker(layout.model_dir(m)))]
    if missing:
        raise RaydefenseError(
            f"no trained {', '.join(missing)} under {storage.uri()}; run 'raydefense run' (same "
            "options) first"
        )
    plan = read_plan(storage)
    schedule = NoiseSchedule.of(cfg.model)
    with tempfile.TemporaryDirectory(prefix="raydefense-profile-") as cache:
        models = {
            m: load_eps(
                cfg.model, storage.local_dir(layout.model_dir(m), cache), cfg.attacks.weights
            )
            for m in names
        }
        prof = profile(models, schedule, plan, timesteps, draws, cfg.seed, cfg.attacks.batch_size)
    prof["weights"] = cfg.attacks.weights
    prof["student_inputs"] = {
        "members": cfg.distill.member_inputs,
        "synthetic_per_teacher": cfg.distill.synthetic_per_teacher,
        "public": cfg.distill.public_inputs,
    }
    storage.write_json(PROFILE_JSON, prof)
    storage.write_bytes(PROFILE_MD, profile_markdown(prof).encode())
    return prof
