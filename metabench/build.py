"""Config -> objects: the one ``_target_`` builder, and the data, learner, optimiser, device and
samplers a run is made of. Validation lives in checks.py, orchestration in run.py."""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from metabench.algorithms.base import MetaLearner
from metabench.episodes import EpisodeSpec
from metabench.errors import ConfigError, UserError
from metabench.optim import SGDHD


def _node_kwargs(node: DictConfig) -> dict[str, Any]:
    """A config node as instantiate() arguments; ``name`` labels the choice, it is no argument."""
    d = OmegaConf.to_container(node, resolve=True)
    d.pop("name", None)
    return d


def build(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """The one way objects are made from config: ``_target_`` plus the node's other keys."""
    try:
        return instantiate(_node_kwargs(node), **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        if isinstance(cause, UserError):
            raise cause from None
        msg = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{what}: {msg}") from None



def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is available; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name} is not one of: auto, cpu, cuda, cuda:N") from None


def episode_spec(cfg: DictConfig, training: bool) -> EpisodeSpec:
    p = "train_" if training else ""
    d = cfg.data
    return EpisodeSpec(int(d[f"{p}ways"]), int(d[f"{p}shots"]), int(d[f"{p}queries"]))



def build_data(cfg: DictConfig) -> Any:
    return build(cfg.data.source, "data")


def build_learner(cfg: DictConfig, data: Any) -> MetaLearner:
    backbone = build(cfg.backbone, "backbone", input_shape=tuple(data.input_shape))
    ways = int(cfg.data.train_ways) if data.kind == "classification" else 0
    extra = {}
    if getattr(get_class(cfg.algo._target_), "needs_train_classes", False):
        extra["train_classes"] = int(data.classes("train"))  # e.g. the baseline's global head
    return build(cfg.algo, "algo", backbone=backbone, kind=data.kind, ways=ways, **extra)



def channels_last(cfg: DictConfig, data: Any) -> bool:
    """Whether images and conv weights use channels_last strides (train.channels_last)."""
    return bool(cfg.train.get("channels_last", False)) and len(data.input_shape) == 3


def sampler(cfg: DictConfig, data: Any, split: str, device: torch.device):
    return data.sampler(split, episode_spec(cfg, split == "train"), device,
                        channels_last=channels_last(cfg, data))



def build_optimizer(cfg: DictConfig, learner: MetaLearner
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The outer optimiser (``train.optimizer``: Adam; plain SGD, with which Reptile's
    surrogate loss gives exactly its interpolation step; ``sgd_hd``, SGD whose rate follows its
    hypergradient, Alpha-MAML's) over the learner's parameter groups, and its rate schedule
    (``train.lr_schedule``: ``step`` multiplies it by ``lr_decay`` every ``lr_decay_every``
    iterations, constant when that is 0; ``linear`` anneals it to 0 and ``cosine`` to
    ``lr_min`` at ``train.iterations``)."""
    t = cfg.train
    groups = learner.param_groups()
    choice = t.get("optimizer", "adam")
    if choice == "sgd":
        optimizer = torch.optim.SGD(groups, lr=t.lr, weight_decay=t.weight_decay)
    elif choice == "sgd_hd":
        optimizer = SGDHD(groups, lr=t.lr, hypergrad_lr=t.get("hypergrad_lr", 0.0),
                          weight_decay=t.weight_decay)
    else:
        optimizer = torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay)
    total = int(t.iterations)
    schedule = t.get("lr_schedule", "step")
    if schedule == "linear":
        return optimizer, torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1.0 - step / total))
    if schedule == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total, eta_min=float(t.get("lr_min", 0.0)))
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, t.lr_decay_every, gamma=t.lr_decay)
                 if t.lr_decay_every > 0 else None)
    return optimizer, scheduler
