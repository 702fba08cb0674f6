"""The functional inner loop shared by the gradient-based learners (MAML, FOMAML, MAML++,
iMAML, ...), and the implicit meta-gradient.

Parameters are plain dicts of tensors; adaptation is a pure function built on
``torch.func.grad``, so the same code gives second-order meta-gradients (the outer backward
differentiates through the inner gradient) or first-order ones (inner gradients detached).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Params = dict[str, Tensor]
Rate = float | Tensor | Params


def sgd_trajectory(loss_fn: Callable[[Params, int], Tensor], params: Params, steps: int,
                   lr: Callable[[int], Rate], first_order: bool) -> list[Params]:
    """The iterates theta_1 .. theta_steps of SGD on ``loss_fn(p, j)`` (step j's loss: MAML++
    runs step j with its own batch-norm slot) from ``params``, with step j's rate ``lr(j)``
    (a number or tensor for every parameter, or one per parameter name)."""
    grad_fn = torch.func.grad(loss_fn)
    out = []
    for j in range(steps):
        grads, rate = grad_fn(params, j), lr(j)
        params = {
            k: p - (rate[k] if isinstance(rate, dict) else rate)
            * (grads[k].detach() if first_order else grads[k])
            for k, p in params.items()
        }
        out.append(params)
    return out


def sgd_adapt(loss_fn: Callable[[Params], Tensor], params: Params, steps: int,
              lr: Rate, first_order: bool) -> Params:
    """``steps`` plain SGD steps on ``loss_fn`` from ``params``; ``lr`` may be per-parameter."""
    path = sgd_trajectory(lambda p, _j: loss_fn(p), params, steps, lambda _j: lr, first_order)
    return path[-1] if path else params


def _dot(a: Params, b: Params) -> Tensor:
    return sum((a[k] * b[k]).sum() for k in a)


def conjugate_gradient(matvec: Callable[[Params], Params], b: Params, steps: int) -> Params:
    """``steps`` conjugate-gradient iterations on ``matvec(x) = b`` from x = 0 (a symmetric
    positive-definite operator on parameter dicts): exact after dim steps in exact arithmetic."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    d = dict(b)
    rr = _dot(r, r)
    for _ in range(steps):
        if rr <= torch.finfo(rr.dtype).tiny:
            break
        ad = matvec(d)
        alpha = rr / _dot(d, ad)
        x = {k: x[k] + alpha * d[k] for k in x}
        r = {k: r[k] - alpha * ad[k] for k in r}
        rr_new = _dot(r, r)
        d = {k: r[k] + (rr_new / rr) * d[k] for k in d}
        rr = rr_new
    return x


def implicit_meta_gradient(support_loss: Callable[[Params], Tensor], phi: Params, g: Params,
                           lam: float, cg_steps: int, cg_damping: float = 0.0,
                           lam_damping: float = 0.0) -> Params:
    """iMAML's meta-gradient (Rajeswaran et al. 2019, eq. 7): (I + H / lam)^-1 g, with H the
    Hessian of ``support_loss`` at the adapted ``phi`` and g the query gradient there, by
    ``cg_steps`` conjugate-gradient steps of Hessian-vector products (no backprop through the
    inner loop). The dampings give the official code's operator instead, (1 + cg_damping) v +
    Hv / (lam + lam_damping) (it uses 1.0 and 10): with 0 and 0, the paper's."""
    phi = {k: v.detach() for k, v in phi.items()}
    _, hvp = torch.func.vjp(torch.func.grad(support_loss), phi)  # one linearisation, K products
    scale = 1.0 / (lam + lam_damping)

    def matvec(v: Params) -> Params:
        hv = hvp(v)[0]
        return {k: (1.0 + cg_damping) * v[k] + scale * hv[k].detach() for k in v}

    return conjugate_gradient(matvec, {k: v.detach() for k, v in g.items()}, cg_steps)


TASK_BATCHING = ("auto", "loop", "vmap")


def check_task_batching(choice: str) -> str:
    """``choice`` if it is a known ``task_batching`` mode, else the one-line error."""
    if choice not in TASK_BATCHING:
        raise ValueError(f"algo.task_batching={choice} is not one of: "
                         f"{', '.join(TASK_BATCHING)}")
    return choice
