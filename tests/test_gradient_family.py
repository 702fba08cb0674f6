"""Meta-SGD, ANIL and Reptile: each one's defining computation checked by hand (float64 MLPs),
the outer optimiser/schedule keys, and learning on synthetic images far above chance."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F
from test_maml import tiny_episode
from torch.func import functional_call

from metabench import run
from metabench.algorithms.anil import ANIL
from metabench.algorithms.maml import MAML
from metabench.algorithms.metasgd import MetaSGD
from metabench.algorithms.reptile import Reptile
from metabench.backbones.mlp import MLP


def support_grads(model, params, x, y):
    p = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    loss = F.cross_entropy(functional_call(model, p, (x,)), y)
    return dict(zip(p, torch.autograd.grad(loss, list(p.values())), strict=True))


# --- Meta-SGD ---------------------------------------------------------------------------------

def make_metasgd() -> MetaSGD:
    torch.manual_seed(0)
    return MetaSGD(MLP((4,), hidden=(5,)), "classification", 3, lr_min=0.005,
                   lr_max=0.1).double()


def test_metasgd_inner_step_is_theta_minus_alpha_times_grad_elementwise():
    learner, ep = make_metasgd(), tiny_episode()
    params, rates = learner.fast_params(), learner.inner_lrs()
    assert set(rates) == set(params)
    for k, r in rates.items():
        assert r.shape == params[k].shape
        assert 0.005 <= r.min() and r.max() <= 0.1 and r.std() > 0  # per element, not one rate
    xs, ys = ep.x_support[0], ep.y_support[0]
    fast = learner.adapt(params, xs, ys, 1)
    g = support_grads(learner.model, params, xs, ys)
    for k in params:
        assert torch.allclose(fast[k], params[k] - rates[k] * g[k], atol=1e-12), k


def test_metasgd_rates_receive_gradients_and_move_after_one_meta_step():
    learner, ep = make_metasgd(), tiny_episode()
    before = {k: v.detach().clone() for k, v in learner.lrs.items()}
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    loss, _ = learner(ep)
    loss.backward()
    for k, r in learner.lrs.items():
        assert r.grad is not None and r.grad.abs().sum() > 0, k
    opt.step()
    assert all(not torch.equal(before[k], r) for k, r in learner.lrs.items())


def test_metasgd_learns_synthetic(tmp_path, cfg_factory):
    from learning import CASES, train_and_compare

    before, after = train_and_compare(cfg_factory, tmp_path, *CASES["metasgd"])
    # 12 runs (seeds 0-5 x kernels AVX2, DEFAULT; scripts/learning_spread.py): after
    # 0.947 +- 0.006 (min 0.936), gap 0.540 +- 0.083 (min 0.416; the untrained net with its
    # initial rates already adapts, 0.29-0.53); thresholds 0.85 = mean - 16.2 sd, 0.15 = mean -
    # 4.7 sd (min(mean - 4 sd, min - 0.05), rounded down; chance 0.2)
    assert after >= 0.85, (before, after)
    assert after >= before + 0.15, (before, after)


# --- ANIL -------------------------------------------------------------------------------------

class HeadOnlyMAML(MAML):
    """MAML with a zero inner rate for the body: by definition the same meta-gradient as ANIL."""

    def inner_lrs(self):
        return {k: (self.inner_lr if k.startswith("head.") else 0.0) for k in self.fast_params()}


def make_anil(cls=ANIL, first_order=False, steps=2):
    torch.manual_seed(0)
    return cls(MLP((4,), hidden=(5,)), "classification", 3, inner_lr=0.5, inner_steps=steps,
               first_order=first_order).double()


def grads_of(learner, ep):
    learner.zero_grad()
    learner(ep)[0].backward()
    return {k: p.grad.clone() for k, p in learner.model.named_parameters()}


def test_anil_inner_loop_leaves_the_body_and_adapts_the_head():
    learner, ep = make_anil(), tiny_episode()
    params = learner.fast_params()
    fast = learner.adapt(params, ep.x_support[0], ep.y_support[0], 2)
    assert set(fast) == set(params)
    for k in params:
        if k.startswith("head."):
            assert (fast[k] - params[k]).abs().max() > 1e-4, k
        else:
            assert torch.equal(fast[k], params[k]), k


@pytest.mark.parametrize("first_order", [False, True])
def test_anil_meta_gradient_reaches_the_body_and_matches_head_only_maml(first_order):
    ep = tiny_episode()
    got = grads_of(make_anil(ANIL, first_order), ep)
    want = grads_of(make_anil(HeadOnlyMAML, first_order), ep)
    for k in got:
        assert got[k].abs().sum() > 0, k  # the body gets a meta-gradient through its features
        assert torch.allclose(got[k], want[k], atol=1e-10), k


def test_anil_second_order_differs_from_first_order_in_the_body():
    ep = tiny_episode()
    so, fo = grads_of(make_anil(ANIL, False), ep), grads_of(make_anil(ANIL, True), ep)
    assert (so["backbone.net.0.weight"] - fo["backbone.net.0.weight"]).abs().max() > 1e-4


def test_anil_learns_synthetic(tmp_path, cfg_factory):
    from learning import CASES, train_and_compare

    before, after = train_and_compare(cfg_factory, tmp_path, *CASES["anil"])
    # 12 runs (seeds 0-5 x kernels AVX2, DEFAULT; scripts/learning_spread.py): after
    # 0.908 +- 0.012 (min 0.882), gap 0.525 +- 0.027 (min 0.485); thresholds 0.8 = mean - 8.6 sd,
    # 0.4 = mean - 4.6 sd (min(mean - 4 sd, min - 0.05), rounded down; chance 0.2)
    assert after >= 0.8, (before, after)
    assert after >= before + 0.4, (before, after)


# --- Reptile ----------------------------------------------------------------------------------

def make_reptile(**kw) -> Reptile:
    torch.manual_seed(0)
    return Reptile(MLP((4,), hidden=(5,)), "classification", 3, **kw).double()


def by_hand(learner: Reptile, x, y, steps: int, adam: bool) -> dict[str, torch.Tensor]:
    """A copy of the weights trained with torch.optim on (x, y): the reference phi."""
    p = {k: v.detach().clone().requires_grad_() for k, v in learner.model.named_parameters()}
    opt = (torch.optim.Adam(p.values(), lr=learner.inner_lr, betas=learner.betas, eps=1e-8)
           if adam else torch.optim.SGD(p.values(), lr=learner.inner_lr))
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(functional_call(learner.model, p, (x,)), y).backward()
        opt.step()
    return {k: v.detach() for k, v in p.items()}


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_reptile_sgd_outer_step_is_the_interpolation(inner, cfg_factory):
    eps, steps = 0.3, 4
    learner, ep = make_reptile(inner_optimizer=inner, inner_lr=0.05, inner_steps=steps), \
        tiny_episode(tasks=3)
    theta = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    phis = [by_hand(learner, ep.x_support[t], ep.y_support[t], steps, inner == "adam")
            for t in range(ep.tasks)]
    want = {k: theta[k] + eps * (sum(phi[k] for phi in phis) / ep.tasks - theta[k])
            for k in theta}
    cfg = cfg_factory("algo=reptile", "data=synthetic", f"train.lr={eps}",
                      "train.iterations=10")
    optimizer, _ = run.build_optimizer(cfg, learner)
    assert isinstance(optimizer, torch.optim.SGD)
    loss, metrics = learner(ep)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for k, p in learner.model.named_parameters():
        assert (want[k] - theta[k]).abs().max() > 1e-4, k  # the step is not trivially zero
        assert torch.allclose(p.detach(), want[k], atol=1e-10), k
    # the metrics are phi's on the query set
    pred = torch.stack([functional_call(learner.model, phis[t], (ep.x_query[t],))
                        for t in range(ep.tasks)])
    acc = (pred.argmax(-1) == ep.y_query).double().mean(1)
    assert torch.allclose(metrics["acc"].double(), acc)


def test_reptile_carried_adam_state_runs_on_like_one_optimizer(cfg_factory):
    """The reference code's Adam: one optimizer whose moments and step count carry on from task
    to task and iteration to iteration (only the weights are reset to theta); evaluation
    starts every task from that state and leaves it unchanged."""
    eps, steps = 0.3, 3
    learner = make_reptile(inner_lr=0.05, inner_steps=steps, inner_adam_state="carried",
                           beta1=0.5)
    ref = {k: v.detach().clone().requires_grad_() for k, v in learner.model.named_parameters()}
    opt = torch.optim.Adam(ref.values(), lr=learner.inner_lr, betas=learner.betas, eps=1e-8)

    def ref_adapt(theta, x, y, optimizer):
        with torch.no_grad():
            for k, v in ref.items():
                v.copy_(theta[k])
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(functional_call(learner.model, ref, (x,)), y).backward()
            optimizer.step()
        return {k: v.detach().clone() for k, v in ref.items()}

    cfg = cfg_factory("algo=reptile", "data=synthetic", f"train.lr={eps}", "train.iterations=10")
    outer, _ = run.build_optimizer(cfg, learner)
    for it in range(2):  # two meta-iterations: the state also carries across iterations
        ep = tiny_episode(tasks=3, seed=it)
        theta = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
        phis = [ref_adapt(theta, ep.x_support[t], ep.y_support[t], opt) for t in range(3)]
        loss, _ = learner(ep)
        outer.zero_grad()
        loss.backward()
        outer.step()
        for k, p in learner.model.named_parameters():
            want = theta[k] + eps * (sum(phi[k] for phi in phis) / 3 - theta[k])
            assert torch.allclose(p.detach(), want, atol=1e-10), (it, k)
    state = learner.adam_state()
    assert state.t == 2 * 3 * steps
    for k, v in ref.items():
        assert torch.allclose(state.m[k], opt.state[v]["exp_avg"], atol=1e-12), k
        assert torch.allclose(state.v[k], opt.state[v]["exp_avg_sq"], atol=1e-12), k
    # a fresh state would step differently: the carried one is what made the match above
    fresh = make_reptile(inner_lr=0.05, inner_steps=steps)
    fresh.load_state_dict({k: v for k, v in learner.state_dict().items()
                           if not k.startswith("adam_")})
    x, y = tiny_episode(tasks=1, seed=9).x_support[0], tiny_episode(tasks=1, seed=9).y_support[0]
    theta = {k: v.detach() for k, v in learner.model.named_parameters()}
    carried_phi, _ = learner.adapt(theta, x, y, steps, state=learner.adam_state())
    fresh_phi, _ = fresh.adapt(theta, x, y, steps, state=fresh.adam_state())
    assert not torch.allclose(carried_phi["head.weight"], fresh_phi["head.weight"])
    # evaluation: each task from the saved state (a copy of the optimizer), state unchanged
    saved = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.eval()
    ep = tiny_episode(tasks=2, seed=7)
    with torch.no_grad():
        _, metrics = learner(ep)
    theta = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    for t in range(2):
        copy = torch.optim.Adam(ref.values(), lr=learner.inner_lr, betas=learner.betas, eps=1e-8)
        copy.load_state_dict(deepcopy(opt.state_dict()))
        phi = ref_adapt(theta, ep.x_support[t], ep.y_support[t], copy)
        mine, _ = learner.adapt(theta, ep.x_support[t], ep.y_support[t], steps,
                                state=learner.adam_state())
        for k in phi:
            assert torch.allclose(mine[k], phi[k], atol=1e-10), (k, (mine[k] - phi[k]).abs().max())
    for k, v in learner.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert "adam_v" in saved and "adam_t" in saved  # checkpoints hold the state


def test_reptile_carried_state_comes_back_with_the_checkpointed_weights():
    """Resuming from a state_dict continues exactly: the carried Adam state is in it."""
    a = make_reptile(inner_lr=0.05, inner_steps=3, inner_adam_state="carried")
    a(tiny_episode(tasks=2, seed=1))  # one training forward moves the carried state
    b = make_reptile(inner_lr=0.05, inner_steps=3, inner_adam_state="carried")
    blank = make_reptile(inner_lr=0.05, inner_steps=3, inner_adam_state="carried")
    b.load_state_dict(a.state_dict())
    ep = tiny_episode(tasks=2, seed=2)
    la, lb, lblank = a(ep)[0], b(ep)[0], blank(ep)[0]
    assert torch.equal(la, lb)
    assert not torch.allclose(la, lblank)  # same weights, blank state: another step


def test_linear_schedule_reaches_zero_and_resumes(cfg_factory):
    cfg = cfg_factory("algo=reptile", "data=synthetic", "train.iterations=8")
    learner = make_reptile()
    optimizer, scheduler = run.build_optimizer(cfg, learner)
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        if len(lrs) == 3:
            state = scheduler.state_dict(), optimizer.state_dict()
    assert lrs == pytest.approx([1.0 - i / 8 for i in range(8)])
    assert optimizer.param_groups[0]["lr"] == 0.0
    opt2, sched2 = run.build_optimizer(cfg, make_reptile())  # restored as train() resumes
    opt2.load_state_dict(state[1])
    sched2.load_state_dict(state[0])
    assert opt2.param_groups[0]["lr"] == pytest.approx(lrs[3])


def test_bad_optimizer_and_schedule_are_reported(cfg_factory):
    cfg = cfg_factory("train.optimizer=foo", "train.lr_schedule=bar")
    problems = run.check_static(cfg)
    assert "train.optimizer=foo is not one of: adam, sgd, sgd_hd" in problems
    assert "train.lr_schedule=bar is not one of: step, linear, cosine" in problems
    assert not any("optimizer" in p or "lr_schedule" in p for p in run.check_static(cfg_factory()))


def test_reptile_non_transductive_queries_do_not_see_each_other():
    from metabench.backbones.conv4 import Conv4

    torch.manual_seed(0)
    learner = Reptile(Conv4((1, 8, 8), hidden=4, layers=2), "classification", 2).double()
    params = dict(learner.model.named_parameters())
    xs, xq = torch.randn(2, 1, 8, 8).double(), torch.randn(6, 1, 8, 8).double()
    xq2 = torch.cat([xq[:1], torch.randn(5, 1, 8, 8).double()])  # only query 0 kept
    single = functional_call(learner.model, params, (torch.cat([xs, xq[:1]]),))[-1]
    for transductive in (False, True):
        a = learner.query_predictions(params, xs, xq, transductive)
        b = learner.query_predictions(params, xs, xq2, transductive)
        assert torch.allclose(a[0], b[0]) is not transductive
    assert torch.allclose(learner.query_predictions(params, xs, xq, False)[0], single)


def test_reptile_learns_synthetic(tmp_path, cfg_factory):
    from learning import CASES, train_and_compare

    # short-horizon settings, transductive scoring (see CASES["reptile"]; the
    # non-transductive protocol is tested above)
    before, after = train_and_compare(cfg_factory, tmp_path, *CASES["reptile"])
    # 12 runs (seeds 0-5 x kernels AVX2, DEFAULT; scripts/learning_spread.py): after
    # 0.801 +- 0.011 (min 0.778), gap 0.309 +- 0.056 (min 0.260: 2 fine-tuning steps of the
    # untrained net already reach 0.38-0.54); thresholds 0.7 = mean - 9.2 sd, 0.08 = mean - 4.1
    # sd (min(mean - 4 sd, min - 0.05), rounded down; chance 0.2)
    assert after >= 0.7, (before, after)
    assert after >= before + 0.08, (before, after)
