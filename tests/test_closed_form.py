"""R2-D2 and MetaOptNet: the ridge solution in either form is the explicit ridge estimate, the
SVM dual found by qpth satisfies its constraints and matches cvxpy's solve of the same problem,
the ridge dual's closed form is qpth's solution of MetaOptNet's ridge QP, both heads are
equivariant to relabelling the classes, gradients reach the features, and both learn."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import gaussian_episode

from metabench.algorithms.heads import crammer_singer_qp, ridge_solve, svm_dual
from metabench.algorithms.metaoptnet import MetaOptNet
from metabench.algorithms.r2d2 import R2D2
from metabench.backbones.mlp import MLP
from metabench.episodes import Episode

D_IN, WAYS, SHOTS, QUERIES = 6, 3, 2, 2
qpth = pytest.importorskip("qpth")


def explicit_ridge(z: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Ridge as least squares on the augmented system [z; sqrt(lam) I] W = [y; 0], per task."""
    d = z.shape[-1]
    out = []
    for zt, yt in zip(z, y, strict=True):
        a = torch.cat([zt, math.sqrt(lam) * torch.eye(d, dtype=z.dtype)])
        b = torch.cat([yt, torch.zeros(d, yt.shape[1], dtype=z.dtype)])
        out.append(torch.linalg.lstsq(a, b).solution)
    return torch.stack(out)


@pytest.mark.parametrize("n,d", [(4, 9), (9, 4), (6, 6)])
def test_woodbury_and_standard_forms_are_the_explicit_ridge(n, d):
    g = torch.Generator().manual_seed(n * 10 + d)
    z = torch.randn(2, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    ref = explicit_ridge(z, y, 0.7)
    for form in ("woodbury", "standard", "auto"):
        assert torch.allclose(ridge_solve(z, y, 0.7, form), ref, atol=1e-10), form


def test_ridge_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(1, 4, 2, generator=g, dtype=torch.float64)
    lam = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ridge_solve(a, y, b, "woodbury"), (z, lam))


def make_episode(ways: int = WAYS, shots: int = SHOTS, tasks: int = 2) -> Episode:
    return gaussian_episode(ways, shots, QUERIES, D_IN, tasks)


def make(cls, **kw):
    torch.manual_seed(0)
    return cls(MLP((D_IN,), hidden=(5,)), "classification", WAYS, **kw).double().eval()


def test_r2d2_logits_are_the_papers_formula():
    """A slow reference: per task, W = (X^T X + lam I)^-1 X^T Y with the bias column, X and Y
    scaled by 1/sqrt(n); logits alpha (z_q W + b) + beta."""
    learner, ep = make(R2D2, lam=2.0, scale_init=3.0, bias_init=0.25), make_episode()
    zs, zq = learner.embed(ep)
    got = learner.logits(zs, ep.y_support, zq, WAYS)
    n = zs.shape[1]
    for t in range(ep.tasks):
        x = torch.cat([zs[t], torch.ones(n, 1, dtype=zs.dtype)], 1) / math.sqrt(n)
        y = F.one_hot(ep.y_support[t], WAYS).double() / math.sqrt(n)
        w = torch.linalg.inv(x.T @ x + 2.0 * torch.eye(x.shape[1], dtype=x.dtype)) @ x.T @ y
        ref = 3.0 * (zq[t] @ w[:-1] + w[-1]) + 0.25
        assert torch.allclose(got[t], ref, atol=1e-10)


def test_r2d2_lambda_is_learned_only_when_asked():
    fixed, learned = make(R2D2), make(R2D2, learn_lambda=True)
    assert "lam" not in dict(fixed.named_parameters()) and "lam" in dict(fixed.named_buffers())
    learned.train()
    learned(make_episode())[0].backward()
    assert learned.lam.grad is not None and learned.lam.grad.abs() > 0
    assert learned.scale.grad.abs() > 0 and learned.bias.grad is not None


def qp_problem(tasks: int = 2, ways: int = WAYS, shots: int = SHOTS):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(tasks, ways * shots, 4, generator=g, dtype=torch.float64)
    y = torch.arange(ways).repeat(shots).repeat(tasks, 1)
    return z, y


