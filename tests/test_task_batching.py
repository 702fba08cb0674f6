"""MAML's task batching: the vmapped path gives the loop's loss, meta-gradients and evaluation
metrics (float64, second and first order; batch, support-set and no norm), and the explicit
batch-statistics norm equals nn.BatchNorm2d(track_running_stats=False)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from metabench.algorithms.maml import MAML
from metabench.backbones.conv4 import BatchStatNorm2d, Conv4, explicit_batch_stats
from metabench.backbones.mlp import MLP
from metabench.episodes import Episode

BACKBONES = {
    "conv4-batch": (lambda: Conv4((1, 16, 16), hidden=8, norm="batch"), (1, 16, 16)),
    "conv4-none": (lambda: Conv4((1, 16, 16), hidden=8, norm="none"), (1, 16, 16)),
    "conv4-support": (lambda: Conv4((1, 16, 16), hidden=8, norm="support"), (1, 16, 16)),
    "mlp": (lambda: MLP((4,), hidden=(6,)), (4,)),
}


def episode(shape, tasks=3, ways=3, shots=2, queries=2, seed=0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, ways * shots, *shape, generator=g, dtype=torch.float64)
    xq = torch.randn(tasks, ways * queries, *shape, generator=g, dtype=torch.float64)
    ys = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    yq = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return Episode(xs, ys, xq, yq, ways)


def pair(name: str, first_order: bool) -> tuple[MAML, MAML]:
    make, _ = BACKBONES[name]
    torch.manual_seed(0)
    learners = [MAML(make(), "classification", 3, inner_lr=0.3, inner_steps=2,
                     eval_inner_steps=2, first_order=first_order, task_batching=mode).double()
                for mode in ("loop", "vmap")]
    learners[1].load_state_dict(learners[0].state_dict())
    return learners[0], learners[1]


def loss_and_grads(learner: MAML, ep: Episode) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    learner.train()
    learner.zero_grad()
    loss, _ = learner(ep)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in learner.named_parameters()}


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_vmap_meta_gradient_matches_loop(name, first_order):
    loop, vmap = pair(name, first_order)
    ep = episode(BACKBONES[name][1])
    loss_l, grads_l = loss_and_grads(loop, ep)
    loss_v, grads_v = loss_and_grads(vmap, ep)
    assert abs(loss_l - loss_v) < 1e-6
    assert grads_l.keys() == grads_v.keys()
    for n, g in grads_l.items():
        err = (g - grads_v[n]).abs().max()
        assert err < 1e-6, (n, err)
    assert max(g.abs().max() for g in grads_l.values()) > 1e-4  # not trivially zero


@pytest.mark.parametrize("name", list(BACKBONES))
def test_vmap_eval_metrics_match_loop_under_no_grad(name):
    loop, vmap = pair(name, first_order=False)
    ep = episode(BACKBONES[name][1], seed=1)
    results = []
    for learner in (loop, vmap):
        learner.eval()
        with torch.no_grad():
            results.append(learner(ep))
    (loss_l, m_l), (loss_v, m_v) = results
    assert abs(loss_l - loss_v) < 1e-6
    assert {"loss", "acc", "pre_loss", "pre_acc"} <= set(m_l)
    assert m_l.keys() == m_v.keys()
    for k, v in m_l.items():
        assert v.shape == m_v[k].shape and v.shape[0] == ep.tasks, k  # bins: [T, 15]
        assert torch.allclose(v, m_v[k], atol=1e-6, rtol=0), (k, v, m_v[k])
    assert not torch.allclose(m_l["loss"], m_l["pre_loss"])


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_stat_norm_matches_batchnorm(mode, explicit):
    torch.manual_seed(0)
    ours = BatchStatNorm2d(5).double()
    ref = nn.BatchNorm2d(5, track_running_stats=False).double()
    assert [n for n, _ in ours.named_parameters()] == ["weight", "bias"]
    assert torch.equal(ours.weight, torch.ones(5)) and torch.equal(ours.bias, torch.zeros(5))
    with torch.no_grad():
        for m in (ours, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, 5))
            m.bias.copy_(torch.linspace(-1, 1, 5))
    ours.train(mode == "train")
    ref.train(mode == "train")
    x = (torch.randn(4, 5, 3, 3, dtype=torch.float64) * 3 + 1).requires_grad_()
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    with explicit_batch_stats() if explicit else contextlib.nullcontext():
        out_ours = ours(x)
    out_ref = ref(x)
    assert (out_ours - out_ref).abs().max() < 1e-8
    (g_ours,) = torch.autograd.grad((out_ours * w).sum(), x)
    (g_ref,) = torch.autograd.grad((out_ref * w).sum(), x)
    assert (g_ours - g_ref).abs().max() < 1e-8
    assert ours.state_dict().keys() == ref.state_dict().keys()  # checkpoints stay compatible


def test_task_batching_modes():
    def make(mode):
        return MAML(MLP((4,), hidden=(6,)), "classification", 3, task_batching=mode)

    auto = make("auto")
    assert auto.batching_mode(torch.device("cpu")) == "loop"
    assert auto.batching_mode("cuda") == "vmap"
    assert auto.batching_mode("cuda:1") == "vmap"
    assert make("loop").batching_mode("cuda") == "loop"
    assert make("vmap").batching_mode("cpu") == "vmap"
    with pytest.raises(ValueError, match="algo.task_batching=batch is not one of: auto, loop, "
                                         "vmap"):
        make("batch")
