"""Alpha-MAML and SGD-HD: the inner rate's hypergradient is -g_Q(theta') . g_S(theta); on a
quadratic the rates move the way their hypergradients' known signs say (up while too small,
down once they overshoot); a zero hypergradient rate is plain SGD; the inner rate sits in a
group of its own; it learns."""

from __future__ import annotations

import pytest
import torch
from learning import CASES, train_and_compare
from omegaconf import OmegaConf
from test_imaml import regression_episode

from metabench.algorithms.alphamaml import AlphaMAML
from metabench.backbones.mlp import MLP
from metabench.build import build_optimizer
from metabench.optim import SGDHD


def learner(inner_lr: float = 0.1) -> AlphaMAML:
    torch.manual_seed(0)
    return AlphaMAML(MLP((3,), hidden=()), "regression", 0, inner_lr=inner_lr,
                     inner_steps=1).double()


def test_inner_rate_hypergradient_is_minus_query_dot_support_gradient():
    m, ep = learner(), regression_episode(tasks=1)
    m(ep)[0].backward()
    theta = m.fast_params()
    xs, ys, xq, yq = ep.x_support[0], ep.y_support[0], ep.x_query[0], ep.y_query[0]
    g_s = torch.func.grad(lambda p: m.task_loss(p, xs, ys))(theta)
    adapted = {k: v - m.alpha * g_s[k] for k, v in theta.items()}
    g_q = torch.func.grad(lambda p: m.task_loss(p, xq, yq))(adapted)
    analytic = -sum((g_q[k] * g_s[k]).sum() for k in theta)
    assert m.alpha.grad.item() == pytest.approx(analytic.item(), rel=1e-10)


@pytest.mark.parametrize("inner_lr, direction", [(0.01, 1), (3.0, -1)])
def test_inner_rate_moves_the_way_its_hypergradient_says(inner_lr, direction):
    """A linear model on a linear task: the support and query losses are one quadratic, so a
    small rate under-steps (dL_Q/dalpha < 0: alpha grows) and a large one overshoots."""
    m = learner(inner_lr)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 40, 3, generator=g, dtype=torch.float64)
    y = x @ torch.randn(3, 1, generator=g, dtype=torch.float64)
    from metabench.episodes import Episode
    ep = Episode(x, y, x, y, 0)
    cfg = OmegaConf.create({"train": {"optimizer": "sgd_hd", "lr": 1e-9, "hypergrad_lr": 0.0,
                                      "weight_decay": 0.0, "iterations": 1,
                                      "lr_decay_every": 0, "lr_decay": 0.5}})
    optimizer, _ = build_optimizer(cfg, m)
    assert isinstance(optimizer, SGDHD) and len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["params"] == [m.alpha]
    m(ep)[0].backward()
    assert torch.sign(m.alpha.grad).item() == -direction
    before = m.alpha.item()
    optimizer.step()
    assert (m.alpha.item() - before) * direction > 0


@pytest.mark.parametrize("lr, direction", [(0.05, 1), (1.5, -1)])
def test_sgd_hd_rate_grows_while_gradients_agree_and_shrinks_when_they_oscillate(lr, direction):
    """f = theta^2 / 2 (curvature 1): steps below 1 keep successive gradients of one sign, steps
    in (1, 2) flip it every step."""
    theta = torch.nn.Parameter(torch.tensor([2.0], dtype=torch.float64))
    opt = SGDHD([theta], lr=lr, hypergrad_lr=0.01)
    rates = []
    for _ in range(4):
        opt.zero_grad()
        (0.5 * theta ** 2).sum().backward()
        opt.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[0] == lr  # no previous gradient yet
    assert all((b - a) * direction > 0 for a, b in zip(rates, rates[1:], strict=False))


def test_sgd_hd_without_hypergradient_is_plain_sgd():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2).double()
    b = torch.nn.Linear(3, 2).double()
    b.load_state_dict(a.state_dict())
    opts = SGDHD(a.parameters(), lr=0.1, hypergrad_lr=0.0), torch.optim.SGD(b.parameters(), 0.1)
    x = torch.randn(5, 3, dtype=torch.float64)
    for _ in range(3):
        for net, opt in zip((a, b), opts, strict=True):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    assert all(torch.allclose(p, q, atol=1e-14) for p, q in pairs)


def test_alphamaml_learns(cfg_factory, tmp_path):
    """3 seeds (AVX2): 0.677 +- 0.091 (min 0.572), gain over the init 0.455 +- 0.076."""
    before, after = train_and_compare(cfg_factory, tmp_path, *CASES["alphamaml"])
    assert after > 0.45 and after > before + 0.25, (before, after)
