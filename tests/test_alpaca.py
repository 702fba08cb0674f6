"""ALPaCA: the batch posterior against sequential rank-one (Sherman-Morrison) updates and the
prior in float64, the masked context against truncated support sets, the predictive variance
shrinking with context, the NLL and coverage against torch.distributions, the random context
sizes of training, and learning on sinusoids."""

from __future__ import annotations

import pytest
import torch

from metabench import run
from metabench.algorithms.alpaca import ALPaCA
from metabench.backbones.mlp import MLP
from metabench.episodes import Episode
from metabench.evaluation import run_episodes, summarize

SIGMA = 0.05


def make_learner(seed: int = 0, d: int = 6) -> ALPaCA:
    torch.manual_seed(seed)
    learner = ALPaCA(MLP((1,), hidden=(8, d), activation="tanh"), "regression", 0,
                     sigma_eps=SIGMA).double()
    with torch.no_grad():  # a prior that is not the identity, off-diagonal terms included
        learner.l_offdiag.normal_(0, 0.3)
        learner.l_logdiag.normal_(0, 0.3)
        learner.k0.normal_()
    return learner


def episode(tasks: int = 3, shots: int = 7, queries: int = 5, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(tasks, shots, 1, generator=g, dtype=torch.float64) * 10 - 5
    xq = torch.rand(tasks, queries, 1, generator=g, dtype=torch.float64) * 10 - 5
    return Episode(xs, torch.sin(xs) + 0.1 * torch.randn(xs.shape, generator=g,
                                                         dtype=torch.float64),
                   xq, torch.sin(xq), ways=0)


def features(learner: ALPaCA, x: torch.Tensor) -> torch.Tensor:
    return learner.backbone(x.flatten(0, 1)).view(*x.shape[:2], -1)


def sequential_predictive(learner: ALPaCA, ep: Episode, t: int, context: int):
    """Reference: start from the prior (explicit inverse of Lambda0 = L L^T), fold in the first
    ``context`` support points one at a time by Sherman-Morrison, then predict."""
    chol0 = learner.prior_cholesky().detach()
    p = torch.linalg.inv(chol0 @ chol0.T)  # Lambda_n^-1
    q = chol0 @ chol0.T @ learner.k0.detach()  # Lambda_n K_n
    phi_s, phi_q = features(learner, ep.x_support)[t], features(learner, ep.x_query)[t]
    for i in range(context):
        f = phi_s[i][:, None]
        pf = p @ f
        p = p - pf @ pf.T / (1 + f.T @ pf)
        q = q + f * ep.y_support[t, i]
    mean = phi_q @ (p @ q)
    var = (1 + ((phi_q @ p) * phi_q).sum(-1)) * SIGMA
    return mean[:, 0], var


def prefix_mask(ep: Episode, context: int) -> torch.Tensor:
    mask = torch.zeros(ep.y_support.shape[:2], dtype=torch.float64)
    mask[:, :context] = 1
    return mask


@pytest.mark.parametrize("context", [0, 1, 3, 7])
def test_masked_batch_posterior_equals_sequential_rank_one_updates(context):
    learner, ep = make_learner(), episode()
    with torch.no_grad():
        pred = learner.predictive(ep, prefix_mask(ep, context))
        for t in range(ep.tasks):
            mean, var = sequential_predictive(learner, ep, t, context)
            torch.testing.assert_close(pred[t, :, 0, 0], mean, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(pred[t, :, 0, 1], var, rtol=1e-9, atol=1e-12)


def test_masked_context_equals_a_truncated_support_set():
    learner, ep = make_learner(), episode()
    short = Episode(ep.x_support[:, :3], ep.y_support[:, :3], ep.x_query, ep.y_query, 0)
    learner.eval()
    with torch.no_grad():
        torch.testing.assert_close(learner.predictive(ep, prefix_mask(ep, 3)),
                                   learner.predict(short), rtol=1e-10, atol=1e-12)


def test_no_context_gives_the_prior_predictive():
    learner, ep = make_learner(), episode()
    with torch.no_grad():
        pred = learner.predictive(ep, prefix_mask(ep, 0))
        lam0 = learner.prior_cholesky() @ learner.prior_cholesky().T
        phi = features(learner, ep.x_query)
        mean = phi @ learner.k0
        var = (1 + torch.einsum("tmd,de,tme->tm", phi, torch.linalg.inv(lam0), phi)) * SIGMA
    torch.testing.assert_close(pred[..., 0, 0], mean[..., 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pred[..., 0, 1], var, rtol=1e-10, atol=1e-12)
    assert (pred[..., 0, 1] > SIGMA).all()


def test_predictive_variance_never_grows_with_context():
    learner, ep = make_learner(), episode(shots=10)
    with torch.no_grad():
        var = torch.stack([learner.predictive(ep, prefix_mask(ep, c))[..., 0, 1]
                           for c in range(11)])
    steps = var[1:] - var[:-1]
    assert (steps <= 1e-12).all(), steps.max()
    assert (var[-1] < var[0]).all() and (var >= SIGMA).all()


def test_nll_and_coverage_match_torch_distributions_and_train_on_the_nll():
    learner, ep = make_learner(), episode()
    learner.eval()
    with torch.no_grad():
        loss, metrics = learner(ep)
        pred = learner.predict(ep)
    mean, sd = pred[..., 0, 0], pred[..., 0, 1].sqrt()
    y = ep.y_query[..., 0]
    normal = torch.distributions.Normal(mean, sd)
    torch.testing.assert_close(metrics["nll"], -normal.log_prob(y).mean(1), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(metrics["loss"], ((mean - y) ** 2).mean(1))
    z = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.95, dtype=torch.float64))
    torch.testing.assert_close(metrics["coverage90"], ((y - mean).abs() <= z * sd)
                               .double().mean(1))
    assert loss == metrics["loss"].mean()
    assert metrics["pre_loss"].shape == (ep.tasks,)  # the prior's, reported in evaluation
    learner.train()
    torch.manual_seed(0)
    loss, metrics = learner(ep)
    assert torch.equal(loss, metrics["nll"].mean())  # the paper's objective
    loss.backward()
    grads = {n: p.grad for n, p in learner.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), list(grads)
    assert (grads["l_offdiag"].triu() == 0).all()  # only L's strict lower triangle is used


def test_training_context_sizes_are_uniform_prefixes():
    learner, ep = make_learner(), episode(tasks=4000, shots=4, queries=1)
    torch.manual_seed(0)
    mask = learner.context_mask(ep)
    counts = mask.sum(1)
    torch.testing.assert_close(mask, (torch.arange(4) < counts[:, None]).float())
    freq = torch.bincount(counts.long(), minlength=5) / 4000
    assert ((freq - 0.2).abs() < 0.03).all(), freq  # U{0..4}: 0.2 each, sd 0.006
    learner.eval()
    assert learner.context_mask(ep).all()
    fixed = ALPaCA(MLP((1,)), "regression", 0, random_context=False)
    assert fixed.context_mask(ep).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"sigma_eps": 0}, "algo.sigma_eps=0 must be a positive number"),
    ({"prior_precision": -1.0}, "algo.prior_precision=-1.0 must be a positive number"),
    ({"random_context": 1}, "algo.random_context=1 must be true or false"),
])
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ALPaCA(MLP((1,)), "regression", 0, **kwargs)


