"""CLiD (raydefense.attacks.clid) on a toy text-to-image setup: a character tokenizer, an
embedding-table text encoder and tiny conditional noise predictors. No network, no downloads."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest
import torch
from pydantic import ValidationError

from raydefense.attacks import ATTACKS
from raydefense.attacks.base import ColumnAttack, Query, QueryAttack, TextBatch, TextQueryAttack
from raydefense.attacks.clid import (
    CLiD,
    caption_lengths,
    replaced_count,
    token_importance_order,
    weaken,
)
from raydefense.config import CLiDConfig, ExperimentConfig, load_config
from raydefense.diffusion.schedule import NoiseSchedule
from raydefense.errors import ConfigError
from raydefense.run.fingerprints import config_tree

L, D, VOCAB = 8, 4, 64
START, END = 0, 1
SCHED = NoiseSchedule()


def toy_token_ids(pad: int = END):
    """Characters -> ids 3.. (start 0, then up to L - 2 characters, end 1, then `pad`)."""

    def token_ids(captions: list[str]) -> torch.Tensor:
        out = torch.full((len(captions), L), pad, dtype=torch.long)
        for r, c in enumerate(captions):
            body = [3 + (ord(ch) % (VOCAB - 3)) for ch in c[: L - 2]]
            out[r, : len(body) + 2] = torch.tensor([START, *body, END])
        return out

    return token_ids


class ToyEncoder(torch.nn.Module):
    """A causal toy text encoder: position p holds the sum of the token embeddings up to p (as
    in CLIP, the end token and padding states see the whole caption)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(VOCAB, D)
        self.emb.requires_grad_(False)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids).cumsum(1)


def toy_encoder(seed: int = 0) -> ToyEncoder:
    return ToyEncoder(seed)


def text_batch(captions: list[str], enc: ToyEncoder, pad: int = END) -> TextBatch:
    token_ids = toy_token_ids(pad)
    return TextBatch(
        captions=captions,
        cond=enc(token_ids(captions)),
        null=enc(token_ids([""]))[0],
        token_ids=token_ids,
        embed_ids=enc,
        end_id=END,
    )


