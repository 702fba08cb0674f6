"""MAML++ (Antoniou, Edwards & Storkey, ICLR 2019, "How to train your MAML"): MAML with the
paper's fixes, each on its own switch (all on in ``algo=mamlpp``):

- ``msl``: the multi-step loss, sum_j v_j L_Q(theta_{j+1}) over the inner steps, with v from
  ``msl_weights`` per epoch (the official code's schedule); after ``msl_epochs`` only the last
  step's loss;
- ``lslr``: a learned inner rate per parameter tensor and per step (init ``inner_lr``);
- ``bn_per_step``: batch-norm weights and biases per step (BNWB), outer-loop parameters only
  (not adapted in the inner loop), step j's slot used by step j's forwards;
- ``first_order_epochs``: derivative-order annealing, first order for that many epochs;
- cosine annealing of the outer rate comes from ``train.lr_schedule=cosine`` (the algo config).

An epoch is ``epoch_iterations`` meta-iterations (the code: 500), counted by a buffer, so a
resumed run continues its schedules. Per-step running statistics (BNRS) are not kept: the
official code normalises by batch statistics at test too (transductive), where they are never
read, and running averages cannot be updated inside ``torch.func`` transforms."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.gradient import Params, Rate, sgd_trajectory
from metabench.algorithms.maml import MAML
from metabench.backbones.norms import BatchStatNorm2d, query_outputs
from metabench.episodes import Episode


def msl_weights(steps: int, epoch: int, msl_epochs: int) -> Tensor:
    """The multi-step loss's per-step weights at ``epoch``: 1/N each at epoch 0; non-final ones
    fall by 1/(N msl_epochs) per epoch to a floor of 0.03/N, the last takes up the rest (at
    most 1 - (N-1) 0.03/N); they always sum to 1."""
    n = steps
    decay, floor = 1.0 / n / msl_epochs, 0.03 / n
    w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    w[:-1] = torch.clamp(w[:-1] - epoch * decay, min=floor)
    w[-1] = min(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    return w


def _key(name: str) -> str:
    return name.replace(".", "__")


class MAMLpp(MAML):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_lr: float = 0.1,
                 inner_steps: int = 5, eval_inner_steps: int = 5, first_order: bool = False,
                 task_batching: str = "auto", msl: bool = True, msl_epochs: int = 10,
                 lslr: bool = True, bn_per_step: bool = True, first_order_epochs: int = 0,
                 epoch_iterations: int = 500):
        super().__init__(backbone, kind, ways, inner_lr, inner_steps, eval_inner_steps,
                         first_order, task_batching)
        require("a positive integer", inner_steps=inner_steps, msl_epochs=msl_epochs,
                epoch_iterations=epoch_iterations)
        require("a non-negative integer", first_order_epochs=first_order_epochs)
        require("true or false", msl=msl, lslr=lslr, bn_per_step=bn_per_step)
        self.msl, self.msl_epochs, self.epoch_iterations = msl, msl_epochs, epoch_iterations
        self.first_order_epochs = first_order_epochs
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.slots = max(inner_steps, eval_inner_steps)
        self._step = 0  # the inner step of the forward in progress: its batch-norm slot
        self.bn: dict[str, str] = {}  # norm parameter name -> its per-step parameter's key
        if bn_per_step:
            for name, m in self.model.named_modules():
                if isinstance(m, (BatchStatNorm2d, nn.BatchNorm2d)) and m.weight is not None:
                    for part in ("weight", "bias"):
                        self.bn[f"{name}.{part}"] = _key(f"{name}.{part}")
            self.bn_slots = nn.ParameterDict({
                key: nn.Parameter(self.model.get_parameter(n).detach().repeat(self.slots, 1))
                for n, key in self.bn.items()})
            for n in self.bn:  # replaced by the slots: kept only so state_dicts stay alike
                self.model.get_parameter(n).requires_grad_(False)
        self.lslr = nn.ParameterDict({
            _key(n): nn.Parameter(torch.full((self.slots,), float(inner_lr)))
            for n in self.fast_params()}) if lslr else None

    def epoch(self) -> int:
        return int(self.iteration) // self.epoch_iterations

    def fast_params(self) -> Params:
        """What the inner loop adapts: every weight but the per-step batch-norm ones."""
        return {n: p for n, p in self.model.named_parameters() if n not in self.bn}

    def step_rate(self, j: int) -> Rate:
        if self.lslr is None:
            return self.inner_lr
        return {n: self.lslr[_key(n)][j] for n in self.fast_params()}

    def fast_forward(self, p: Params, x: Tensor) -> Tensor:
        slot = {n: self.bn_slots[key][self._step] for n, key in self.bn.items()}
        return super().fast_forward({**p, **slot}, x)

    def at_step(self, j: int, fn, *args):
        """``fn(*args)`` with the batch-norm slot of inner step ``j``."""
        self._step = min(j, self.slots - 1)
        try:
            return fn(*args)
        finally:
            self._step = 0

    def one_task(self, params: Params, xs: Tensor, ys: Tensor, xq: Tensor,
                 steps: int) -> tuple[Tensor, ...]:
        """Training: the query predictions after every inner step [N, m, out] while the
        multi-step loss is on, else after the last; evaluation: after the last, and before."""
        first_order = self.first_order or self.epoch() < self.first_order_epochs
        path = sgd_trajectory(
            lambda p, j: self.at_step(j, self.task_loss, p, xs, ys), params, steps,
            self.step_rate, first_order)

        def on_queries(p: Params, j: int) -> Tensor:
            return self.at_step(j, query_outputs, lambda x: self.fast_forward(p, x), xs, xq,
                                self.norm)

        last = on_queries(path[-1], steps - 1) if path else on_queries(params, 0)
        if not self.training:
            return last, on_queries(params, 0)
        if self.multi_step():
            return (torch.stack([on_queries(p, j) for j, p in enumerate(path)]),)
        return (last,)

    def multi_step(self) -> bool:
        return self.training and self.msl and self.epoch() < self.msl_epochs

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.multi_step():
            out = super().forward(episode)
        else:
            per_step = self.outputs(episode)[0]  # [T, N, m, out]
            weights = msl_weights(per_step.shape[1], self.epoch(), self.msl_epochs)
            losses = [self.scored(per_step[:, j], episode) for j in range(per_step.shape[1])]
            loss = sum(w * lj for w, (lj, _) in zip(weights.tolist(), losses, strict=True))
            out = loss, losses[-1][1]
        if self.training:
            self.iteration += 1
        return out
