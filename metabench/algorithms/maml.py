"""MAML (Finn et al. 2017) and first-order MAML: a backbone plus a linear head, adapted per
task with SGD steps on the support set, scored on the query set with the adapted weights.

Tasks are adapted one after another (``task_batching=loop``) or all at once with
``torch.func.vmap`` (``vmap``); both give the same loss and meta-gradients, and the same
evaluation metrics. ``auto`` picks vmap for episodes on CUDA and the loop on CPU, where it was
measured faster in training and in evaluation alike (the vmapped query forward runs batched
weights as grouped convolutions: 2-3x slower on CPU; scripts/eval_batching.py)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metabench.algorithms.arguments import require
from metabench.algorithms.base import MetaLearner, task_metrics
from metabench.algorithms.gradient import Params, check_task_batching, sgd_adapt
from metabench.backbones.norms import explicit_batch_stats, query_outputs
from metabench.episodes import Episode


class MAML(MetaLearner):
    any_ways = False  # the head has one output per training way
    # running averages cannot be updated inside torch.func transforms (and MAML's code uses
    # batch statistics at test)
    norms = ("batch", "support", "none")

    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_lr: float = 0.4,
                 inner_steps: int = 1, eval_inner_steps: int = 3, first_order: bool = False,
                 task_batching: str = "auto"):
        super().__init__(backbone, kind, ways)
        require("a positive number", inner_lr=inner_lr)
        require("a non-negative integer", inner_steps=inner_steps,
                eval_inner_steps=eval_inner_steps)
        require("true or false", first_order=first_order)
        out = ways if kind == "classification" else 1
        self.model = nn.Sequential(OrderedDict(backbone=backbone,
                                               head=nn.Linear(backbone.out_dim, out)))
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.first_order = first_order
        self.task_batching = check_task_batching(task_batching)

    def inner_lrs(self) -> float | Params:
        """The inner step size; subclasses (Meta-SGD) return learned per-parameter rates."""
        return self.inner_lr

    def fast_params(self) -> Params:
        return dict(self.model.named_parameters())

    def fast_forward(self, p: Params, x: Tensor) -> Tensor:
        """The network's outputs on ``x`` with the fast weights ``p`` (CAVIA: its context)."""
        return functional_call(self.model, p, (x,))

    def task_loss(self, p: Params, x: Tensor, y: Tensor) -> Tensor:
        """The per-task loss (cross-entropy or MSE) of weights ``p`` on (x, y)."""
        pred = self.fast_forward(p, x)
        return task_metrics(pred[None], y[None], self.kind == "classification")["loss"][0]

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        return sgd_adapt(lambda p: self.task_loss(p, x, y), params, steps, self.inner_lrs(),
                         self.first_order)

    def batching_mode(self, device: torch.device | str) -> str:
        """``loop`` or ``vmap``: how an episode on ``device`` is batched over tasks, in training
        and evaluation alike (``auto``: vmap on CUDA, where it pays off, the loop elsewhere,
        where it was measured faster in both)."""
        if self.task_batching != "auto":
            return self.task_batching
        return "vmap" if torch.device(device).type == "cuda" else "loop"

    def one_task(self, params: Params, xs: Tensor, ys: Tensor, xq: Tensor,
                 steps: int) -> tuple[Tensor, ...]:
        """Query predictions after adapting ``params`` on (xs, ys); in evaluation also before."""
        fast = self.adapt(params, xs, ys, steps)

        def on_queries(p: Params) -> Tensor:  # norm=support: the support's statistics
            return query_outputs(lambda x: self.fast_forward(p, x), xs, xq, self.norm)

        if self.training:
            return (on_queries(fast),)
        return on_queries(fast), on_queries(params)

    def outputs(self, episode: Episode) -> tuple[Tensor, ...]:
        """``one_task``'s outputs for every task of the episode, stacked: [T, ...] each."""
        steps = self.inner_steps if self.training else self.eval_inner_steps
        params = self.fast_params()

        def one_task(xs: Tensor, ys: Tensor, xq: Tensor) -> tuple[Tensor, ...]:
            return self.one_task(params, xs, ys, xq, steps)

        if self.batching_mode(episode.x_support.device) == "vmap":
            with explicit_batch_stats():
                outs = torch.func.vmap(one_task, randomness="different")(
                    episode.x_support, episode.y_support, episode.x_query)
        else:
            per_task = [one_task(episode.x_support[t], episode.y_support[t], episode.x_query[t])
                        for t in range(episode.tasks)]
            outs = tuple(torch.stack(o) for o in zip(*per_task, strict=True))
        return outs

    def predict(self, episode: Episode) -> Tensor:
        return self.outputs(episode)[0]

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        outs = self.outputs(episode)
        loss, metrics = self.scored(outs[0], episode)
        if len(outs) > 1:  # evaluation also reports the unadapted model, for comparison
            pre = task_metrics(outs[1], episode.y_query, episode.is_classification)
            metrics.update({f"pre_{k}": v for k, v in pre.items()})
        return loss, metrics
