"""Learning from scratch with a learned rule: every task starts a fresh MLP from a random init
and trains it for ``inner_steps`` steps on its whole support set; what is meta-learned is the
rule (a learned optimiser, BLUR's genome, a tuned step size), never the init.

The learner's widths and hidden activation are the backbone's (``backbone=mlp``: its Linear
layers are a blueprint; the input width comes from each episode, the output from its ways, so
a rule meta-trained on Omniglot runs on any other dataset). Fresh weights follow
``nn.Linear``'s default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn per task from torch's
generator (evaluation seeds it, so every arm meets the same inits for the same episodes).

Evaluation unrolls to max(``report_steps``), beyond the meta-training horizon, and records
query accuracy (regression: MSE) after each reported step as ``step<t>``; the headline
number is the one after ``eval_inner_steps`` steps. Meta-loss: the query loss after the last
step (``meta_loss=last``) or its mean over every step (``sum``: L2L's objective, weights 1).
The learner's gradients are detached (``first_order``: L2L's and Meta-LSTM's choice)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.base import MetaLearner, task_metrics
from metabench.episodes import Episode

Params = dict[str, Tensor]
LOSSES = ("ce", "mse")
META_LOSSES = ("last", "sum")


def blueprint(backbone: nn.Module) -> tuple[list[int], nn.Module]:
    """The hidden widths and hidden activation of an MLP backbone (the learner's shape)."""
    linears = [m for m in backbone.modules() if isinstance(m, nn.Linear)]
    if not linears and any(isinstance(m, nn.Conv2d) for m in backbone.modules()):
        raise ValueError("learners trained from scratch are MLPs: use backbone=mlp "
                         "(backbone.hidden sets the widths)")
    acts = [m for m in backbone.modules() if isinstance(m, (nn.ReLU, nn.Tanh, nn.Sigmoid))]
    return [m.out_features for m in linears], (acts[0] if acts else nn.Tanh())


def fresh_mlp(sizes: list[int], tasks: int, like: Tensor) -> Params:
    """Per-task weights w<l> [T, in, out] and biases b<l> [T, out], nn.Linear's default init."""
    out = {}
    for j, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        bound = 1.0 / math.sqrt(a)
        out[f"w{j}"] = torch.empty(tasks, a, b, dtype=like.dtype, device=like.device
                                   ).uniform_(-bound, bound)
        out[f"b{j}"] = torch.empty(tasks, b, dtype=like.dtype, device=like.device
                                   ).uniform_(-bound, bound)
    return out


def pm_one(y: Tensor, ways: int, dtype: torch.dtype) -> Tensor:
    """Labels [T, n] as +-1 one-hot targets [T, n, ways] (BLUR's encoding; loss=mse)."""
    return 2 * F.one_hot(y, ways).to(dtype) - 1


class ScratchLearner(MetaLearner):
    """The shared machinery: fresh MLPs, the unroll, the per-step records. A rule implements
    ``rule_init(params)`` and ``rule_step(params, state, grads, losses, t)``; a rule without
    gradients (BLUR) overrides ``trajectory`` instead."""

    norms = ("none",)  # MLPs without normalisation: predictions are per query

    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_steps: int = 10,
                 eval_inner_steps: int = 10, report_steps: tuple[int, ...] = (1, 5, 10, 50, 200),
                 meta_loss: str = "last", loss: str = "ce", first_order: bool = True):
        super().__init__(backbone, kind, ways)
        require("a positive integer", inner_steps=inner_steps, eval_inner_steps=eval_inner_steps)
        require("true or false", first_order=first_order)
        for key, v, options in (("meta_loss", meta_loss, META_LOSSES), ("loss", loss, LOSSES)):
            if v not in options:
                raise ValueError(f"algo.{key}={v} is not one of: {', '.join(options)}")
        steps = list(report_steps)
        if not steps or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1
                                for t in steps):
            raise ValueError(f"algo.report_steps={steps} must be a list of positive integers")
        self.widths, self.act = blueprint(backbone)
        self.backbone = nn.Identity()  # a blueprint only: no weights of its own, any input size
        self.inner_steps, self.eval_inner_steps = inner_steps, eval_inner_steps
        self.report_steps = sorted(set(steps))
        self.reported = tuple(f"step{t}" for t in self.report_steps)
        self.meta_loss, self.loss, self.first_order = meta_loss, loss, first_order

    def param_groups(self) -> list[dict]:  # BLUR's learn=rate freezes the rest of the genome
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def outputs(self, episode: Episode) -> int:
        return episode.ways if episode.is_classification else 1

    def fresh(self, episode: Episode) -> Params:
        d = math.prod(episode.x_support.shape[2:])
        sizes = [d, *self.widths, self.outputs(episode)]
        x = episode.x_support
        return fresh_mlp(sizes, episode.tasks, x if x.is_floating_point() else x.float())

    def mlp(self, p: Params, x: Tensor) -> Tensor:
        """The learners' outputs [T, n, outputs] on inputs [T, n, ...]."""
        h = x.flatten(2).to(p["w0"].dtype)
        layers = len(p) // 2
        for j in range(layers):
            h = torch.baddbmm(p[f"b{j}"][:, None], h, p[f"w{j}"])
            if j < layers - 1:
                h = self.act(h)
        return h

    def objective(self, pred: Tensor, y: Tensor) -> Tensor:
        """The per-task loss [T]: cross-entropy, or MSE against +-1 one-hot targets."""
        if self.kind == "classification" and self.loss == "mse":
            return ((pred - pm_one(y, pred.shape[-1], pred.dtype)) ** 2).flatten(1).mean(1)
        return task_metrics(pred, y, self.kind == "classification")["loss"]

    def support_grads(self, p: Params, x: Tensor, y: Tensor) -> tuple[Params, Tensor]:
        """Each task's support-loss gradient (tasks are independent: one backward for all)
        and its loss [T]; detached unless ``first_order`` is off."""
        with torch.enable_grad():
            q = {k: v.detach().requires_grad_() for k, v in p.items()} if self.first_order \
                else {k: v if v.requires_grad else v.requires_grad_() for k, v in p.items()}
            losses = self.objective(self.mlp(q, x), y)
            grads = torch.autograd.grad(losses.sum(), list(q.values()),
                                        create_graph=not self.first_order)
        return dict(zip(q, grads, strict=True)), losses.detach()

    def rule_init(self, params: Params) -> object:  # pragma: no cover
        raise NotImplementedError

    def rule_step(self, params: Params, state: object, grads: Params, losses: Tensor,
                  t: int) -> tuple[Params, object]:  # pragma: no cover
        raise NotImplementedError

    def trajectory(self, episode: Episode, steps: int, record: set[int]) -> dict[int, Tensor]:
        """Query outputs after each step t in ``record`` (0: the fresh learner)."""
        params = self.fresh(episode)
        state = self.rule_init(params)
        outs = {0: self.mlp(params, episode.x_query)} if 0 in record else {}
        for t in range(1, steps + 1):
            grads, losses = self.support_grads(params, episode.x_support, episode.y_support)
            params, state = self.rule_step(params, state, grads, losses, t)
            if t in record:
                outs[t] = self.mlp(params, episode.x_query)
        return outs

    def headline(self) -> int:
        return self.inner_steps if self.training else self.eval_inner_steps

    def predict(self, episode: Episode) -> Tensor:
        t = self.headline()
        return self.trajectory(episode, t, {t})[t]

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        t = self.headline()
        if self.training:
            record = set(range(1, t + 1)) if self.meta_loss == "sum" else {t}
            outs = self.trajectory(episode, t, record)
            loss = torch.stack([self.objective(outs[s], episode.y_query).mean()
                                for s in sorted(record)]).mean()
            metrics = task_metrics(outs[t], episode.y_query, episode.is_classification)
            metrics["loss"] = self.objective(outs[t], episode.y_query).detach()
            return loss, metrics
        outs = self.trajectory(episode, max(t, *self.report_steps), {t, *self.report_steps})
        loss, metrics = self.scored(outs[t], episode)
        key = "acc" if episode.is_classification else "loss"
        for s in self.report_steps:
            metrics[f"step{s}"] = task_metrics(outs[s], episode.y_query,
                                               episode.is_classification)[key]
        return loss, metrics
