"""BMAML (Yoon et al., NeurIPS 2018, "Bayesian Model-Agnostic Meta-Learning"; jsikyoon/bmaml):
M particles, each a full copy of the network's weights (backbone + linear head, as MAML's),
meta-learned as M independent initialisations; each task moves them by SVGD on the log posterior
log p(y_S | x_S, theta) + log p(theta) of its support set:
phi(theta_m) = (1/M) sum_j [k(theta_j, theta_m) grad_j log p + grad_{theta_j} k(theta_j, theta_m)],
theta_m += lr * phi(theta_m), k = exp(-||theta_j - theta_m||^2 / h), h = median of the M x M
squared distances / log M (stop-gradient; M = 1: gradient ascent). Meta-loss, the chaser loss:
followers take ``inner_steps`` steps on the support set, leaders ``leader_steps`` more from them
on support + query under stop-gradient; sum_m ||follower_m - leader_m||^2 over the network
weights, mean over tasks. Prediction: the particles' average (classification: log of the mean
softmax; regression: one Gaussian per particle, of variance 1/gamma, the particle's noise).
``learn_precisions``: each particle also carries log lambda (weight precision) and, in
regression, log gamma (data precision) with Gamma priors, as the official bnn.py; else both are
fixed. Deviations from the official code: configs/algo/bmaml.yaml."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metabench.algorithms.arguments import require
from metabench.algorithms.base import MetaLearner
from metabench.algorithms.gradient import Params, check_task_batching
from metabench.backbones.norms import explicit_batch_stats, query_outputs
from metabench.episodes import Episode
from metabench.uncertainty import log_mean_exp

PRECISIONS = ("log_lambda", "log_gamma")  # per-particle entries that are not network weights


def median_bandwidth(sq_dists: Tensor) -> Tensor:
    """h = median(all M x M squared distances, the zero diagonal included; the mean of the two
    middle values for an even count, as the official tf_utils.median) / log M, detached."""
    v = sq_dists.detach().flatten().sort().values
    n = v.numel()
    med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
    return med / math.log(sq_dists.shape[0])


def svgd_direction(params: Params, grads: Params) -> Params:
    """phi(theta_m) for every particle m (leading dim M of each entry): the kernel-weighted
    gradients plus the repulsive kernel gradients, (1/M) sum_j [k_jm g_j + grad_j k_jm]."""
    m = next(iter(params.values())).shape[0]
    if m == 1:  # k(theta, theta) = 1 and its gradient is 0: plain gradient ascent
        return grads
    flat = torch.cat([p.flatten(1) for p in params.values()], 1)  # [M, D]
    gram = flat @ flat.T  # squared distances from the Gram matrix: O(M^2 + M D) memory
    sq = (gram.diag()[:, None] + gram.diag()[None] - 2 * gram).clamp_min(0)
    sq = sq * (1 - torch.eye(m, dtype=sq.dtype, device=sq.device))  # exact zero diagonal
    h = median_bandwidth(sq).clamp_min(torch.finfo(sq.dtype).tiny)  # identical: k = 1, no push
    k = torch.exp(-sq / h)  # [j, m], symmetric
    out = {}
    for name, p in params.items():
        drive = torch.einsum("jm,j...->m...", k, grads[name])
        # grad_{theta_j} k(theta_j, theta_m) = (2/h) (theta_m - theta_j) k_jm, summed over j
        ksum = k.sum(0).view(-1, *[1] * (p.dim() - 1))
        repulse = (2 / h) * (p * ksum - torch.einsum("jm,j...->m...", k, p))
        out[name] = (drive + repulse) / m
    return out


class BMAML(MetaLearner):
    any_ways = False  # the head has one output per training way
    norms = ("batch", "support", "none")  # as MAML: no running averages inside torch.func

    def __init__(self, backbone: nn.Module, kind: str, ways: int, particles: int = 5,
                 inner_lr: float = 0.1, leader_lr: float | None = None, inner_steps: int = 1,
                 leader_steps: int = 1, eval_inner_steps: int = 3, first_order: bool = False,
                 learn_precisions: bool = False, weight_precision: float = 0.0,
                 noise_precision: float = 100.0, a_gamma: float = 2.0, b_gamma: float = 0.2,
                 a_lambda: float = 2.0, b_lambda: float = 2.0, precision_lr_scale: float = 1.0,
                 task_batching: str = "auto"):
        super().__init__(backbone, kind, ways)
        require("a positive integer", particles=particles)
        leader_lr = inner_lr if leader_lr is None else leader_lr
        require("a positive number", inner_lr=inner_lr, leader_lr=leader_lr,
                noise_precision=noise_precision, a_gamma=a_gamma, b_gamma=b_gamma,
                a_lambda=a_lambda, b_lambda=b_lambda, precision_lr_scale=precision_lr_scale)
        if (isinstance(weight_precision, bool) or not isinstance(weight_precision, (int, float))
                or weight_precision < 0 or (learn_precisions and weight_precision == 0)):
            raise ValueError(f"algo.weight_precision={weight_precision} must be a non-negative "
                             "number (positive with algo.learn_precisions=true)")
        require("a non-negative integer", inner_steps=inner_steps, leader_steps=leader_steps,
                eval_inner_steps=eval_inner_steps)
        require("true or false", first_order=first_order, learn_precisions=learn_precisions)
        out = ways if kind == "classification" else 1
        self.model = nn.Sequential(OrderedDict(backbone=backbone,
                                               head=nn.Linear(backbone.out_dim, out)))
        inits = []
        for i in range(particles):  # M independent initialisations of the same network
            for mod in self.model.modules() if i else ():
                if hasattr(mod, "reset_parameters"):
                    mod.reset_parameters()
            inits.append({k: p.detach().clone() for k, p in self.model.named_parameters()})
        self.names = list(inits[0])
        self.n_weights = sum(p.numel() for p in inits[0].values())
        for mod in self.model.modules():  # the template holds no weights: the particles do
            mod._parameters = dict.fromkeys(mod._parameters)
        self.particles = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(  # no dots in keys
            torch.stack([w[k] for w in inits])) for k in self.names})
        self.learned = (["log_lambda"] + (["log_gamma"] if kind == "regression" else [])
                        if learn_precisions else [])
        self.fixed = {"log_lambda": math.log(weight_precision) if weight_precision else None,
                      "log_gamma": math.log(noise_precision)}
        for k in self.learned:  # the official code starts them at -log m_l, -log m_g
            self.particles[k] = nn.Parameter(torch.full((particles, 1), self.fixed[k]))
        self.predicts_variance, self.m = kind == "regression", particles
        self.inner_lr, self.leader_lr = inner_lr, leader_lr
        self.inner_steps, self.leader_steps = inner_steps, leader_steps
        self.eval_inner_steps, self.first_order = eval_inner_steps, first_order
        self.prior = (a_lambda, b_lambda, a_gamma, b_gamma)
        self.precision_lr_scale = precision_lr_scale
        self.task_batching = check_task_batching(task_batching)

    def initial(self) -> Params:
        """The meta-learned particles: network weights [M, ...] and learned log precisions."""
        return {**{k: self.particles[k.replace(".", "__")] for k in self.names},
                **{k: self.particles[k] for k in self.learned}}

    def precision(self, p: Params, name: str, like: Tensor) -> Tensor | None:
        """A particle's log precision: learned (its entry) or fixed (None: no weight prior)."""
        if name in p:
            return p[name][0]
        v = self.fixed[name]
        return None if v is None else torch.full((), v, dtype=like.dtype, device=like.device)

    def log_posterior(self, p: Params, x: Tensor, y: Tensor) -> Tensor:
        """log p(y | x, theta) + log p(theta) of one particle (bnn.py: sums over the data;
        Gamma priors on lambda and gamma in log space, Jacobian included; constants dropped)."""
        net = {k: p[k] for k in self.names}
        out = functional_call(self.model, net, (x,))
        if self.kind == "classification":
            total = -F.cross_entropy(out, y, reduction="sum")
        else:
            log_g = self.precision(p, "log_gamma", out)
            total = (0.5 * log_g - 0.5 * log_g.exp() * (out - y) ** 2).sum()
        log_l = self.precision(p, "log_lambda", out)
        if log_l is not None:
            sq = sum((w ** 2).sum() for w in net.values())
            total = total + 0.5 * self.n_weights * log_l - 0.5 * log_l.exp() * sq
        for name, (a, b) in zip(PRECISIONS, (self.prior[:2], self.prior[2:]), strict=True):
            if name in p:  # (a - 1) s - b e^s + s: the Gamma(a, b) prior of e^s, in s
                total = total + (a * p[name] - b * p[name].exp()).sum()
        return total

    def vmapped(self, episode: Episode) -> bool:
        """Tasks and particles through torch.func.vmap or loops. auto: vmap on CUDA and for vectors
        (the MLP: 8x faster on CPU), loops for images on CPU (measured a little faster there)."""
        if self.task_batching != "auto":
            return self.task_batching == "vmap"
        return episode.x_support.device.type == "cuda" or episode.x_support.dim() <= 3

    def per_particle(self, fn: Callable[..., Tensor | Params], params: Params, *args: Tensor,
                     vmap: bool) -> Tensor | Params:
        """``fn(particle, *args)`` for every particle, stacked on a leading particle dim."""
        if vmap:
            return torch.func.vmap(fn, in_dims=(0,) + (None,) * len(args))(params, *args)
        outs = [fn({k: v[i] for k, v in params.items()}, *args) for i in range(self.m)]
        return ({k: torch.stack([o[k] for o in outs]) for k in outs[0]}
                if isinstance(outs[0], dict) else torch.stack(outs))

    def svgd(self, params: Params, x: Tensor, y: Tensor, steps: int, lr: float,
             first_order: bool, vmap: bool) -> Params:
        """``steps`` SVGD steps (ascent on the log posterior); first order: the log-posterior
        gradients are constants (the official stop_grad), the kernel terms stay differentiable."""
        grad_fn = torch.func.grad(self.log_posterior)
        for _ in range(steps):
            grads = self.per_particle(grad_fn, params, x, y, vmap=vmap)
            phi = svgd_direction(params, {k: g.detach() if first_order else g
                                          for k, g in grads.items()})
            params = {k: p + lr * (self.precision_lr_scale if k in PRECISIONS else 1) * phi[k]
                      for k, p in params.items()}
        return params

    def query(self, params: Params, xs: Tensor, xq: Tensor, vmap: bool) -> Tensor:
        """Per-particle query outputs [M, m, out]; regression [M, m, 2]: mean, noise variance."""
        def one(p: Params, xs: Tensor, xq: Tensor) -> Tensor:
            net = {k: p[k] for k in self.names}
            out = query_outputs(lambda x: functional_call(self.model, net, (x,)), xs, xq,
                                self.norm)
            if self.kind == "classification":
                return out
            var = (-self.precision(p, "log_gamma", out)).exp()
            return torch.cat([out, var.expand_as(out)], -1)

        return self.per_particle(one, params, xs, xq, vmap=vmap)

    def chaser(self, follow: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor,
               vmap: bool) -> Tensor:
        """sum_m ||follower_m - stopgrad(leader_m)||^2 over the network weights: the leaders
        continue ``leader_steps`` SVGD steps from the followers on support + query."""
        with torch.no_grad():
            lead = self.svgd({k: v.detach() for k, v in follow.items()}, torch.cat([xs, xq]),
                             torch.cat([ys, yq]), self.leader_steps, self.leader_lr, True, vmap)
        return sum(((follow[k] - lead[k].detach()) ** 2).sum() for k in self.names)

    def outputs(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """(per-particle query outputs [T, M, m, out] after the followers' steps, then the
        chaser losses [T] in training, the unadapted particles' outputs in evaluation)."""
        vmap = self.vmapped(episode)
        steps = self.inner_steps if self.training else self.eval_inner_steps
        init = self.initial()

        def one_task(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
            follow = self.svgd(init, xs, ys, steps, self.inner_lr, self.first_order, vmap)
            if not self.training:
                return self.query(follow, xs, xq, vmap), self.query(init, xs, xq, vmap)
            with torch.no_grad():
                out = self.query({k: v.detach() for k, v in follow.items()}, xs, xq, vmap)
            return out, self.chaser(follow, xs, ys, xq, yq, vmap)

        data = (episode.x_support, episode.y_support, episode.x_query, episode.y_query)
        if vmap:
            with explicit_batch_stats():  # exact second-order batch norm under vmap
                return torch.func.vmap(one_task)(*data)
        per_task = [one_task(*(d[t] for d in data)) for t in range(episode.tasks)]
        return tuple(torch.stack(o) for o in zip(*per_task, strict=True))

    def predictive(self, outs: Tensor) -> Tensor:
        """The particles' average: log mean softmax [T, m, ways], or the mixture [T, m, M, 2]."""
        if self.kind == "classification":
            return log_mean_exp(F.log_softmax(outs, -1), 1)
        return outs.permute(0, 2, 1, 3)

    def predict(self, episode: Episode) -> Tensor:
        return self.predictive(self.outputs(episode)[0])

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        outs, second = self.outputs(episode)
        loss, metrics = self.scored(self.predictive(outs), episode)
        if self.training:  # logged: the followers' query metrics and the chaser loss
            metrics["chaser"] = second.detach()
            return second.mean(), metrics
        _, pre = self.scored(self.predictive(second), episode)  # the unadapted particles
        metrics.update({f"pre_{k}": v for k, v in pre.items() if v.dim() == 1})
        return loss, metrics
