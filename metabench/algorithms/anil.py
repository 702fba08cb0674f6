"""ANIL (Raghu et al. 2020, "Almost No Inner Loop"): MAML whose inner loop adapts only the
linear head. The body is no fast weight: its features are computed once per task (support
and query) and the head is adapted on them, so the inner loop never runs the backbone.

The meta-gradient still reaches the body, through the features: second order through the
head's inner steps, or first order (``first_order``) as in MAML."""

from __future__ import annotations

from torch import Tensor
from torch.func import functional_call

from metabench.algorithms.base import task_metrics
from metabench.algorithms.gradient import Params, sgd_adapt
from metabench.algorithms.maml import MAML

HEAD = "head."


class ANIL(MAML):
    def adapt(self, params: Params, x: Tensor, y: Tensor, steps: int) -> Params:
        """The body's entries of ``params`` returned as they are; the head's after ``steps``
        SGD steps on the support features."""
        body = {k: v for k, v in params.items() if not k.startswith(HEAD)}
        head = {k[len(HEAD):]: v for k, v in params.items() if k.startswith(HEAD)}
        features = functional_call(self.model.backbone,
                                   {k.removeprefix("backbone."): v for k, v in body.items()},
                                   (x,))
        classification = self.kind == "classification"

        def support_loss(h: Params) -> Tensor:
            pred = functional_call(self.model.head, h, (features,))
            return task_metrics(pred[None], y[None], classification)["loss"][0]

        head = sgd_adapt(support_loss, head, steps, self.inner_lrs(), self.first_order)
        return {**body, **{HEAD + k: v for k, v in head.items()}}
