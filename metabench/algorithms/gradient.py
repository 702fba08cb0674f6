"""The functional inner loop shared by the gradient-based learners (MAML, FOMAML, ...).

Parameters are plain dicts of tensors; adaptation is a pure function built on
``torch.func.grad``, so the same code gives second-order meta-gradients (the outer backward
differentiates through the inner gradient) or first-order ones (inner gradients detached).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]


def sgd_adapt(loss_fn: Callable[[Params], Tensor], params: Params, steps: int,
              lr: float | Params, first_order: bool) -> Params:
    """``steps`` plain SGD steps on ``loss_fn`` from ``params``; ``lr`` may be per-parameter."""
    grad_fn = torch.func.grad(loss_fn)
    for _ in range(steps):
        grads = grad_fn(params)
        params = {
            k: p - (lr[k] if isinstance(lr, dict) else lr)
            * (grads[k].detach() if first_order else grads[k])
            for k, p in params.items()
        }
    return params


TASK_BATCHING = ("auto", "loop", "vmap")


def check_task_batching(choice: str) -> str:
    """``choice`` if it is a known ``task_batching`` mode, else the one-line error."""
    if choice not in TASK_BATCHING:
        raise ValueError(f"algo.task_batching={choice} is not one of: "
                         f"{', '.join(TASK_BATCHING)}")
    return choice

