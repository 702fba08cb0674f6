"""Meta-LSTM (Ravi & Larochelle, ICLR 2017, "Optimization as a Model for Few-Shot Learning";
code twitter-research/meta-learning-lstm). The learner's parameters are the cell state of a
meta-LSTM cell: theta_t = sigmoid(f_t) theta_{t-1} - sigmoid(i_t) grad_t, with
f_t = W_F [h_t, theta_{t-1}, f_{t-1}] + b_F and i_t = W_I [h_t, theta_{t-1}, i_{t-1}] + b_I
(pre-activations carried), where h_t comes from a first coordinate-wise LSTM (hidden 20) over
the preprocessed loss and gradient (``log_sign``, p = 10). Every coordinate shares the
weights; b_F ~ U(4, 6) (keep about 1), b_I ~ U(-5, -4) (a small rate), the other weights
U(-0.01, 0.01). The initial parameters theta_0 (the learner: the backbone plus a linear head,
the paper's Conv-4 of 32 filters) are learned too; the gradients and losses fed in are
detached. Each inner step uses the whole support set (the paper's 5-way settings: 12 steps
of batch 5 for 1-shot, 8 of batch 25 for 5-shot). Batch norm as MAML (``norm=batch``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.coordinatewise import CoordinateLSTM, flatten, log_sign, unflatten
from metabench.algorithms.gradient import Params
from metabench.algorithms.maml import MAML


class MetaLSTMCell(nn.Module):
    """theta_t = sigmoid(f_t) theta_{t-1} - sigmoid(i_t) g_t, one gate pair per coordinate."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w_f = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.w_i = nn.Parameter(torch.empty(hidden + 2).uniform_(-0.01, 0.01))
        self.b_f = nn.Parameter(torch.empty(()).uniform_(4, 6))
        self.b_i = nn.Parameter(torch.empty(()).uniform_(-5, -4))

    def forward(self, h: Tensor, theta: Tensor, g: Tensor, f: Tensor, i: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        f = torch.cat([h, theta[:, None], f[:, None]], 1) @ self.w_f + self.b_f
        i = torch.cat([h, theta[:, None], i[:, None]], 1) @ self.w_i + self.b_i
        return torch.sigmoid(f) * theta - torch.sigmoid(i) * g, f, i


class MetaLSTM(MAML):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, inner_steps: int = 12,
                 eval_inner_steps: int = 12, hidden: int = 20, preprocess_p: float = 10.0,
                 task_batching: str = "auto"):
        super().__init__(backbone, kind, ways, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=True,
                         task_batching=task_batching)
        require("a positive integer", hidden=hidden)
        require("a positive number", preprocess_p=preprocess_p)
        self.lstm = CoordinateLSTM(4, (hidden,))
        self.cell = MetaLSTMCell(hidden)
        self.p = preprocess_p

    def fast_params(self) -> Params:
        return dict(self.model.named_parameters())  # theta_0; the optimiser is not adapted

    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        theta = flatten(params)
        f = i = torch.zeros_like(theta)
        state = None
        grad_and_loss = torch.func.grad_and_value(lambda p: self.task_loss(p, x, y))
        for _ in range(steps):
            grads, loss = grad_and_loss(unflatten(theta.detach(), params))
            g = flatten(grads).detach()
            feats = torch.cat([log_sign(loss.detach().expand_as(g), self.p),
                               log_sign(g, self.p)], -1)
            h, state = self.lstm(feats, state)
            theta, f, i = self.cell(h, theta, g, f, i)
        return unflatten(theta, params)