# a narrower net than the paper's 128-128-32 and 150 steps of 10 tasks: about 3 CPU seconds
LEARN = ["algo=alpaca", "data=sinusoid", "logger=none", "backbone.hidden=[32,32,16]",
         "train.iterations=150", "train.lr=0.003", "train.eval_every=1000",
         "train.val_episodes=50", "eval.episodes=100"]


def learn(cfg_factory, tmp_path, *overrides: str) -> tuple[dict, dict]:
    """Test metrics of the init training starts from, and after training."""
    cfg = cfg_factory(*LEARN, *overrides)
    torch.manual_seed(cfg.seed)  # as run.train does: "before" is the init training starts from
    data, learner, device = run.prepare(cfg, ("test",))
    test = data.sampler("test", run.episode_spec(cfg, False), device)
    before = {k: m for k, (m, _) in summarize(run_episodes(
        learner, test, cfg.eval.episodes, cfg.eval.batch, cfg.eval.seed)).items()}
    return before, run.train(cfg, tmp_path, say=lambda *_: None)["test"]


def test_alpaca_learns_sinusoids(cfg_factory, tmp_path):
    # one thread: the batched Cholesky factorisations and solves of 10 tasks' 16 x 16 matrices
    # gain nothing from a second one, and measured 10-15x slower with two threads while the
    # other core was busy (the same numbers either way)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before, after = learn(cfg_factory, tmp_path)
    finally:
        torch.set_num_threads(threads)
    # measured over seeds 0-3, with the default and ATEN_CPU_CAPABILITY=default kernels (the
    # same to 3 digits): before MSE 4.44-5.06, NLL 89-104; after MSE 0.12-0.23, NLL 0.87-2.2,
    # the prior (no context) 3.3-3.5
    assert after["mean"] < 0.6 and after["mean"] < 0.2 * before["loss"], (before, after)
    assert after["nll"] < 6 and after["nll"] < before["nll"] - 40, (before, after)
    assert after["mean"] < 0.3 * after["pre_adaptation_mean"], after  # the context helps
