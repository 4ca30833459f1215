"""CLiD: membership inference on text-to-image diffusion models via the Conditional Likelihood
Discrepancy (Zhai et al., NeurIPS 2024, arXiv 2405.14800), its threshold form CLiD_th.

Source. The paper (https://arxiv.org/html/2405.14800v3, https://arxiv.org/html/2405.14800v2;
read from a stored copy of its text) argues that a fine-tuned text-to-image model overfits the
conditional distribution p(x | caption) more than the marginal p(x), and measures, per
image-caption pair, log p(x | c) - log p(x) through the two ELBOs: the denoising error under a
weakened condition minus the error under the caption, estimated on shared (t, noise) pairs
(their Eqs. 12-14). The weakened conditions are k = 4 reductions c*_1..c*_k of the caption, the
last being the null (empty) prompt; D_i = E_{t, eps}[|eps(x_t, t, c*_i) - eps|^2 -
|eps(x_t, t, c) - eps|^2], and CLiD is their mean over i. The conditional term is
L = -E_{t, eps}|eps(x_t, t, c) - eps|^2 (their Eq. 15), reusing the same queries. CLiD_th
(their Eq. 16) thresholds alpha * S(CLiD) + (1 - alpha) * S(L), S a robust scaler ((a - centre)
/ IQR over the scored data set); alpha is fitted on a shadow model. Their reduction (Sec. 3.5,
App. D.2, "importance clipping", the best of three they compare) computes the importance of the
caption's words with a cross-attention attribution (DAAM, via PromptCharm) and replaces the
30 %, 50 %, 70 % most important ones by the tokenizer's pad token, plus the null prompt. Monte
Carlo (App. D.1): t in {440, 450, 460} with one noise per t (M = N = 3), so 3 + 4 * 3 = 15 eps
queries per row; more than 3 samples help only slightly (their Fig. 3). Sign: members have the lower
conditional error (higher L) and the larger discrepancy (higher CLiD).

Here. Per row and configured t (for T = 1000, scaled by `scaled_timestep`) and draw, one noise
(seeded by (seed, row, STREAM_CLID, t): a row's scores never depend on its batch) builds x_t, and
eps is queried under the caption's embedding (`TextBatch.cond`), under each weakened caption
(`replace_fractions`), and under the null prompt (`TextBatch.null`); err = mean over C, h, w of
the squared error. Columns (`settings()`): "loss" = L; "clid" = CLiD (mean over the
len(replace_fractions) + 1 weakened conditions of err_weak - err_cond); and one "combined" column
per alpha: (1 - alpha) * L + alpha * CLiD. Higher = member in every column.

Deviations, our choices:
- Scaling. The robust scaler needs the statistics of the whole scored set, which a per-row query
  attack does not see (a row's score must not depend on what else is scored), so the combined
  columns use the raw terms. This loses nothing the evaluation can see: S is an affine map per
  term, so alpha_s * S(CLiD) + (1 - alpha_s) * S(L) is, up to an additive constant and a positive
  factor (which change no rank, AUC, TPR at a fixed FPR or threshold choice), the raw combination
  with alpha = alpha_s * IQR_L / (alpha_s * IQR_L + (1 - alpha_s) * IQR_CLiD). The paper's one-
  parameter family is therefore the raw family; only where the grid points fall differs, which is
  why the default grid reaches 0.99 (we expect CLiD to spread much less than the loss; not
  measured here).
- Choosing alpha. They fit alpha on a shadow model; here every alpha is a column and the report's
  rule "best setting chosen on the calibration split" picks it on held-out calibration rows.
- Token importance. The gray-box interface (eps queries) exposes no cross-attention maps, so
  importance is our cheap, deterministic, query-free proxy (text-encoder calls only): how far
  the caption's text-encoder states move when that token alone is replaced by the end-of-text
  token, measured over the end token and padding positions (in CLIP's causal encoder they
  attend to the whole caption, so a token's position does not inflate its importance); ties go
  to the earlier token (`token_importance_order`). Tokens are the tokenizer's (sub-word)
  tokens, not words.
- Replacement. The caption's n tokens are positions 1..n, before the first end-of-text token
  (never the start token, the end token or padding); a fraction f replaces the top
  k = min(n, max(1, floor(f * n + 0.5))) of them by `TextBatch.end_id` (CLIP's pad token in SD
  v1, which the paper's "pad" is); a caption with no tokens keeps its ids (it is the null prompt).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from raydefense.attacks.base import (
    ATTACKS,
    Query,
    TextBatch,
    TextQueryAttack,
    check_cond,
    check_timesteps,
    scaled_timestep,
)
from raydefense.config import CLiDConfig
from raydefense.seeding import STREAM_CLID, per_row_normal

# Token-importance variants embedded per text-encoder call.
EMBED_CHUNK = 256


def caption_lengths(ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """[N, L] padded ids (position 0 = start token) -> [N] long: the number of caption tokens,
    the positions 1..n before the first end-of-text token (L - 1 when there is none)."""
    body = ids[:, 1:] == end_id
    first = body.int().argmax(1).long()  # index of the first end token among positions 1..
    return torch.where(body.any(1), first, torch.full_like(first, ids.shape[1] - 1))


def replaced_count(fraction: float, n: int) -> int:
    """How many of a caption's n tokens a fraction replaces: round half up, at least one, at most
    n (0 when the caption has no tokens)."""
    if n <= 0:
        return 0
    return min(n, max(1, math.floor(fraction * n + 0.5)))


def token_importance_order(
    ids: torch.Tensor, end_id: int, embed_ids: Any, chunk: int = EMBED_CHUNK
) -> list[list[int]]:
    """Per row, its caption-token positions (1..n), most important first. A token's importance
    is how far the text encoder's states move when that token alone is replaced by `end_id`:
    the Frobenius norm of the change over positions n+1..L-1 (the caption's end token and the
    padding after it, which in CLIP's causal encoder attend to the whole caption, so no token
    gains from its position; all positions when a caption fills L). Ties go to the earlier."""
    lengths = caption_lengths(ids, end_id)
    n = lengths.tolist()
    length = ids.shape[1]
    # One variant per (row, caption token): that token alone replaced by end_id.
    rows = torch.tensor([r for r, nr in enumerate(n) for _ in range(nr)], dtype=torch.long)
    cols = torch.tensor([j for nr in n for j in range(1, nr + 1)], dtype=torch.long)
    if len(rows) == 0:
        return [[] for _ in n]
    base = _embed(ids, embed_ids, chunk)
    pos = torch.arange(length)
    tail = pos[None, :] > lengths[:, None]  # [N, L]: after the caption's tokens
    tail[~tail.any(1)] = True
    norms = []
    for i in range(0, len(rows), chunk):  # only the norms are kept: [chunk, L, D] at a time
        r, j = rows[i : i + chunk], cols[i : i + chunk]
        v = ids[r].clone()
        v[torch.arange(len(r)), j] = end_id
        e = embed_ids(v).float()
        rd = r.to(e.device)
        sq = (e - base[rd]).pow(2).sum(-1) * tail[r].to(e.device)  # [chunk, L]
        norms.append(sq.sum(1).sqrt().cpu())
    shift = torch.cat(norms)
    order: list[list[int]] = []
    start = 0
    for nr in n:
        s = shift[start : start + nr]
        rank = torch.argsort(-s, stable=True).tolist()
        order.append([1 + i for i in rank])
        start += nr
    return order


def weaken(ids: torch.Tensor, order: list[list[int]], fraction: float, end_id: int) -> torch.Tensor:
    """[N, L] ids with each row's top replaced_count(fraction, n) tokens (by `order`) set to
    end_id; the start token, end token and padding are never touched."""
    out = ids.clone()
    for r, positions in enumerate(order):
        k = replaced_count(fraction, len(positions))
        if k:
            out[r, torch.tensor(positions[:k], dtype=torch.long)] = end_id
    return out


def _embed(ids: torch.Tensor, embed_ids: Any, chunk: int) -> torch.Tensor:
    parts = [embed_ids(ids[i : i + chunk]).float() for i in range(0, len(ids), chunk)]
    return torch.cat(parts)


@ATTACKS.register("clid")
class CLiD(TextQueryAttack):
    """CLiD_th's terms and their combinations; see the module docstring."""

    name = "clid"
    access = "gray-box"

    def __init__(self, cfg: CLiDConfig | dict[str, Any], num_train_timesteps: int = 1000) -> None:
        self.cfg = cfg if isinstance(cfg, CLiDConfig) else CLiDConfig.model_validate(cfg)

    def settings(self) -> list[dict[str, Any]]:
        base = {
            "timesteps": list(self.cfg.timesteps),
            "draws": self.cfg.draws,
            "replace_fractions": list(self.cfg.replace_fractions),
        }
        return [
            {**base, "term": "loss"},
            {**base, "term": "clid"},
            *({**base, "term": "combined", "alpha": a} for a in self.cfg.alphas),
        ]

    def conditions(self, text: TextBatch, like: torch.Tensor) -> list[torch.Tensor]:
        """The weakened conditions, each [B, L, D] like `like` (dtype, device): one per replace
        fraction, then the null prompt."""
        ids = text.token_ids(text.captions).long()
        order = token_importance_order(ids, text.end_id, text.embed_ids)
        out = []
        for f in self.cfg.replace_fractions:
            weak = _embed(weaken(ids, order, f, text.end_id), text.embed_ids, EMBED_CHUNK)
            out.append(weak.to(device=like.device, dtype=like.dtype))
        out.append(text.null.to(device=like.device, dtype=like.dtype).expand_as(like))
        return out

    @torch.no_grad()
    def score_text(self, q: Query, text: TextBatch) -> torch.Tensor:
        """Args: q: the batch (x0 [B, C, h, w] latents, stable row ids, seed); text: the rows'
        captions (text.cond [B, L, D] their embeddings) and the text encoder. eps is called once
        per (t, condition) on a draw-major [draws * B, C, h, w] batch: (2 +
        len(replace_fractions)) * len(timesteps) * draws queries per row.
        Returns: [B, 2 + len(alphas)] float32 (loss, clid, combined per alpha), higher = member."""
        eps, schedule, x0, b = q.eps, q.schedule, q.x0, q.batch_size
        if len(text.captions) != b:
            raise ValueError(
                f"attack 'clid': {len(text.captions)} captions for a batch of {b} images"
            )
        check_cond(self.name, x0, text.cond)
        ts = [scaled_timestep(t, schedule) for t in self.cfg.timesteps]
        check_timesteps(self.name, ts, schedule)
        cond = text.cond.to(x0.device)
        conds = [cond, *self.conditions(text, cond)]
        draws = self.cfg.draws
        x = x0.float()
        x_rep = x.repeat(draws, *([1] * (x.dim() - 1)))
        err = torch.zeros(len(conds), b, dtype=torch.float32, device=x.device)
        for t_cfg, t in zip(self.cfg.timesteps, ts):
            noise = per_row_normal((draws, *x.shape[1:]), q.row_ids, q.seed, STREAM_CLID, t_cfg)
            noise = noise.transpose(0, 1).reshape(b * draws, *x.shape[1:])
            noise = noise.to(device=x.device, dtype=x.dtype)
            t_vec = torch.full((b * draws,), t, dtype=torch.long, device=x.device)
            x_t = schedule.q_sample(x_rep, t_vec, noise)
            for i, c in enumerate(conds):
                c_rep = c.repeat(draws, *([1] * (c.dim() - 1)))
                sq = (eps(x_t, t_vec, c_rep).float() - noise).pow(2).flatten(1).mean(1)
                err[i] += sq.view(draws, b).mean(0)
        err /= len(ts)
        loss = -err[0]
        clid = (err[1:] - err[0]).mean(0)
        cols = [loss, clid, *((1 - a) * loss + a * clid for a in self.cfg.alphas)]
        return torch.stack(cols, dim=1).float()
