"""The denoising-error profile as Markdown (report/timestep_profile.md): per target's error by
timestep, and the student's decomposition. Rendering only; `raydefense.run.profile_command`
computes the profile and writes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from raydefense.report.markdown import markdown_table


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
