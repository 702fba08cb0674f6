"""Meta Networks (Munkhdalai & Yu, ICML 2017): slow weights learned across tasks and fast
weights generated per task from support-set loss gradients by small meta networks, combined by
layer augmentation (a layer's output is act(slow x) + act(fast x)).

- Task-level fast weights Q* for the representation layer of the embedding u: the gradient of
  a representation loss (contrastive, over the support pairs) at the slow weights Q, turned
  into weights by the generator d.
- Example-level fast weights W*_i for the base learner b (a two-layer head): each support
  example's own cross-entropy gradient at the slow weights W, turned into weights by the
  generator m, stored with the example's embedding u(x_i) as its key.
- A query reads its fast weights by attention over the support keys, softmax of cosine
  similarities with u(x_q), and is classified by b with W and those weights.

The generators are coordinate-wise MLPs over gradients preprocessed as Andrychowicz et al.
(log|g| / p and sign g, or -1 and e^p g for tiny g; p = 10), so one generator serves every
weight; the gradients they read are inputs (detached), the meta-gradient flows through the
weights they write. With the generators' outputs at zero MetaNet is the slow network.

Deviations: fast weights augment the head and the representation layer on top of the shared
backbone, not every conv layer; d is an MLP over the support pairs' mean gradient (the paper
runs an LSTM over sampled pairs' gradients); the contrastive margin is 1; each generator adds a
learned gradient step -eta g to its MLP's output (``step_init``; 0 turns it off): from the MLP
alone the fast weights start label-blind, the attention over untrained keys is nearly uniform,
and half the seeds of the synthetic learning test never left chance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.coordinatewise import log_sign
from metabench.algorithms.metric import MetricLearner

Params = dict[str, Tensor]


class WeightGenerator(nn.Module):
    """A coordinate-wise MLP: a gradient tensor of any shape -> fast weights of that shape,
    plus a learned step -eta * g (eta from ``step_init``), so that fast weights start as a
    gradient step and carry the support labels from the first iteration."""

    def __init__(self, hidden: int, step_init: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.step = nn.Parameter(torch.tensor(float(step_init)))

    def forward(self, grads: Params) -> Params:
        return {k: self.net(log_sign(g.detach())).squeeze(-1) - self.step * g.detach()
                for k, g in grads.items()}


def augmented(x: Tensor, w: Tensor, b: Tensor, fw: Tensor | None, fb: Tensor | None,
              act: bool) -> Tensor:
    """Layer augmentation: act(x W^T + b) + act(x W*^T + b*). ``fw`` [out, in] is shared by
    the rows of x [N, in]; [N, out, in] gives each row its own fast weights."""
    f = torch.relu if act else (lambda t: t)
    out = f(x @ w.T + b)
    if fw is None:
        return out
    fast = torch.einsum("ni,noi->no", x, fw) if fw.dim() == 3 else x @ fw.T
    return out + f(fast + fb)


def _params(shapes: dict[str, tuple[int, ...]]) -> nn.ParameterDict:
    out = nn.ParameterDict()
    for k, shape in shapes.items():
        t = torch.empty(shape)
        if len(shape) == 2:
            nn.init.kaiming_uniform_(t, a=math.sqrt(5))
        else:
            t.zero_()
        out[k] = nn.Parameter(t)
    return out


class MetaNet(MetricLearner):
    any_ways = False  # the base learner's output layer has one unit per training way

    def __init__(self, backbone: nn.Module, kind: str, ways: int, hidden: int = 64,
                 embedding: int = 64, generator_hidden: int = 20, margin: float = 1.0,
                 attention_scale: float = 1.0, step_init: float = 1.0):
        super().__init__(backbone, kind, ways)
        require("a positive integer", hidden=hidden, embedding=embedding,
                generator_hidden=generator_hidden)
        require("a positive number", margin=margin, attention_scale=attention_scale)
        require("a non-negative number", step_init=step_init)
        self.attention_scale = float(attention_scale)
        d = backbone.out_dim
        self.margin = float(margin)
        self.base = _params({"w1": (hidden, d), "b1": (hidden,), "w2": (ways, hidden),
                             "b2": (ways,)})
        self.rep = _params({"w": (embedding, d), "b": (embedding,)})
        self.m = WeightGenerator(generator_hidden, step_init)  # example-level, base learner
        self.d = WeightGenerator(generator_hidden, step_init)  # task-level, representation

    def base_logits(self, z: Tensor, fast: Params | None) -> Tensor:
        w = self.base
        f = fast or {}
        h = augmented(z, w["w1"], w["b1"], f.get("w1"), f.get("b1"), act=True)
        return augmented(h, w["w2"], w["b2"], f.get("w2"), f.get("b2"), act=False)

    def represent(self, z: Tensor, q: Params, fast: Params | None) -> Tensor:
        f = fast or {}
        return augmented(z, q["w"], q["b"], f.get("w"), f.get("b"), act=True)

    def task_fast_weights(self, zs: Tensor, ys: Tensor) -> Params:
        """Q* = d(gradient of the contrastive representation loss over the support pairs)."""
        def loss(q: Params) -> Tensor:
            r = self.represent(zs, q, None)
            dist = torch.cdist(r, r)
            same = (ys[:, None] == ys[None]).to(r.dtype)
            pair = same * dist ** 2 + (1 - same) * torch.relu(self.margin - dist) ** 2
            return pair.triu(1).sum() / max(1, zs.shape[0] * (zs.shape[0] - 1) // 2)

        slow = {k: v.detach() for k, v in self.rep.items()}
        return self.d(torch.func.grad(loss)(slow))

    def example_fast_weights(self, zs: Tensor, ys: Tensor) -> Params:
        """W*_i = m(gradient of example i's own loss), [n, ...] per base-learner weight."""
        def loss(w: Params, z: Tensor, y: Tensor) -> Tensor:
            logits = torch.relu(z @ w["w1"].T + w["b1"]) @ w["w2"].T + w["b2"]
            return F.cross_entropy(logits[None], y[None])

        slow = {k: v.detach() for k, v in self.base.items()}
        grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
            slow, zs.detach(), ys)
        return self.m(grads)

    def task_logits(self, zs: Tensor, ys: Tensor, zq: Tensor) -> Tensor:
        task = self.task_fast_weights(zs, ys)
        memory = self.example_fast_weights(zs, ys)
        keys = self.represent(zs, self.rep, task)
        reads = self.represent(zq, self.rep, task)
        cos = F.cosine_similarity(reads[:, None], keys[None], dim=-1)  # [m, n]
        attn = (self.attention_scale * cos).softmax(-1)
        fast = {k: torch.einsum("mn,n...->m...", attn, v) for k, v in memory.items()}
        return self.base_logits(zq, fast)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        return torch.stack([self.task_logits(z_support[t], y_support[t], z_query[t])
                            for t in range(z_support.shape[0])])

