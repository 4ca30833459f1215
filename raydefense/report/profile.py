"""`raydefense profile`: load a finished run's targets, compute their denoising-error profile
(`raydefense.audit.profile`) and write it as report/timestep_profile.{json,md}."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from raydefense import layout
from raydefense.audit.profile import PROFILE_JSON, PROFILE_MD, profile
from raydefense.config import ExperimentConfig
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError, RaydefenseError
from raydefense.report.markdown import markdown_table
from raydefense.roster import BASELINE, STUDENT, teacher_name
from raydefense.storage import Storage


def profile_markdown(prof: Mapping[str, Any]) -> str:
    """The profile as two Markdown tables (per target, and the student's decomposition)."""
    ts = prof["timesteps"]
    lines = [
        f"## Denoising error by timestep ({prof['n_members']} test members, "
        f"{prof['n_nonmembers']} test non-members, {prof['draws']} noise draws per row)",
        "",
        "Cells: eps-MSE on the target's members / on non-members (the loss attack's AUC at that "
        "single timestep; below 0.5: members have the larger error).",
        "",
    ]
    rows = []
    for name, line in prof["targets"].items():
        rows.append(
            [name]
            + [
                f"{m:.4f} / {n:.4f} ({a:.2f})"
                for m, n, a in zip(line["member"], line["nonmember"], line["auc"])
            ]
        )
    lines.append(markdown_table(["target"] + [f"t={t}" for t in ts], rows))
    dec = prof.get("student_decomposition")
    if dec:
        lines += [
            "",
            "The student's gap, taken apart: on its members it was fitted to the labelling "
            "teachers' predictions, so its error there follows theirs; on non-members its error "
            "is its own generalisation. Equal rows at every t leave the error attacks nothing.",
            *_inputs_caveat(prof.get("student_inputs", {})),
            "",
            markdown_table(
                ["eps-MSE"] + [f"t={t}" for t in ts],
                [
                    [label] + [f"{v:.4f}" for v in dec[key]]
                    for label, key in (
                        ("student on its members", "student_on_members"),
                        ("labelling teachers on those members", "labellers_on_members"),
                        ("student on non-members", "student_on_nonmembers"),
                        ("teachers on non-members (mean)", "teachers_on_nonmembers"),
                    )
                ],
            ),
        ]
    return "\n".join(lines) + "\n"


def _inputs_caveat(inputs: Mapping[str, Any]) -> list[str]:
    """A line for a student distilled on more than (or other than) its members."""
    if inputs.get("members", True) and not inputs.get("public"):
        return []
    parts = [] if inputs.get("members", True) else ["its members were never its inputs"]
    if inputs.get("synthetic_per_teacher"):
        parts.append("teachers' samples, each labelled by the teachers that did not draw it")
    if inputs.get("public"):
        parts.append("public rows, labelled by every teacher")
    return [
        "This student distilled on other inputs (" + "; ".join(parts) + "): the labelling "
        "teachers' row is each member's non-owner teachers, for comparison."
    ]


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
    from raydefense.diffusion.backbones import is_latent, load_eps

    if is_latent(cfg.model):
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
