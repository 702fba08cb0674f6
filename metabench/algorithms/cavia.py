"""CAVIA (Zintgraf et al., ICML 2019, "Fast Context Adaptation via Meta-Learning"): the
network's weights theta are shared and only meta-learned; per task, a context vector phi,
reset to 0, is the only thing the inner loop adapts (MAML's functional inner loop over the
dict {"context": phi}, first or second order alike).

How phi enters (the official code, lmzintgraf/cavia): on an MLP (regression) it is
concatenated to the input, computed here as its equivalent, a learned linear shift C phi of
the first layer's pre-activations ([x, phi] W^T = x W_x^T + phi W_phi^T); on Conv-4
(classification) it conditions one block by FiLM, gamma * h + beta with (gamma, beta) = a linear
map of phi, after that block's normalisation (the code: after its third block's). Deviation:
the FiLM layer's bias starts at gamma = 1, beta = 0 (identity at phi = 0; the code's default
init starts gamma near 0)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.gradient import Params
from metabench.algorithms.maml import MAML


class CAVIA(MAML):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, context: int = 100,
                 film_block: int = 3, inner_lr: float = 1.0, inner_steps: int = 2,
                 eval_inner_steps: int = 2, first_order: bool = False,
                 task_batching: str = "auto"):
        super().__init__(backbone, kind, ways, inner_lr, inner_steps, eval_inner_steps,
                         first_order, task_batching)
        require("a positive integer", context=context, film_block=film_block)
        self.context_dim = context
        self._context: Tensor | None = None
        if hasattr(backbone, "features"):  # Conv-4: FiLM after block film_block's norm
            blocks = len(backbone.features) // 4
            if film_block > blocks:
                raise ValueError(f"algo.film_block={film_block} must be at most the "
                                 f"backbone's {blocks} blocks")
            target = backbone.features[4 * (film_block - 1) + 1]
            channels = backbone.features[4 * (film_block - 1)].out_channels
            self.film = nn.Linear(context, 2 * channels)
            with torch.no_grad():
                self.film.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))
            target.register_forward_hook(self._film)
        elif hasattr(backbone, "net") and len(backbone.net) > 0:  # MLP: phi joins the input
            first = backbone.net[0]
            self.film = nn.Linear(context, first.out_features, bias=False)
            first.register_forward_hook(self._shift)
        else:
            raise ValueError("algo=cavia needs backbone=conv4 (FiLM) or an MLP with a hidden "
                             "layer (the context joins the input)")

    def context(self) -> Tensor:
        """The context of the forward in progress (0 outside the learner's own calls)."""
        if self._context is None:
            return self.fast_params()["context"]
        return self._context

    def _film(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        gamma, beta = self.film(self.context()).chunk(2, -1)
        return gamma[:, None, None] * out + beta[:, None, None]

    def _shift(self, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        return out + self.film(self.context())

    def fast_params(self) -> Params:
        """The inner loop's only variable: the context, 0 at the start of every task."""
        p = next(self.model.parameters())
        return {"context": torch.zeros(self.context_dim, dtype=p.dtype, device=p.device)}

    def fast_forward(self, p: Params, x: Tensor) -> Tensor:
        self._context = p["context"]
        try:
            return self.model(x)
        finally:
            self._context = None
