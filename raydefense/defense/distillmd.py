"""DistillMD soft targets (paper Algorithm 2): each member row is labelled only by teachers that
never trained on it.

For K = 2 shards the label of a shard-k row is the other teacher's eps(x_t, t) on the same (x_t, t).
For K > 2 it is the mean of the K - 1 teachers that exclude the row. The labeller re-checks this
against the membership matrix for every row at run time and raises if it would ever be violated
(invariant 3). (t, noise) are seeded per (row, draw), so a retried batch is byte-identical
(invariant 4).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import numpy as np
import torch

from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.diffusion.unet import EpsModel
from raydefense.errors import PrivacyInvariantError
from raydefense.seeding import STREAM_SOFT_TARGET


def auto_draws(steps: int, batch_size: int, num_members: int) -> int:
    """Draws per row so that student training never reuses a (row, t, noise) draw: equivalent
    to Algorithm 2's fresh noise every iteration."""
    return max(1, -(-steps * batch_size // num_members))


def labelling_teachers(owners: frozenset[str], teachers: list[str]) -> list[str]:
    """Teachers allowed to label a row owned by `owners`: every teacher that did not train on it."""
    allowed = [t for t in teachers if t not in owners]
    if not allowed:
        raise PrivacyInvariantError(
            f"no teacher excludes a row owned by {sorted(owners)}; shards must be disjoint")
    return allowed


def draw_t_noise(seed: int, row_id: int, draw: int, num_timesteps: int,
                 shape: tuple[int, ...]) -> tuple[int, np.ndarray]:
    """(t, noise) of one (row, draw): t uniform in [0, T), noise [C, H, W] float32 N(0, I)."""
    rng = np.random.default_rng([seed, row_id, STREAM_SOFT_TARGET, draw])
    t = int(rng.integers(num_timesteps))
    return t, rng.standard_normal(shape, dtype=np.float32)


class SoftTargetLabeller:
    """Maps a batch of member rows to `draws` soft-target examples per row.

    Args:
        teachers: name -> EpsModel (frozen, eval mode).
        owners: row_id -> names of the teachers whose membership includes the row (from the
            membership matrix; exactly one for disjoint shards).
        draws: soft-target draws R per row. seed: the experiment's base seed.
    """

    def __init__(self, teachers: Mapping[str, EpsModel], owners: Mapping[int, frozenset[str]],
                 schedule: NoiseSchedule, draws: int, seed: int,
                 device: torch.device | str = "cpu", max_batch: int = 4096) -> None:
        self.teachers = dict(teachers)
        self.owners = owners
        self.schedule = schedule
        self.draws = draws
        self.seed = seed
        self.device = device
        self.max_batch = max_batch

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Args:
            batch: "row_id" [B] int64, "shard" [B], "image" [B, C, H, W] float32 in [-1, 1].
        Returns:
            B * draws rows: "row_id", "draw", "shard" [N]; "t" [N] int64; "x_t", "target"
            [N, C, H, W] float32; "teachers" [N] str (comma-joined names that labelled the row).
        """
        row_ids = np.asarray(batch["row_id"], dtype=np.int64)
        images = np.asarray(batch["image"], dtype=np.float32)
        shape = images.shape[1:]
        T = self.schedule.num_train_timesteps
        names = sorted(self.teachers)
        n = len(row_ids) * self.draws
        out_row = np.repeat(row_ids, self.draws)
        out_draw = np.tile(np.arange(self.draws, dtype=np.int64), len(row_ids))
        out_shard = np.repeat(np.asarray(batch["shard"]), self.draws)
        t_all = np.empty(n, dtype=np.int64)
        noise = np.empty((n, *shape), dtype=np.float32)
        for i in range(n):
            t_all[i], noise[i] = draw_t_noise(self.seed, int(out_row[i]), int(out_draw[i]), T,
                                              shape)
        x0 = torch.from_numpy(np.repeat(images, self.draws, axis=0))
        x_t = self.schedule.q_sample(x0, torch.from_numpy(t_all), torch.from_numpy(noise))

        # Group items by their set of allowed teachers (one group per shard for K disjoint shards).
        groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
        labelled_by = np.empty(len(row_ids), dtype=object)
        for j, r in enumerate(row_ids.tolist()):
            owners = self.owners.get(r)
            if owners is None:
                raise PrivacyInvariantError(f"row {r} is not a member of any teacher; only member "
                                            "rows get soft targets")
            allowed = labelling_teachers(owners, names)
            if set(allowed) & owners:  # defensive: labelling_teachers must never allow an owner
                raise PrivacyInvariantError(f"row {r} would be labelled by its own teacher")
            labelled_by[j] = ",".join(allowed)
            groups[tuple(allowed)].extend(range(j * self.draws, (j + 1) * self.draws))

        target = torch.empty_like(x_t)
        for allowed, items in groups.items():
            idx = torch.tensor(items, dtype=torch.long)
            xs, ts = x_t[idx], torch.from_numpy(t_all)[idx]
            acc = torch.zeros_like(xs)
            for name in allowed:
                acc += self._eps(self.teachers[name], xs, ts)
            target[idx] = acc / len(allowed)
        return {
            "row_id": out_row, "draw": out_draw, "shard": out_shard, "t": t_all,
            "x_t": x_t.numpy(), "target": target.numpy(),
            "teachers": np.repeat(labelled_by, self.draws).astype(str),
        }

    @torch.no_grad()
    def _eps(self, model: EpsModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = []
        for s in range(0, len(x), self.max_batch):
            xs = x[s:s + self.max_batch].to(self.device)
            parts.append(model(xs, t[s:s + self.max_batch].to(self.device)).float().cpu())
        return torch.cat(parts)
