"""DistillMD soft targets (paper Algorithm 2): each member row is labelled only by teachers that
never trained on it.

For K = 2 shards the label of a shard-k row is the other teacher's eps(x_t, t) on the same (x_t, t).
For K > 2 the K - 1 teachers that exclude the row are all allowed, and `distill.teacher_assignment`
says which of them label it:

- "mean" (default): the mean of all K - 1 allowed teachers' eps(x_t, t).
- "one_other": one allowed teacher, chosen uniformly per row (allowed teachers sorted by name,
  index drawn from numpy's generator keyed by (seed, row_id, STREAM_ASSIGNMENT)). The choice
  depends only on the row, never on the batch, actor or retry, and every draw of the row uses the
  same teacher.

For K = 2 both are the single other teacher and give identical bytes. The output column "teachers"
names the teacher(s) actually used. The labeller re-checks the assignment against the membership
matrix for every row at run time and raises if a row would ever be labelled by a teacher that
trained on it (invariant 3). (t, noise) are seeded per (row, draw), so a retried batch is
byte-identical (invariant 4).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Literal, Optional

import numpy as np
import torch

from raydefense.diffusion.eps import EpsModel
from raydefense.diffusion.noising import noised_inputs
from raydefense.diffusion.sampling import sample
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import PrivacyInvariantError
from raydefense.seeding import STREAM_ASSIGNMENT, STREAM_SYNTHETIC, derive_seed

TEACHER_ASSIGNMENTS = ("mean", "one_other")
TeacherAssignment = Literal["mean", "one_other"]


def auto_draws(steps: int, batch_size: int, num_members: int) -> int:
    """Draws per row so that student training never reuses a (row, t, noise) draw: equivalent
    to Algorithm 2's fresh noise every iteration."""
    return max(1, -(-steps * batch_size // num_members))


# Synthetic rows (distill.synthetic_per_teacher): ids above every pool index, kept below 2**32
# so that derive_seed's 32-bit parts never make a synthetic row's draws a real row's.
SYNTHETIC_ROW_BASE = 2**31
SYNTHETIC_ROWS_PER_TEACHER = 2**20


def synthetic_row_ids(k: int, n: int) -> np.ndarray:
    """[n] int64: the row ids of teacher k's (0-based shard index) synthetic rows."""
    if n > SYNTHETIC_ROWS_PER_TEACHER:
        raise ValueError(f"at most {SYNTHETIC_ROWS_PER_TEACHER} synthetic rows per teacher")
    return SYNTHETIC_ROW_BASE + k * SYNTHETIC_ROWS_PER_TEACHER + np.arange(n, dtype=np.int64)


@torch.no_grad()
def synthetic_images(
    teacher: EpsModel,
    schedule: NoiseSchedule,
    n: int,
    shape: tuple[int, int, int],
    seed: int,
    k: int,
    num_steps: int,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    on_batch: Optional[Callable[[int], None]] = None,
) -> np.ndarray:
    """n DDIM samples of teacher k (`distill.synthetic_per_teacher`, an extension of Algorithm 2:
    extra student inputs that are nobody's member rows). They are owned by the teacher that drew
    them, so only the other teachers label them: a sample that copies one of its teacher's
    members is then treated exactly like that member.

    shape: (C, H, W). Batch b is seeded by (seed, STREAM_SYNTHETIC, k, b). on_batch(done) is
    called after each batch with the samples drawn so far (progress).
    Returns uint8 [n, C, H, W] in [0, 255], as the plan's rows.
    """
    out = []
    for b, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        x = sample(
            [teacher],
            schedule,
            (m, *shape),
            "ddim",
            num_steps,
            seed=derive_seed(seed, STREAM_SYNTHETIC, k, b),
            device=device,
        )
        out.append(np.rint((x.cpu().numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8))
        if on_batch is not None:
            on_batch(start + m)
    return np.concatenate(out) if out else np.zeros((0, *shape), np.uint8)


def labelling_teachers(owners: frozenset[str], teachers: list[str]) -> list[str]:
    """Teachers allowed to label a row owned by `owners`: every teacher that did not train on it."""
    allowed = [t for t in teachers if t not in owners]
    if not allowed:
        raise PrivacyInvariantError(
            f"no teacher excludes a row owned by {sorted(owners)}; shards must be disjoint"
        )
    return allowed


def assigned_teachers(
    owners: frozenset[str],
    teachers: list[str],
    assignment: TeacherAssignment,
    seed: int,
    row_id: int,
) -> list[str]:
    """Teachers whose eps is averaged into the label of row `row_id` (owned by `owners`).

    "mean": every allowed teacher (`labelling_teachers`). "one_other": one of them, chosen
    uniformly by a generator keyed by (seed, row_id, STREAM_ASSIGNMENT), so the choice is a
    function of the row alone (batch- and retry-independent). Raises PrivacyInvariantError if the
    result would contain an owner."""
    allowed = labelling_teachers(owners, sorted(teachers))
    if assignment == "mean":
        used = allowed
    elif assignment == "one_other":
        rng = np.random.default_rng([seed, row_id, STREAM_ASSIGNMENT])
        used = [allowed[int(rng.integers(len(allowed)))]]
    else:
        raise ValueError(
            f"unknown teacher_assignment {assignment!r}; expected one of {TEACHER_ASSIGNMENTS}"
        )
    # defensive: labelling_teachers must never allow an owner
    if set(used) & owners or not set(used) <= set(allowed):
        raise PrivacyInvariantError(f"row {row_id} would be labelled by its own teacher")
    return used


class SoftTargetLabeller:
    """Maps a batch of member rows to `draws` soft-target examples per row.

    Args:
        teachers: name -> EpsModel (frozen, eval mode).
        owners: row_id -> names of the teachers whose membership includes the row (from the
            membership matrix; exactly one for disjoint shards).
        draws: soft-target draws R per row. seed: the experiment's base seed.
        teacher_assignment: "mean" (all allowed teachers averaged) or "one_other" (one allowed
            teacher per row, seeded by row); see the module docstring.
    """

    def __init__(
        self,
        teachers: Mapping[str, EpsModel],
        owners: Mapping[int, frozenset[str]],
        schedule: NoiseSchedule,
        draws: int,
        seed: int,
        device: torch.device | str = "cpu",
        max_batch: int = 4096,
        teacher_assignment: TeacherAssignment = "mean",
        diversify: bool = False,
    ) -> None:
        if teacher_assignment not in TEACHER_ASSIGNMENTS:
            raise ValueError(
                f"unknown teacher_assignment {teacher_assignment!r}; "
                f"expected one of {TEACHER_ASSIGNMENTS}"
            )
        self.teacher_assignment = teacher_assignment
        self.teachers = dict(teachers)
        self.owners = owners
        self.schedule = schedule
        self.draws = draws
        self.seed = seed
        self.device = device
        self.max_batch = max_batch
        self.diversify = diversify

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Args:
            batch: "row_id" [B] int64, "shard" [B], and either "image" [B, C, H, W] float32 in
                [-1, 1] (pixel families) or, for latent text-to-image families, "latent_mean"
                and "latent_std" [B, C, h, w], "emb" [B, K, L, D] (each row's caption
                embeddings) and "n_captions" [B].
        Returns:
            B * draws rows: "row_id", "draw", "shard" [N]; "t" [N] int64; "x_t", "target"
            [N, C, H, W] float32; "teachers" [N] str (comma-joined names of the teachers whose
            eps was averaged into the target, i.e. that actually labelled the row); latent
            families also "caption" [N] int64, the caption the target is conditioned on.
        """
        row_ids = np.asarray(batch["row_id"], dtype=np.int64)
        latent = "latent_mean" in batch
        source = np.asarray(batch["latent_mean" if latent else "image"], dtype=np.float32)
        names = sorted(self.teachers)
        n = len(row_ids) * self.draws
        out_row = np.repeat(row_ids, self.draws)
        out_draw = np.tile(np.arange(self.draws, dtype=np.int64), len(row_ids))
        out_shard = np.repeat(np.asarray(batch["shard"]), self.draws)
        x0 = torch.from_numpy(np.repeat(source, self.draws, axis=0))
        std = n_caps = None
        # Latents: x0 is a posterior draw per (row, draw); the target is conditioned on a caption.
        if latent:
            std = torch.from_numpy(np.repeat(np.asarray(batch["latent_std"]), self.draws, axis=0))
            n_caps = np.repeat(np.asarray(batch["n_captions"]), self.draws)
        t_all, x_t, caption = noised_inputs(
            self.seed, self.schedule, x0, out_row, out_draw, std, n_caps, self.diversify
        )
        cond: Optional[torch.Tensor] = None
        if latent:
            emb = torch.from_numpy(np.asarray(batch["emb"], dtype=np.float32))
            cond = emb[torch.arange(n) // self.draws, torch.from_numpy(caption)]

        # Group items by the teachers that label them (for "mean", one group per shard with K
        # disjoint shards; for "one_other", one group per chosen teacher). All draws of a row
        # share its teachers.
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        labelled_by = np.empty(len(row_ids), dtype=object)
        for j, r in enumerate(row_ids.tolist()):
            owners = self.owners.get(r)
            if owners is None:
                raise PrivacyInvariantError(
                    f"row {r} is not a member of any teacher; only member rows get soft targets"
                )
            used = assigned_teachers(owners, names, self.teacher_assignment, self.seed, r)
            if set(used) & owners:  # defensive: re-checked here, where the labels are made
                raise PrivacyInvariantError(f"row {r} would be labelled by its own teacher")
            labelled_by[j] = ",".join(used)
            groups[tuple(used)].extend(range(j * self.draws, (j + 1) * self.draws))

        target = torch.empty_like(x_t)
        for group, items in groups.items():
            idx = torch.tensor(items, dtype=torch.long)
            xs, ts = x_t[idx], torch.from_numpy(t_all)[idx]
            acc = torch.zeros_like(xs)
            cs = None if cond is None else cond[idx]
            for name in group:
                acc += self._eps(self.teachers[name], xs, ts, cs)
            target[idx] = acc / len(group)
        out = {
            "row_id": out_row,
            "draw": out_draw,
            "shard": out_shard,
            "t": t_all,
            "x_t": x_t.numpy(),
            "target": target.numpy(),
            "teachers": np.repeat(labelled_by, self.draws).astype(str),
        }
        if latent:
            out["caption"] = caption
        return out

    @torch.no_grad()
    def _eps(
        self,
        model: EpsModel,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        parts = []
        for s in range(0, len(x), self.max_batch):
            sl = slice(s, s + self.max_batch)
            xs, ts = x[sl].to(self.device), t[sl].to(self.device)
            out = model(xs, ts) if cond is None else model(xs, ts, cond[sl].to(self.device))
            parts.append(out.float().cpu())
        return torch.cat(parts)
