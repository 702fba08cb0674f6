"""Outer optimisers torch does not ship: SGD with hypergradient descent on its rate (SGD-HD,
Baydin et al., ICLR 2018, "Online Learning Rate Adaptation with Hypergradient Descent"), the
outer rule of Alpha-MAML."""

from __future__ import annotations

import torch


class SGDHD(torch.optim.Optimizer):
    """theta_t = theta_{t-1} - lr_t g_t with lr_t = lr_{t-1} + hypergrad_lr g_t . g_{t-1}: the
    derivative of the loss at theta_{t-1} with respect to the rate that produced it is
    -g_t . g_{t-1}, so the rate grows while successive gradients agree and shrinks when they
    oscillate. One rate per parameter group (the dot product over the group's parameters);
    ``hypergrad_lr=0`` is plain SGD at a fixed rate."""

    def __init__(self, params, lr: float = 1e-3, hypergrad_lr: float = 1e-4,
                 weight_decay: float = 0.0):
        if lr <= 0 or hypergrad_lr < 0 or weight_decay < 0:
            raise ValueError(f"SGD-HD needs lr > 0, hypergrad_lr >= 0 and weight_decay >= 0 "
                             f"(got {lr}, {hypergrad_lr}, {weight_decay})")
        super().__init__(params, {"lr": lr, "hypergrad_lr": hypergrad_lr,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            grads = [p.grad + group["weight_decay"] * p if group["weight_decay"] else p.grad
                     for p in params]
            previous = [self.state[p].get("previous") for p in params]
            if group["hypergrad_lr"] and params and all(g is not None for g in previous):
                h = sum((g * q).sum() for g, q in zip(grads, previous, strict=True))
                group["lr"] = max(float(group["lr"] + group["hypergrad_lr"] * h), 0.0)
            for p, g in zip(params, grads, strict=True):
                p.add_(g, alpha=-group["lr"])
                self.state[p]["previous"] = g.clone()
        return loss
