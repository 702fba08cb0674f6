"""Pretrain + finetune baselines (Chen et al. 2019, "A Closer Look at Few-shot Classification"):
Baseline (linear head) and Baseline++ (scaled cosine head).

Training is plain supervised classification over all training classes: an episode is only a
minibatch of images whose global labels are ``episode.classes`` gathered by the episode labels.
Evaluation freezes the backbone and, per test task, fits a new head of the same kind on the
support features alone, from a fixed init, with full-batch SGD with momentum; all tasks of an
episode batch are fitted at once (one head per task, ``[T, ways, D]``) with ``torch.func.grad``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.base import task_metrics
from metabench.algorithms.metric import MetricLearner
from metabench.episodes import Episode

HEADS = ("linear", "cosine")
INIT_SEED = 0  # the cosine fine-tuning head's fixed random init


def head_logits(z: Tensor, weight: Tensor, bias: Tensor | None, head: str,
                scale: float) -> Tensor:
    """Logits [..., n, C] of features [..., n, D] under a head with ``nn.Linear``'s layout:
    ``weight`` [..., C, D]; ``bias`` [..., C] (linear head only). The cosine head scores
    ``scale * cos(z, w_c)``: features and class weights both L2-normalised, no bias."""
    if head == "cosine":
        return scale * F.normalize(z, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)
    return z @ weight.transpose(-1, -2) + bias.unsqueeze(-2)


def head_init(tasks: int, ways: int, dim: int, head: str,
              like: Tensor) -> dict[str, Tensor]:
    """The fine-tuning head's start, the same for every task: zeros for the linear head (its
    loss is convex, any start reaches the same optimum), a fixed seeded normal draw with unit
    expected row norm for the cosine head (a zero weight has no direction)."""
    if head == "linear":
        return {"weight": like.new_zeros(tasks, ways, dim), "bias": like.new_zeros(tasks, ways)}
    g = torch.Generator().manual_seed(INIT_SEED)
    w = torch.randn(ways, dim, generator=g) / dim ** 0.5
    return {"weight": w.to(like).expand(tasks, -1, -1).clone()}


def finetune_head(z_support: Tensor, y_support: Tensor, ways: int, head: str, scale: float,
                  steps: int, lr: float, momentum: float) -> dict[str, Tensor]:
    """A head per task fitted on support features [T, n, D] with labels [T, n]: ``steps``
    full-batch SGD steps with (heavy-ball) momentum on each task's mean cross-entropy."""
    tasks, n, dim = z_support.shape
    z, y = z_support.detach(), y_support

    def loss(p: dict[str, Tensor]) -> Tensor:
        # summed over tasks: each task's head gets the gradient of its own mean loss
        logits = head_logits(z, p["weight"], p.get("bias"), head, scale)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / n

    grad = torch.func.grad(loss)
    params = head_init(tasks, ways, dim, head, z)
    velocity = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(steps):
        g = grad(params)
        velocity = {k: momentum * velocity[k] + g[k] for k in params}
        params = {k: params[k] - lr * velocity[k] for k in params}
    return params


class Baseline(MetricLearner):
    """Baseline (``head=linear``) and Baseline++ (``head=cosine``) of Chen et al. (2019)."""

    #: build_learner passes ``train_classes`` (the number of classes of the training split)
    needs_train_classes = True

    def __init__(self, backbone: nn.Module, kind: str, ways: int, train_classes: int,
                 head: str = "linear", scale: float = 10.0, finetune_steps: int = 100,
                 finetune_lr: float = 0.01, finetune_momentum: float = 0.9):
        super().__init__(backbone, kind, ways)
        if isinstance(train_classes, bool) or not isinstance(train_classes, int) \
                or train_classes < 2:
            raise ValueError(f"train_classes={train_classes} must be an integer >= 2")
        if head not in HEADS:
            raise ValueError(f"algo.head={head} is not one of: {', '.join(HEADS)}")
        for key, v in (("scale", scale), ("finetune_lr", finetune_lr)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"algo.{key}={v} must be a positive number")
        if isinstance(finetune_steps, bool) or not isinstance(finetune_steps, int) \
                or finetune_steps < 0:
            raise ValueError(f"algo.finetune_steps={finetune_steps} must be a non-negative "
                             "integer")
        if isinstance(finetune_momentum, bool) or not isinstance(finetune_momentum, (int, float)) \
                or not 0 <= finetune_momentum < 1:
            raise ValueError(f"algo.finetune_momentum={finetune_momentum} must be in [0, 1)")
        self.head = head
        self.scale = float(scale)
        self.finetune_steps = finetune_steps
        self.finetune_lr = float(finetune_lr)
        self.finetune_momentum = float(finetune_momentum)
        self.train_classes = train_classes
        self.classifier = nn.Linear(backbone.out_dim, train_classes, bias=head == "linear")

    def global_labels(self, episode: Episode) -> Tensor:
        """[T, n_support + n_query] class indices of the split, support first."""
        if episode.classes is None:
            raise ValueError("algo=baseline trains on global class labels: the training "
                             "episodes must carry .classes (image datasets do)")
        c = episode.classes
        return torch.cat([c.gather(1, episode.y_support), c.gather(1, episode.y_query)], 1)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor,
               ways: int) -> Tensor:
        """Query logits of a new head per task, fitted on the frozen support features."""
        # half-precision features (autocast) fitted in float32; float64 stays float64
        dtype = torch.promote_types(z_support.dtype, torch.float32)
        with torch.autocast(z_support.device.type, enabled=False):
            p = finetune_head(z_support.to(dtype), y_support, ways, self.head, self.scale,
                              self.finetune_steps, self.finetune_lr, self.finetune_momentum)
            return head_logits(z_query.detach().to(dtype), p["weight"], p.get("bias"),
                               self.head, self.scale)

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        if not self.training:
            return super().forward(episode)
        labels = self.global_labels(episode)
        ns = episode.x_support.shape[1]
        x = torch.cat([episode.x_support.flatten(0, 1), episode.x_query.flatten(0, 1)])
        z = self.backbone(x)  # one minibatch (a 4-d cat keeps channels_last strides)
        zs = z[:episode.tasks * ns].view(episode.tasks, ns, -1)
        zq = z[episode.tasks * ns:].view(episode.tasks, -1, z.shape[-1])
        logits = head_logits(torch.cat([zs, zq], 1), self.classifier.weight,
                             self.classifier.bias, self.head, self.scale)
        metrics = task_metrics(logits, labels, True)
        return metrics["loss"].mean(), metrics
