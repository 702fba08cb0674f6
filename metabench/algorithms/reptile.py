"""Reptile (Nichol et al. 2018): per task, ``k`` steps of SGD or Adam on the support set from
the shared weights theta give phi; the meta-update moves theta towards the mean phi:
theta <- theta + eps * (mean_t phi_t - theta).

The shared loop only knows ``loss.backward()`` and ``optimizer.step()``, so training returns
the surrogate loss ``mean_t 0.5 * ||theta - stopgrad(phi_t)||^2``, whose gradient is
``theta - mean_t phi_t``: plain SGD with learning rate eps (``train.optimizer=sgd``,
``train.lr=eps``, ``train.lr_schedule=linear`` for the paper's annealing to 0) takes exactly
the Reptile step. The metrics are those of the adapted weights phi on the query set.

``inner_adam_state=carried`` is the reference code's Adam (TensorFlow's optimizer slots are not
part of the interpolated weights): the moment estimates and the step count carry on from task
to task through training, the shared state is saved with the weights, and each evaluation
task starts from it and leaves it unchanged. ``per_task`` starts every task from a fresh,
bias-corrected state, whose first steps are sign steps of size ``inner_lr`` on every weight.
Under ``torchrun`` each rank carries the state of its own tasks (rank 0's is saved).

Evaluation fine-tunes on the support set for ``eval_inner_steps`` and scores the query set.
``task_batching`` chooses how an evaluation episode's tasks are fine-tuned: one after another
(``loop``) or all at once with ``torch.func.vmap`` (``vmap``, the loop's result to rounding: the
same minibatch draws in the same order, every task from the saved Adam state); ``auto`` is vmap
on every device (on CPU measured faster too: scripts/eval_batching.py). Training always loops.
Batch norm uses the statistics of each forward call (backbones/norms.py), so how the query
set is fed decides what its predictions may see: ``transductive=false`` (the default, the
paper's non-transductive protocol) forwards each query example together with the support set
and keeps its own output, so a prediction depends on no other query; ``transductive=true``
forwards the query set as one batch (its statistics shared by all queries, as MAML and the
metric learners here do). Training metrics always use the query set as one batch: they are
only logged, and the per-example forward would cost more than the inner loop.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metabench.algorithms.base import MetaLearner, task_metrics
from metabench.algorithms.gradient import Params, check_task_batching
from metabench.backbones.norms import explicit_batch_stats, query_outputs
from metabench.episodes import Episode

INNER_OPTIMIZERS = ("sgd", "adam")
ADAM_STATES = ("per_task", "carried")
QUERY_IMAGES_PER_CALL = 2048  # non-transductive scoring: images per forward, bounds memory
# evaluation's vmap on CPU: tasks per call; more spill the caches (Conv-4, 5-way 1-shot, 2
# cores: 8 to 25 tasks at once 9 to 11 ms per task and step, 50 at once 14 to 17, the loop 13
# to 18)
VMAP_TASKS_CPU = 16


class AdamState(NamedTuple):
    """Inner Adam's first and second moment estimates and its step count."""
    m: Params
    v: Params
    t: int


def minibatches(n: int, batch: int, steps: int, device: torch.device) -> Tensor | None:
    """Indices [steps, batch] of ``steps`` minibatches of ``batch`` examples out of ``n``, drawn
    by walking through fresh random permutations (every example once per pass); None for full
    batch."""
    if batch <= 0 or batch >= n or steps == 0:
        return None
    order = torch.cat([torch.randperm(n, device=device)
                       for _ in range(math.ceil(steps * batch / n))])
    return order[:steps * batch].view(steps, batch)


