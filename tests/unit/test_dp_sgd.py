"""DP-SGD's pieces (raydefense.diffusion.dp_sgd): the accountant against Opacus' and a published
value, the noise multiplier search, per-example gradients, clipping and noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raydefense.diffusion.dp_sgd import (
    clip_and_noise,
    epsilon_spent,
    noise_multiplier_for,
    per_example_gradients,
    poisson_batch,
    rdp_sampled_gaussian,
)


def test_the_accountant_gives_the_published_value() -> None:
    """Opacus' documented example (compute_dp_sgd_privacy): sampling rate 1%, noise multiplier
    1.0, 300 steps, orders 2, 5, 10, 20, 100, delta 1e-5 -> epsilon 2.39 at order 5."""
    eps, order = epsilon_spent(0.01, 1.0, 300, 1e-5, [2, 5, 10, 20, 100])
    assert eps == pytest.approx(2.39, abs=0.005) and order == 5
    # Without sampling the mechanism is the plain Gaussian: RDP a / (2 sigma^2).
    assert rdp_sampled_gaussian(1.0, 2.0, [4])[0] == pytest.approx(4 / 8)
    assert rdp_sampled_gaussian(0.0, 2.0, [4])[0] == 0.0


@pytest.mark.parametrize("q, sigma, steps", [(0.004, 1.1, 10000), (0.05, 0.8, 500), (0.2, 3.0, 40)])
def test_the_accountant_matches_opacus(q: float, sigma: float, steps: int) -> None:
    from opacus.accountants.analysis import rdp as analysis  # the test extra installs it

    orders = list(range(2, 64))
    ours = steps * rdp_sampled_gaussian(q, sigma, orders)
    theirs = analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    eps, order = epsilon_spent(q, sigma, steps, 1e-5, orders)
    want, want_order = analysis.get_privacy_spent(orders=orders, rdp=theirs, delta=1e-5)
    assert eps == pytest.approx(want, rel=1e-9) and order == want_order


def test_the_noise_multiplier_meets_the_target_and_an_unreachable_one_is_one_line() -> None:
    sigma = noise_multiplier_for(2.0, 1e-5, 0.01, 300)
    spent = epsilon_spent(0.01, sigma, 300, 1e-5)[0]
    assert 1.99 <= spent <= 2.0 and epsilon_spent(0.01, sigma * 0.98, 300, 1e-5)[0] > 2.0
    with pytest.raises(ValueError, match="out of reach") as e:
        noise_multiplier_for(1e-4, 1e-5, 0.5, 100000)
    assert "\n" not in str(e.value)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)
        self.register_buffer("offset", torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + self.offset


def _loss(net: torch.nn.Module, params: dict, example: tuple) -> torch.Tensor:
    x, y = example
    out = torch.func.functional_call(net, {**params, "offset": net.offset}, (x,))
    return ((out - y) ** 2).sum()


def test_per_example_gradients_are_each_examples_own() -> None:
    torch.manual_seed(0)
    net, x, y = Tiny(), torch.randn(5, 3), torch.randn(5, 2)
    grads, losses = per_example_gradients(net, _loss, (x, y))
    for i in range(5):
        net.zero_grad()
        ((net(x[i : i + 1]) - y[i : i + 1]) ** 2).sum().backward()
        for name, p in net.named_parameters():
            torch.testing.assert_close(grads[name][i], p.grad)
        with torch.no_grad():
            own = float(((net(x[i : i + 1]) - y[i]) ** 2).sum())
        assert float(losses[i]) == pytest.approx(own)


def test_clipping_bounds_every_examples_gradient_and_the_noise_has_its_scale() -> None:
    torch.manual_seed(0)
    net, x, y = Tiny(), 10 * torch.randn(6, 3), torch.randn(6, 2)
    grads, _ = per_example_gradients(net, _loss, (x, y))
    g = torch.Generator().manual_seed(0)
    for i in range(6):  # each example alone, no noise: its clipped gradient's norm <= C
        one = {k: v[i : i + 1] for k, v in grads.items()}
        out, norms = clip_and_noise(one, 0.5, 0.0, 1.0, g)
        total = math.sqrt(sum(float((v**2).sum()) for v in out.values()))
        assert total <= 0.5 + 1e-6 and norms[0] > 0.5  # these gradients all needed clipping
    zero = {"w": torch.zeros(0, 20000)}  # an empty Poisson batch: the noise alone
    out, _ = clip_and_noise(zero, 2.0, 1.5, 10.0, g)
    assert float(out["w"].std()) == pytest.approx(1.5 * 2.0 / 10.0, rel=0.03)
    with pytest.raises(ValueError, match="clipping norm must be positive"):
        clip_and_noise(grads, 0.0, 1.0, 1.0, g)


def test_poisson_batches_have_the_expected_size() -> None:
    g = torch.Generator().manual_seed(3)
    sizes = [len(poisson_batch(1000, 0.05, g)) for _ in range(400)]
    assert np.mean(sizes) == pytest.approx(50, rel=0.05) and np.std(sizes) > 3


# ----------------------------------------------------------------------------- a private fit


def test_private_settings_fail_in_one_line_before_training() -> None:
    from raydefense.diffusion.private_step import private_training

    with pytest.raises(ValueError, match="give exactly one"):
        private_training(100, 10, 50, epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="give exactly one"):
        private_training(100, 10, 50)
    with pytest.raises(ValueError, match="clipping norm must be positive"):
        private_training(100, 10, 50, noise_multiplier=1.0, max_grad_norm=0.0)
    with pytest.raises(ValueError, match="lower train.batch_size"):
        private_training(100, 200, 50, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="out of reach"):
        private_training(100, 90, 100000, epsilon=0.001)
    dp = private_training(1000, 50, 200, epsilon=4.0, delta=1e-5)
    assert dp.sample_rate == 0.05 and 3.96 <= dp.epsilon(200) <= 4.0


def test_a_private_fit_reports_its_epsilon_and_is_reproducible() -> None:
    from raydefense.config import TrainConfig
    from raydefense.diffusion.private_step import private_training
    from raydefense.diffusion.training import fit
    from tests.unit.test_training import MODEL, SCHED, ListReporter, images

    train = TrainConfig(steps=4, batch_size=4, checkpoint_every=2, log_every=2, lr=1e-2)
    dp = private_training(12, 4, 4, noise_multiplier=1.0, multiplicity=2)
    runs = []
    for _ in range(2):
        rep = ListReporter()
        fit(images(), MODEL, train, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=rep,
            private=dp)  # fmt: skip
        runs.append(rep)
    last = runs[0].reports[-1]
    assert last["dp_epsilon"] == pytest.approx(epsilon_spent(1 / 3, 1.0, 4, 1e-5)[0])
    assert runs[0].reports[0]["dp_epsilon"] < last["dp_epsilon"]
    assert [r["loss"] for r in runs[0].reports] == [r["loss"] for r in runs[1].reports]


def test_a_private_step_clips_each_row_and_adds_noise_of_its_scale() -> None:
    """With almost no clipping room the summed gradient is bounded by b * C; with no row drawn
    the gradient is the noise alone, sigma * C / (q N) per coordinate."""
    from raydefense.diffusion.backbones import build_net
    from raydefense.diffusion.ema import EMA
    from raydefense.diffusion.private_step import PrivateTraining, PrivateTrainStep
    from tests.unit.test_training import MODEL, SCHED, images

    torch.manual_seed(0)
    net = build_net(MODEL, (1, 8, 8))
    data = images(40)

    def step(dp: PrivateTraining) -> tuple[PrivateTrainStep, int]:
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        s = PrivateTrainStep(net, opt, EMA(net, 0.9), data, SCHED, dp, seed=0, model_index=0,
                             rank=0, world_size=1, device="cpu", lr_at=lambda i: 0.0)  # fmt: skip
        s(0)
        return s, len(s.rows(0))

    c, q = 1e-3, 0.25
    _, b = step(PrivateTraining(0.0, c, q, 2, 1e-5))
    total = math.sqrt(sum(float((p.grad**2).sum()) for p in net.parameters()))
    assert b > 0 and total <= b * c / (q * 40) * (1 + 1e-5)
    s, b = step(PrivateTraining(2.0, 0.5, 1e-9, 1, 1e-5))  # q tiny: no row drawn
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    assert b == 0 and float(grads.std()) == pytest.approx(2.0 * 0.5 / (1e-9 * 40), rel=0.05)


def _private_fit_on_rank(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a DP-SGD fit under torch.distributed (gloo); rank 0 saves the last
    checkpoint's raw weights to `out`."""
    import torch.distributed as dist

    from raydefense.config import TrainConfig
    from raydefense.diffusion.backbones import load_net
    from raydefense.diffusion.private_step import private_training
    from raydefense.diffusion.training import fit
    from tests.unit.test_training import MODEL, SCHED, ListReporter, images

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)  # fmt: skip
    rep = ListReporter()
    rep.world_rank, rep.world_size = rank, world
    train = TrainConfig(steps=3, batch_size=4, checkpoint_every=3, log_every=3, lr=1e-2)
    dp = private_training(12, 4, 3, noise_multiplier=0.5, multiplicity=2)
    fit(images(), MODEL, train, SCHED, (1, 8, 8), seed=0, model_index=0, reporter=rep,
        private=dp)  # fmt: skip
    if rank == 0:
        net = load_net(MODEL, rep.ckpt, "raw")
        torch.save(net.state_dict(), out)
    if world > 1:
        dist.destroy_process_group()


def test_a_private_fit_on_two_ranks_equals_one_process(tmp_path) -> None:
    """DDP: the ranks draw the same Poisson batch, split its rows, all-reduce their clipped sums
    and add one noise draw, so two ranks take the steps one process takes (the accountant's
    global batch): the weights agree up to the summation order."""
    import socket

    import torch.multiprocessing as mp

    _private_fit_on_rank(0, 1, 0, str(tmp_path / "one.pt"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_private_fit_on_rank, args=(2, port, str(tmp_path / "two.pt")), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-5), k
