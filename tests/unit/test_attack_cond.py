"""Text conditioning reaches every eps query of the gray-box and white-box attacks.

A tiny conditional EpsNet (a 1x1 conv shifted by a projection of cond.mean(dim=1), scaled by a
timestep term) makes each item's output depend on its own cond. For every registered query and
learned attack: scoring a batch with cond gives row i the score of item i alone with cond[i:i+1];
changing one item's cond changes that row only; every eps / network call sees a cond with x_t's
batch size; cached work is never shared between different conds of one batch; unconditional
networks refuse cond.
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import torch

from raydefense.attacks.base import (
    ATTACKS,
    Attack,
    LearnedAttack,
    Query,
    QueryAttack,
    cond_cache_key,
    repeat_cond,
    repeat_interleave_cond,
    slice_cond,
)
from raydefense.config import AttacksConfig
from raydefense.diffusion.eps import EpsNet, FrozenEps, check_unconditional
from raydefense.diffusion.schedule import NoiseSchedule

SCHED = NoiseSchedule()
C, H, W = 2, 4, 4
L, D = 3, 5
SEED = 11

# Small but faithful settings (defaults otherwise): every attack's batch handling is exercised.
OVERRIDES: dict[str, dict[str, Any]] = {
    "loss": {"timesteps": [10, 500], "draws": 3},
    "secmi_stat": {"t_sec": 30, "k": 10},
    "secmi_nn": {"t_sec": 30, "k": 10},
    "gsa1": {"num_timesteps": 3, "batch_size": 2},  # B = 3: chunks of 2 and 1 rows
    "gsa2": {"num_timesteps": 3, "batch_size": 2},
}


def _names() -> list[str]:
    """The attacks that query eps(x_t, t, cond) directly (interface and text attacks reach the
    model through a public interface or their own conditions; tests/unit/test_t2i.py)."""
    return [n for n in ATTACKS.names() if issubclass(ATTACKS.get(n), (QueryAttack, LearnedAttack))]


NAMES = _names()


def _attack(name: str, **extra: Any) -> Attack:
    section = getattr(AttacksConfig(), name)
    section = section.model_copy(update={**OVERRIDES.get(name, {}), **extra})
    return ATTACKS.get(name)(section, SCHED.num_train_timesteps)


def _run(
    a: Attack,
    eps: Any,
    x0: torch.Tensor,
    ids: torch.Tensor,
    cond: Optional[torch.Tensor],
    cache: Optional[dict] = None,
) -> torch.Tensor:
    q = Query(eps, SCHED, x0, ids, SEED, cond=cond, cache={} if cache is None else cache)
    if isinstance(a, QueryAttack):
        return a.score(q)
    assert isinstance(a, LearnedAttack)
    return a.features(q)


class CondNet(EpsNet):
    """eps = conv1x1(x) + proj(cond.mean(1)) * (1 + t / 100) + tanh(t / 500); cond=None is the
    null (all-zero) embedding. Records (x_t batch, cond shape) of every forward."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(C, C, 1)
        self.proj = torch.nn.Linear(D, C)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.calls: list[tuple[int, Optional[tuple[int, ...]]]] = []

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        self.calls.append((x_t.shape[0], None if cond is None else tuple(cond.shape)))
        if cond is None:
            cond = torch.zeros(x_t.shape[0], L, D, dtype=x_t.dtype, device=x_t.device)
        tf = t.float().view(-1, 1, 1, 1)
        shift = self.proj(cond.mean(dim=1))[:, :, None, None]
        return self.conv(x_t) + shift * (1.0 + tf / 100.0) + torch.tanh(tf / 500.0)

    def save(self, directory: str) -> None:
        raise NotImplementedError