def test_svm_dual_satisfies_its_constraints_and_matches_cvxpy():
    from qpth.qp import QPFunction, QPSolvers

    z, y = qp_problem()
    alpha = svm_dual(z, y, WAYS, c=0.1, iterations=50)
    onehot = F.one_hot(y, WAYS).double()
    assert (alpha <= 0.1 * onehot + 1e-6).all()           # a_im <= C [m = y_i]
    assert torch.allclose(alpha.sum(-1), torch.zeros(2, WAYS * SHOTS, dtype=torch.float64),
                          atol=1e-6)                       # sum_m a_im = 0
    assert alpha.abs().max() > 1e-3                        # not the trivial point
    q, p, g, h, a, b = crammer_singer_qp(z @ z.transpose(1, 2), y, WAYS, 0.1)
    ref = QPFunction(verbose=-1, solver=QPSolvers.CVXPY)(q, p, g, h, a, b)
    assert torch.allclose(alpha.flatten(1), ref, atol=1e-4)


def test_ridge_dual_closed_form_is_the_codes_qp_solution():
    """MetaOptNet's ridge head solves min 1/2 a^T (K + lam I) (x) I_ways a - 2 y^T a with a
    vacuous inequality (0 a <= 0) through qpth; ours is that QP's closed form."""
    from qpth.qp import QPFunction

    z, y = qp_problem()
    learner = make(MetaOptNet, head="ridge", lam=0.5)
    n, tasks = z.shape[1], z.shape[0]
    kernel = z @ z.transpose(1, 2) + 0.5 * torch.eye(n, dtype=z.dtype)
    q = crammer_singer_qp(kernel, y, WAYS, 0.0, jitter=0.0)[0]
    p = -2 * F.one_hot(y, WAYS).double().reshape(tasks, -1)
    g = torch.zeros(tasks, n * WAYS, n * WAYS, dtype=z.dtype)
    h = torch.zeros(tasks, n * WAYS, dtype=z.dtype)
    ref = QPFunction(verbose=-1, maxIter=50)(q, p, g, h, torch.empty(0), torch.empty(0))
    assert torch.allclose(learner.dual(z, y, WAYS).flatten(1), ref, atol=1e-6)


@pytest.mark.parametrize("cls,kw", [(R2D2, {"scale_init": 10.0, "lam": 1.0}),
                                    (MetaOptNet, {"head": "svm"}),
                                    (MetaOptNet, {"head": "ridge", "lam": 1.0})])
def test_relabelling_the_classes_permutes_the_logits(cls, kw):
    learner, ep = make(cls, **kw), make_episode()
    perm = torch.tensor([2, 0, 1])  # class c is called perm[c]
    relabelled = Episode(ep.x_support, perm[ep.y_support], ep.x_query, perm[ep.y_query], WAYS)
    a, b = learner.predict(ep), learner.predict(relabelled)
    assert torch.allclose(b[..., perm], a, atol=1e-5)
    assert not torch.allclose(a[..., 0], a[..., 1], atol=1e-3)  # not a constant head


@pytest.mark.parametrize("cls,kw", [(R2D2, {}), (MetaOptNet, {"head": "svm"})])
def test_gradients_reach_the_features_and_any_ways_works(cls, kw):
    learner = make(cls, **kw).train()
    learner(make_episode())[0].backward()
    grads = [p.grad for p in learner.backbone.parameters()]
    assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
    assert sum(gr.abs().sum() for gr in grads) > 0 and learner.scale.grad.abs() > 0
    learner.eval()
    assert learner.predict(make_episode(ways=5, shots=1)).shape == (2, 5 * QUERIES, 5)


@pytest.mark.parametrize("kw,message", [
    ({"head": "svd"}, "algo.head=svd must be svm or ridge"),
    ({"c": 0}, "algo.c=0 must be a positive number"),
    ({"iterations": 0}, "algo.iterations=0 must be a positive integer"),
])
def test_metaoptnet_bad_arguments_are_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        make(MetaOptNet, **kw)


def test_r2d2_bad_arguments_are_one_line():
    with pytest.raises(ValueError, match="algo.lam=0 must be a positive number"):
        make(R2D2, lam=0)
    with pytest.raises(ValueError, match="algo.form=qr must be auto, woodbury or standard"):
        make(R2D2, form="qr")


@pytest.mark.parametrize("name", ["r2d2", "metaoptnet"])
def test_closed_form_heads_learn_synthetic(tmp_path, cfg_factory, name):
    from learning import CASES, train_and_compare

    before, after = train_and_compare(cfg_factory, tmp_path, *CASES[name])
    # 4 seeds each (scripts/learning_spread.py, AVX2): R2-D2 after 0.848 +- 0.016 (min 0.829),
    # gap 0.480 +- 0.023; MetaOptNet after 0.830 +- 0.009 (min 0.820), gap 0.420 +- 0.010;
    # thresholds 0.7 (>= 9 sd below both means) and 0.3 (>= 7.7 sd); chance 0.2
    assert after >= 0.7, (before, after)
    assert after >= before + 0.3, (before, after)