class TinyCondEps(torch.nn.Module):
    """eps(x_t, t, cond) = conv(x_t) + a projection of the mean caption embedding + t's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.proj = torch.nn.Linear(D, 4)
        self.calls: list[int] = []

    @torch.no_grad()
    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        assert cond is not None and cond.shape == (x_t.shape[0], L, D)
        self.calls.append(x_t.shape[0])
        bias = self.proj(cond.mean(1)) + (t.float() / 1000)[:, None]
        return self.conv(x_t) + bias[:, :, None, None]


CAPTIONS = ["red apple", "blue sky", "a cat", "zebra zoo", "fog", "hello world", "", "tree"]


def latents(n: int, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 4, 4, generator=g)


# ------------------------------------------------------------------------------- tokens


def test_caption_lengths_and_replaced_counts() -> None:
    ids = toy_token_ids()(["abcdefghij", "abc", ""])
    assert caption_lengths(ids, END).tolist() == [6, 3, 0]
    assert caption_lengths(toy_token_ids(pad=2)(["abc"]), END).tolist() == [3]
    # round half up, at least one token, at most all of them, none of an empty caption
    assert [replaced_count(f, 6) for f in (0.3, 0.5, 0.7, 1.0)] == [2, 3, 4, 6]
    assert [replaced_count(f, 3) for f in (0.1, 0.3, 0.5, 0.7, 1.0)] == [1, 1, 2, 2, 3]
    assert replaced_count(0.5, 0) == 0


@pytest.mark.parametrize("pad", [END, 2])
def test_weaken_replaces_the_most_important_tokens_only(pad: int) -> None:
    enc = toy_encoder()
    z = 3 + (ord("z") % (VOCAB - 3))
    enc.emb.weight[z] = 100.0  # "z" moves the states most when replaced
    token_ids = toy_token_ids(pad)
    caps = ["abzdefghij", "abc", "", "z", "abcdz"]
    ids = token_ids(caps)
    order = token_importance_order(ids, END, enc)
    assert [len(o) for o in order] == [6, 3, 0, 1, 5]
    # z's position comes first wherever it stands (no bias towards early tokens)
    assert order[0][0] == 3 and order[3] == [1] and order[4][0] == 5
    assert token_importance_order(ids, END, enc, chunk=2) == order  # chunking changes nothing
    for f in (0.3, 0.5, 0.7, 1.0):
        w = weaken(ids, order, f, END)
        for r, n in enumerate([6, 3, 0, 1, 5]):
            changed = (w[r] != ids[r]).nonzero().flatten().tolist()
            assert len(changed) == replaced_count(f, n)
            assert all(1 <= p <= n for p in changed)  # never start, end or padding
            assert set(changed) == set(order[r][: replaced_count(f, n)])
            assert (w[r, changed] == END).all()
            assert torch.equal(w[r, n + 1 :], ids[r, n + 1 :]) and w[r, 0] == START
    assert 3 in (weaken(ids, order, 0.3, END)[0] != ids[0]).nonzero().flatten().tolist()


# ------------------------------------------------------------------------------- scores


def test_shapes_settings_queries_and_registration() -> None:
    assert ATTACKS.get("clid") is CLiD and issubclass(CLiD, TextQueryAttack)
    assert CLiD.text_only and CLiD.access == "gray-box"
    a = CLiD({})
    s = a.settings()
    assert len(s) == 2 + len(a.cfg.alphas)
    assert [x["term"] for x in s[:2]] == ["loss", "clid"]
    assert [x["alpha"] for x in s[2:]] == a.cfg.alphas
    json.dumps(s)
    enc, net = toy_encoder(), TinyCondEps()
    cfg = {"timesteps": [440, 450], "draws": 2, "replace_fractions": [0.5], "alphas": [0.5]}
    b = len(CAPTIONS)
    out = CLiD(cfg).score_text(
        Query(net, SCHED, latents(b), torch.arange(b), 0), text_batch(CAPTIONS, enc)
    )
    assert out.shape == (b, 3) and out.dtype == torch.float32 and torch.isfinite(out).all()
    # (caption, one weakened, null) x 2 timesteps, each on a draws * B batch
    assert net.calls == [2 * b] * (3 * 2)
    loss, clid, comb = out.unbind(1)
    assert (loss <= 0).all()
    assert torch.allclose(comb, 0.5 * loss + 0.5 * clid)
    assert clid[CAPTIONS.index("")].abs() < 1e-6  # an empty caption is the null prompt


def test_deterministic_and_independent_of_batch_composition() -> None:
    enc, net = toy_encoder(), TinyCondEps()
    x0, ids = latents(len(CAPTIONS)), torch.arange(100, 100 + len(CAPTIONS))
    a = CLiD({"draws": 2})
    full = a.score_text(Query(net, SCHED, x0, ids, 7), text_batch(CAPTIONS, enc))
    assert torch.equal(full, a.score_text(Query(net, SCHED, x0, ids, 7), text_batch(CAPTIONS, enc)))
    assert not torch.allclose(
        full, a.score_text(Query(net, SCHED, x0, ids, 8), text_batch(CAPTIONS, enc))
    )
    perm = torch.tensor([5, 2, 7])
    part = a.score_text(
        Query(net, SCHED, x0[perm], ids[perm], 7), text_batch([CAPTIONS[i] for i in perm], enc)
    )
    assert torch.allclose(part, full[perm], atol=1e-6)


def test_scaled_timesteps_for_a_short_schedule() -> None:
    enc, net = toy_encoder(), TinyCondEps()
    short = NoiseSchedule(num_train_timesteps=100)
    seen: list[int] = []

    def eps(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        seen.extend(sorted(set(t.tolist())))
        return net(x_t, t, cond)

    CLiD({}).score_text(
        Query(eps, short, latents(2), torch.arange(2), 0), text_batch(CAPTIONS[:2], enc)
    )
    assert sorted(set(seen)) == [44, 45, 46]


def test_a_model_that_memorised_its_members_ranks_them_first() -> None:
    """eps returns the true noise exactly under a member's own caption, else noise + 0.5: a
    member has the lower conditional loss and the larger discrepancy, in every column."""
    enc = toy_encoder()
    b = len(CAPTIONS) - 1  # drop the empty caption: its weakened conditions equal its caption
    caps = [c for c in CAPTIONS if c]
    x0, ids = latents(b), torch.arange(b)
    member = torch.tensor([i % 2 == 0 for i in range(b)])
    tb = text_batch(caps, enc)

    def eps(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(x_t.shape[0]) % b  # draw-major: item i is row i % b
        a = SCHED.abar(t, x_t)
        noise = (x_t - a.sqrt() * x0[rows]) / (1 - a).sqrt()
        own = (cond - tb.cond[rows]).flatten(1).abs().amax(1) == 0
        hit = (member[rows] & own)[:, None, None, None]
        return torch.where(hit, noise, noise + 0.5)

    out = CLiD({"draws": 2}).score_text(Query(eps, SCHED, x0, ids, 0), tb)
    assert out.shape == (b, 2 + len(CLiDConfig().alphas))
    assert (out[member].min(0).values > out[~member].max(0).values).all()
    assert torch.allclose(out[member, 0], torch.zeros(int(member.sum())), atol=1e-5)
    assert torch.allclose(out[~member, 1], torch.zeros(int((~member).sum())), atol=1e-5)


class _TextRows:
    """An AttackBatch of one query and its captions (no public interface)."""

    def __init__(self, q: Query, text: TextBatch) -> None:
        self.q, self.tb = q, text

    def query(self, eps: Any) -> Query:
        assert eps is self.q.eps
        return self.q

    def text(self) -> TextBatch:
        return self.tb

    def public(self, eps: Any) -> Any:
        raise AssertionError("a text attack reads no public interface")


def test_text_attacks_are_query_siblings_and_mismatched_batches_are_refused() -> None:
    a = CLiD({})
    # A sibling of the eps-query attacks: its columns come from the query and the captions.
    assert isinstance(a, ColumnAttack) and not isinstance(a, QueryAttack)
    eps, enc = TinyCondEps(), toy_encoder()
    q, tb = Query(eps, SCHED, latents(2), torch.arange(2), 0), text_batch(CAPTIONS[:2], enc)
    assert torch.equal(a.columns(_TextRows(q, tb), eps), a.score_text(q, tb))
    with pytest.raises(ValueError, match="captions for a batch"):
        a.score_text(
            Query(TinyCondEps(), SCHED, latents(3), torch.arange(3), 0),
            text_batch(["a"], toy_encoder()),
        )


# ------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("timesteps", [], "attacks.clid.timesteps is empty"),
        ("timesteps", [1000], r"outside \[0, 1000\)"),
        ("timesteps", [450, 450], "repeats a timestep"),
        ("replace_fractions", [0.0], r"replace_fractions has 0.0, outside \(0, 1\]"),
        ("replace_fractions", [1.5], r"replace_fractions has 1.5, outside \(0, 1\]"),
        ("alphas", [-0.1], r"alphas has -0.1, outside \[0, 1\]"),
        ("alphas", [1.5], r"alphas has 1.5, outside \[0, 1\]"),
    ],
)
def test_config_errors(field: str, value: list[float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CLiDConfig(**{field: value})


def test_config_defaults_overrides_and_fingerprints() -> None:
    c = CLiDConfig()
    assert c.timesteps == [440, 450, 460] and c.draws == 1
    assert c.replace_fractions == [0.3, 0.5, 0.7]
    with pytest.raises(ConfigError, match=r"attacks.clid.*alphas has 2.0, outside \[0, 1\]"):
        load_config(preset="smoke", overrides=["attacks.clid.alphas=[2]"])
    with pytest.raises(ConfigError, match="draws"):
        load_config(preset="smoke", overrides=["attacks.clid.draws=0"])
    # a default clid section leaves the hashed config (so other fingerprints) unchanged
    assert "clid" not in config_tree(ExperimentConfig())["attacks"]
    cfg = load_config(preset="smoke", overrides=["attacks.clid.draws=3"])
    assert config_tree(cfg)["attacks"]["clid"]["draws"] == 3