class UncondNet(EpsNet):
    """An unconditional net: refuses cond as the real backbones do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(C, C, 1)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        check_unconditional("UncondNet", cond)
        return self.conv(x_t) + t.float().view(-1, 1, 1, 1) / 1000.0

    def save(self, directory: str) -> None:
        raise NotImplementedError


class RecordingEps(FrozenEps):
    """A FrozenEps that records (x_t batch, cond batch) of every eps query."""

    def __init__(self, net: EpsNet) -> None:
        super().__init__(net)
        self.seen: list[tuple[int, Optional[int]]] = []

    def __call__(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Optional[Any] = None
    ) -> torch.Tensor:
        self.seen.append((x_t.shape[0], None if cond is None else cond.shape[0]))
        return super().__call__(x_t, t, cond)


def _data(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(b, C, H, W, generator=g) * 2 - 1
    cond = torch.randn(b, L, D, generator=g)
    ids = torch.arange(100, 100 + b, dtype=torch.long) * 7
    return x0, ids, cond


def _scale(a: torch.Tensor, b: torch.Tensor) -> float:
    return max(float(a.abs().max()), float(b.abs().max()), 1e-30)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 noise, relative to the tensors' scale (SecMI's t-errors are ~1e-4)."""
    return float((a - b).abs().max()) <= 1e-4 * _scale(a, b)


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Different far beyond float32 noise."""
    return float((a - b).abs().max()) > 1e-2 * _scale(a, b)


# ------------------------------------------------------------------------------------ helpers


def test_cond_helpers() -> None:
    c = torch.arange(2 * L * D, dtype=torch.float32).view(2, L, D)
    x = torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1)
    assert repeat_cond(None, 3) is None and repeat_interleave_cond(None, 3) is None
    assert slice_cond(None, slice(0, 1)) is None
    # The helpers keep cond[r] aligned with x[r] under the matching expansion of x.
    for xr, cr in (
        (x.repeat(3, 1, 1, 1), repeat_cond(c, 3)),
        (x.repeat_interleave(3, dim=0), repeat_interleave_cond(c, 3)),
    ):
        assert cr is not None and cr.shape == (6, L, D)
        for r in range(6):
            assert torch.equal(cr[r], c[int(xr[r].item())])
    cs = slice_cond(repeat_cond(c, 3), slice(1, 4))
    assert cs is not None and torch.equal(cs, c[[1, 0, 1]])
    cache: dict = {}
    assert cond_cache_key(("k", 1), None, cache) == ("k", 1) and not cache
    k1, k2 = cond_cache_key(("k", 1), c, cache), cond_cache_key(("k", 1), c.clone(), cache)
    assert len({("k", 1), k1, k2}) == 3


def test_all_attacks_covered() -> None:
    assert {"loss", "secmi_stat", "secmi_nn", "pia", "pian", "sima", "gsa1", "gsa2"} <= set(NAMES)


# ---------------------------------------------------------------------------- per attack


@pytest.mark.parametrize("name", NAMES)
def test_batch_rows_match_single_items(name: str) -> None:
    """(a) row i of a conditioned batch == item i scored alone with cond[i:i+1]."""
    a, eps = _attack(name), FrozenEps(CondNet())
    x0, ids, cond = _data(3)
    batch = _run(a, eps, x0, ids, cond)
    assert batch.shape[0] == 3 and batch.dtype == torch.float32
    for i in range(3):
        alone = _run(a, eps, x0[i : i + 1], ids[i : i + 1], cond[i : i + 1])
        assert _close(batch[i : i + 1], alone), (name, i)
    # The conditioning matters: the null embedding gives other scores.
    assert _differs(_run(a, eps, x0, ids, None), batch)


@pytest.mark.parametrize("name", NAMES)
def test_changing_one_cond_changes_only_its_row(name: str) -> None:
    """(b) a new cond for item 1 changes row 1 and no other row."""
    a, eps = _attack(name), FrozenEps(CondNet())
    x0, ids, cond = _data(3)
    base = _run(a, eps, x0, ids, cond)
    other = cond.clone()
    other[1] = torch.randn(L, D, generator=torch.Generator().manual_seed(5)) * 2
    moved = _run(a, eps, x0, ids, other)
    assert _differs(moved[1], base[1]), name
    for i in (0, 2):
        assert _close(moved[i], base[i]), (name, i)


@pytest.mark.parametrize("name", NAMES)
def test_every_call_sees_an_aligned_cond(name: str) -> None:
    """(c) every eps query (gray-box) and network forward (all, GSA's vmapped items included)
    gets a cond with x_t's batch size, shaped [*, L, D]."""
    net = CondNet()
    eps = RecordingEps(net)
    x0, ids, cond = _data(3)
    _run(_attack(name), eps, x0, ids, cond)
    assert net.calls, name
    for nb, shape in net.calls:
        assert shape is not None and shape == (nb, L, D), (name, nb, shape)
    if ATTACKS.get(name).access == "gray-box":
        assert eps.seen and all(cb == nb for nb, cb in eps.seen), (name, eps.seen)


@pytest.mark.parametrize("name", NAMES)
def test_unconditional_net_refuses_cond(name: str) -> None:
    a, eps = _attack(name), FrozenEps(UncondNet())
    x0, ids, cond = _data(2)
    assert _run(a, eps, x0, ids, None).shape[0] == 2  # cond=None still works
    with pytest.raises(ValueError, match="unconditional"):
        _run(a, eps, x0, ids, cond)


@pytest.mark.parametrize("name", NAMES)
def test_cond_batch_mismatch_raises(name: str) -> None:
    x0, ids, cond = _data(3)
    with pytest.raises(ValueError, match="one entry per image"):
        _run(_attack(name), FrozenEps(CondNet()), x0, ids, cond[:2])


@pytest.mark.parametrize("name", NAMES)
def test_cache_never_shares_between_conds(name: str) -> None:
    """One per-batch cache across unconditioned and differently conditioned calls: each call
    returns what it returns without a cache."""
    a, eps = _attack(name), FrozenEps(CondNet())
    x0, ids, cond = _data(3)
    cond2 = cond.flip(0).contiguous()
    cache: dict = {}
    for c in (None, cond, cond2, None, cond):
        assert torch.equal(_run(a, eps, x0, ids, c, cache), _run(a, eps, x0, ids, c)), name


@pytest.mark.parametrize(
    "pair", [("secmi_stat", "secmi_nn"), ("gsa1", "gsa2")], ids=["secmi", "gsa"]
)
def test_shared_work_still_shared_under_one_cond(pair: tuple[str, str]) -> None:
    """SecMI_stat/SecMI_NN and GSA1/GSA2 still share one pass when given the same cond."""
    net = CondNet()
    eps = FrozenEps(net)
    x0, ids, cond = _data(3)
    cache: dict = {}
    _run(_attack(pair[0]), eps, x0, ids, cond, cache)
    n = len(net.calls)
    _run(_attack(pair[1]), eps, x0, ids, cond, cache)
    assert len(net.calls) == n


@pytest.mark.parametrize("name", ["pia", "sima"])
def test_chunked_sweeps_stay_aligned(name: str) -> None:
    """PIA slices its [n_t * B] batch into chunks and SimA spreads timesteps over several eps
    calls once n_t * B exceeds 4096 rows: cond must follow each chunk."""
    a = _attack(name, timesteps=list(range(0, 1000)))
    net = CondNet()
    eps = RecordingEps(net)
    x0, ids, cond = _data(5)
    batch = _run(a, eps, x0, ids, cond)
    assert len(eps.seen) >= 2 + (name == "pia")  # more than one chunk (+ eps0 for PIA)
    assert all(cb == nb for nb, cb in eps.seen)
    for i in (0, 4):
        assert _close(
            batch[i : i + 1], _run(a, eps, x0[i : i + 1], ids[i : i + 1], cond[i : i + 1])
        )


def test_gsa_loop_fallback_carries_cond(monkeypatch: pytest.MonkeyPatch) -> None:
    """GSA's per-item backward loop (used when vmap fails) gives the vmapped features."""
    from raydefense.attacks import gsa as gsa_mod

    net = CondNet()
    x0, ids, cond = _data(3)
    f1, f2 = gsa_mod.gsa_features(net, SCHED, x0, ids, SEED, 3, batch_size=2, cond=cond)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(gsa_mod, "_grads_vmap", broken)
    net.calls.clear()
    with pytest.warns(UserWarning, match="falling back"):
        g1, g2 = gsa_mod.gsa_features(net, SCHED, x0, ids, SEED, 3, batch_size=2, cond=cond)
    assert _close(g1, f1) and _close(g2, f2)
    assert len(net.calls) == 3 * 3 and all(s == (1, L, D) for _, s in net.calls)
