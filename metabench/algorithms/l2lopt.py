"""Learning to learn by gradient descent by gradient descent (Andrychowicz et al., NeurIPS
2016; official code google-deepmind/learning-to-learn): a two-layer coordinate-wise LSTM
(20, 20) shared by every parameter of the learner, each coordinate with its own state; input
the preprocessed gradient (``log_sign``, p = 10, the paper's appendix), output x 0.01 the
update: theta <- theta + 0.01 W h. The learner's gradients are detached (no second
derivatives); the meta-loss is the learner's loss summed over the unroll (``meta_loss=sum``,
weights 1), here the query loss after every step.

Deviation: the paper unrolls 100 steps in truncations of 20 on one optimisee; here each task
is a fresh learner trained for ``inner_steps`` (the horizon, 10 by default), backpropagated
through in full: no truncation is needed at that length."""

from __future__ import annotations

from torch import nn

from metabench.algorithms.arguments import require
from metabench.algorithms.coordinatewise import CoordinateLSTM, flatten, log_sign, unflatten
from metabench.algorithms.scratch import Params, ScratchLearner


class L2LOptimizer(ScratchLearner):
    def __init__(self, backbone: nn.Module, kind: str, ways: int,
                 hidden: tuple[int, ...] = (20, 20), output_scale: float = 0.01,
                 preprocess_p: float = 10.0, **kwargs):
        super().__init__(backbone, kind, ways, **kwargs)
        require("a positive number", output_scale=output_scale, preprocess_p=preprocess_p)
        hidden = tuple(hidden)
        require("a positive integer", **{f"hidden[{j}]": h for j, h in enumerate(hidden)})
        self.lstm = CoordinateLSTM(2, hidden)
        self.head = nn.Linear(hidden[-1], 1)
        self.output_scale, self.p = output_scale, preprocess_p

    def rule_init(self, params: Params) -> None:
        return None  # zero LSTM states, created by the first step

    def update(self, grads: Params, state):
        """The updates for every coordinate of every task (the same LSTM for all)."""
        g = flatten(grads, 1)  # [T, coords]
        h, state = self.lstm(log_sign(g.detach(), self.p).flatten(0, 1), state)
        step = self.output_scale * self.head(h).squeeze(-1)
        return unflatten(step.view_as(g), grads, 1), state

    def rule_step(self, params, state, grads, losses, t):
        step, state = self.update(grads, state)
        return {k: p + step[k] for k, p in params.items()}, state