class Reptile(MetaLearner):
    any_ways = False  # the head has one output per training way
    norms = ("batch", "support", "none")  # running averages cannot update inside torch.func

    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_lr: float = 0.001,
                 inner_steps: int = 5, eval_inner_steps: int = 50, inner_optimizer: str = "adam",
                 beta1: float = 0.0, beta2: float = 0.999, inner_batch: int = 0,
                 eval_inner_batch: int = 0, transductive: bool = False,
                 inner_adam_state: str = "per_task", task_batching: str = "auto"):
        super().__init__(backbone, kind, ways)
        if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)) or inner_lr <= 0:
            raise ValueError(f"algo.inner_lr={inner_lr} must be a positive number")
        for key, v in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps),
                       ("inner_batch", inner_batch), ("eval_inner_batch", eval_inner_batch)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"algo.{key}={v} must be a non-negative integer")
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f"algo.inner_optimizer={inner_optimizer} is not one of: "
                             f"{', '.join(INNER_OPTIMIZERS)}")
        for key, v in (("beta1", beta1), ("beta2", beta2)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"algo.{key}={v} must be a number in [0, 1)")
        if inner_adam_state not in ADAM_STATES:
            raise ValueError(f"algo.inner_adam_state={inner_adam_state} is not one of: "
                             f"{', '.join(ADAM_STATES)}")
        if not isinstance(transductive, bool):
            raise ValueError(f"algo.transductive={transductive} must be true or false")
        self.task_batching = check_task_batching(task_batching)
        out = ways if kind == "classification" else 1
        self.model = nn.Sequential(OrderedDict(backbone=backbone,
                                               head=nn.Linear(backbone.out_dim, out)))
        self.inner_lr = float(inner_lr)
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_optimizer = inner_optimizer
        self.betas = (float(beta1), float(beta2))
        self.inner_batch = inner_batch
        self.eval_inner_batch = eval_inner_batch
        self.transductive_scoring = transductive
        self.carried = inner_adam_state == "carried" and inner_optimizer == "adam"
        if self.carried:  # flat over all weights; buffers, so checkpoints and .to() carry them
            n = sum(p.numel() for p in self.model.parameters())
            self.register_buffer("adam_m", torch.zeros(n))
            self.register_buffer("adam_v", torch.zeros(n))
            self.register_buffer("adam_t", torch.zeros((), dtype=torch.long))

    def adam_state(self) -> AdamState | None:
        """The carried inner Adam state (views of the buffers); None: every task starts fresh."""
        if not self.carried:
            return None
        m, v, i = {}, {}, 0
        for k, p in self.model.named_parameters():
            m[k] = self.adam_m[i:i + p.numel()].view_as(p)
            v[k] = self.adam_v[i:i + p.numel()].view_as(p)
            i += p.numel()
        return AdamState(m, v, int(self.adam_t))

    @torch.no_grad()
    def keep_adam_state(self, state: AdamState) -> None:
        self.adam_m.copy_(torch.cat([t.flatten() for t in state.m.values()]))
        self.adam_v.copy_(torch.cat([t.flatten() for t in state.v.values()]))
        self.adam_t.fill_(state.t)

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int, batch: int = 0,
              state: AdamState | None = None) -> tuple[Params, AdamState | None]:
        """phi: ``steps`` inner optimiser steps on (x, y) from ``params`` (detached: Reptile
        needs no gradient through the inner loop), on minibatches of ``batch`` (0: all); Adam
        starts from ``state`` (None: fresh) and its final state is returned with phi."""
        batches = minibatches(x.shape[0], batch, steps, x.device)
        return self.inner_loop(params, x, y, steps, batches, state)

    def inner_loop(self, params: Params, x: Tensor, y: Tensor, steps: int,
                   batches: Tensor | None, state: AdamState | None
                   ) -> tuple[Params, AdamState | None]:
        """``adapt`` with its minibatch indices [steps, batch] already drawn (None: full
        batch): a pure function of its inputs, so it can be vmapped over tasks."""
        classification = self.kind == "classification"

        def loss_fn(p: Params, xb: Tensor, yb: Tensor) -> Tensor:
            pred = functional_call(self.model, p, (xb,))
            return task_metrics(pred[None], yb[None], classification)["loss"][0]

        grad_fn = torch.func.grad(loss_fn)
        params = {k: v.detach() for k, v in params.items()}
        if state is None:
            state = AdamState({k: torch.zeros_like(v) for k, v in params.items()},
                              {k: torch.zeros_like(v) for k, v in params.items()}, 0)
        m, v2, t0 = state
        b1, b2 = self.betas
        lr = self.inner_lr
        for i in range(steps):
            xb, yb = (x, y) if batches is None else (x[batches[i]], y[batches[i]])
            grads = grad_fn(params, xb, yb)
            if self.inner_optimizer == "sgd":
                params = {k: p - lr * grads[k] for k, p in params.items()}
                continue
            t = t0 + i + 1  # Adam, bias-corrected
            m = {k: b1 * m[k] + (1 - b1) * g for k, g in grads.items()}
            v2 = {k: b2 * v2[k] + (1 - b2) * g * g for k, g in grads.items()}
            c1, c2 = 1 - b1 ** t, 1 - b2 ** t
            params = {k: p - lr * (m[k] / c1) / ((v2[k] / c2).sqrt() + 1e-8)
                      for k, p in params.items()}
        if self.inner_optimizer == "sgd":
            return params, None
        return params, AdamState(m, v2, t0 + steps)

    def query_predictions(self, params: Params, xs: Tensor, xq: Tensor,
                          transductive: bool) -> Tensor:
        """Query predictions; non-transductive: each query forwarded with the support set
        (``norm=support`` is non-transductive by itself: the support's statistics for all)."""
        if transductive or self.norm != "batch":
            return query_outputs(lambda x: functional_call(self.model, params, (x,)), xs, xq,
                                 self.norm)
        n = xs.shape[0]

        def one(x: Tensor) -> Tensor:
            return functional_call(self.model, params, (torch.cat([xs, x[None]]),))[n]

        chunk = max(1, QUERY_IMAGES_PER_CALL // (n + 1))
        with explicit_batch_stats():
            return torch.cat([torch.func.vmap(one)(xq[i:i + chunk])
                              for i in range(0, xq.shape[0], chunk)])

    def transductive(self) -> bool:
        return self.norm == "batch" and self.transductive_scoring

    def batching_mode(self, device: torch.device | str) -> str:
        """``loop`` or ``vmap``: how evaluation adapts an episode's tasks (``auto``: vmap, on
        CPU too, where it was measured faster: scripts/eval_batching.py). Training always
        loops: the carried Adam state threads through its tasks in order."""
        if self.training:
            return "loop"
        return "vmap" if self.task_batching == "auto" else self.task_batching

    def adapted(self, episode: Episode) -> list[Params]:
        """phi for every task of ``episode`` under the current protocol."""
        theta = dict(self.model.named_parameters())
        steps, batch = ((self.inner_steps, self.inner_batch) if self.training
                        else (self.eval_inner_steps, self.eval_inner_batch))
        start = self.adam_state()
        if self.batching_mode(episode.x_support.device) == "vmap":
            return self.adapted_vmap(episode, theta, steps, batch, start)
        phis, state = [], start
        for t in range(episode.tasks):
            # carried: training threads one state through the tasks (the reference code's
            # sequential Adam); evaluation starts every task from the saved state
            task_start = state if self.training and self.carried else start
            phi, state = self.adapt(theta, episode.x_support[t], episode.y_support[t], steps,
                                    batch, task_start)
            phis.append(phi)
        if self.training and self.carried:
            self.keep_adam_state(state)
        return phis

    def adapted_vmap(self, episode: Episode, theta: Params, steps: int, batch: int,
                     start: AdamState | None) -> list[Params]:
        """Evaluation's phis with the tasks vmapped, the loop's to rounding: every task from
        ``start``, its minibatch indices drawn first, task by task in the loop's order."""
        x, y = episode.x_support, episode.y_support
        draws = [minibatches(x.shape[1], batch, steps, x.device) for _ in range(episode.tasks)]
        idx = None if draws[0] is None else torch.stack(draws)

        def one_task(xs: Tensor, ys: Tensor, task_idx: Tensor | None) -> Params:
            return self.inner_loop(theta, xs, ys, steps, task_idx, start)[0]

        # no explicit_batch_stats: the inner loop is first order, where the fused batch norm's
        # batching rule is exact (and faster)
        adapt = torch.func.vmap(one_task, in_dims=(0, 0, None if idx is None else 0))
        chunk = VMAP_TASKS_CPU if x.device.type == "cpu" else episode.tasks
        phis = []
        for i in range(0, episode.tasks, chunk):
            tasks = slice(i, i + chunk)
            part = adapt(x[tasks], y[tasks], None if idx is None else idx[tasks])
            phis += [{k: v[t] for k, v in part.items()} for t in range(x[tasks].shape[0])]
        return phis

    def predictions(self, episode: Episode, phis: list[Params]) -> Tensor:
        """Query predictions of the adapted weights (training: the query set as one batch)."""
        transductive = self.training or self.transductive_scoring
        with torch.no_grad():
            return torch.stack([self.query_predictions(phi, episode.x_support[t],
                                                       episode.x_query[t], transductive)
                                for t, phi in enumerate(phis)])

    def predict(self, episode: Episode) -> Tensor:
        return self.predictions(episode, self.adapted(episode))

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        phis = self.adapted(episode)
        loss, metrics = self.scored(self.predictions(episode, phis), episode)
        if not self.training:
            return loss, metrics
        theta = dict(self.model.named_parameters())
        surrogate = torch.stack([
            sum(0.5 * ((theta[k] - phi[k]) ** 2).sum() for k in theta) for phi in phis])
        return surrogate.mean(), metrics
