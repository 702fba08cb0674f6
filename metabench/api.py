"""The Python API: use a trained meta-learner on your own few-shot problem, without Hydra.

    model = metabench.load("outputs/<run>/checkpoints/best.pt")
    task = model.adapt(support_images, support_labels)   # files, PIL images or tensors
    task.predict(query_images)                           # -> labels, as given in support
    task.predict_proba(query_images)                     # -> [queries, ways] probabilities

Adapting and predicting run the very computation `metabench evaluate` scores (the learner's
``predict`` on one episode in evaluation mode): metric learners embed, MAML takes its
evaluation inner steps, Reptile fine-tunes, SNAIL reads the sequence, the Baseline fits its
head. The global RNG is seeded with the run's seed, so a learner that draws (Reptile's
minibatches) answers the same on every call. Under a transductive protocol
(``backbone.norm=batch``) a query's prediction depends on the other queries passed in the
same call, as in the episodes it was tested on.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from metabench.algorithms.base import MetaLearner
from metabench.build import build, build_data, build_learner, resolve_device
from metabench.checkpoint import load_checkpoint
from metabench.episodes import Episode
from metabench.errors import CheckpointError, ConfigError, DataError, UserError
from metabench.preprocess import ImagePreprocess

Inputs = Tensor | Sequence[Any]


def load(checkpoint: str | Path, device: str = "cpu") -> FewShotModel:
    """A trained model from a metabench checkpoint (``best.pt`` or ``last.pt``), on
    ``device`` (``cpu``, ``cuda``, ``auto``), in evaluation mode."""
    blob = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(blob["config"])
    info = blob.get("data_info")
    if info is not None:  # rebuild without the dataset
        train_classes = int(info.get("train_classes", 0))
        data = SimpleNamespace(kind=info["kind"], input_shape=tuple(info["input_shape"]),
                               classes=lambda split: train_classes)
    else:  # a checkpoint from before data_info: the dataset itself says
        data = build_data(cfg)
    learner = build_learner(cfg, data)
    try:
        learner.load_state_dict(blob["model"])
    except RuntimeError:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit algo={cfg.algo.name} "
                              f"backbone={cfg.backbone.name}") from None
    learner.to(resolve_device(device)).eval()
    node = cfg.data.get("preprocess")
    preprocess = build(node, "data.preprocess") if node is not None else None
    return FewShotModel(learner, cfg, tuple(data.input_shape), preprocess)


def _label_order(labels: Sequence[Hashable]) -> list[Hashable]:
    """The distinct labels, sorted when they can be, else in order of first appearance."""
    distinct = list(dict.fromkeys(labels))
    try:
        return sorted(distinct)
    except TypeError:
        return distinct


class FewShotModel:
    """A trained learner with its config and its input preprocessing."""

    def __init__(self, learner: MetaLearner, config: DictConfig,
                 input_shape: tuple[int, ...], preprocess: ImagePreprocess | None):
        self.learner, self.config = learner, config
        self.input_shape, self.preprocess = input_shape, preprocess

    @property
    def kind(self) -> str:
        return self.learner.kind

    @property
    def device(self) -> torch.device:
        return next(self.learner.parameters()).device

    def inputs(self, items: Inputs, what: str) -> Tensor:
        """A float batch [n, *input_shape] on the model's device. Tensors are taken as model
        inputs (float in the training range, or uint8 scaled by 1/255); image files and PIL
        images go through the training preprocessing."""
        if isinstance(items, (str, Path, Image.Image)):
            items = [items]
        if isinstance(items, Tensor):
            x = items
        else:
            items = list(items)
            if not items:
                raise DataError(f"the {what} set is empty")
            if all(isinstance(i, Tensor) for i in items):
                x = torch.stack(items)
            elif self.preprocess is None:
                raise DataError(f"this {self.config.data.name} model takes tensors of shape "
                                f"{list(self.input_shape)}, not image files")
            else:
                x = torch.stack([self.preprocess(i) for i in items])
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        if tuple(x.shape[1:]) != self.input_shape or x.shape[0] == 0:
            raise DataError(f"the {what} inputs have shape {list(x.shape)}; this model takes "
                            f"[n, {', '.join(map(str, self.input_shape))}]")
        return x.float().to(self.device)

    def adapt(self, support: Inputs, labels: Sequence[Hashable] | Tensor) -> AdaptedTask:
        """A task from its support set: ``support`` inputs with one label each (any hashable
        values for classification; a float tensor [n, 1] for regression)."""
        xs = self.inputs(support, "support")
        if self.kind == "regression":
            ys = torch.as_tensor(labels, dtype=torch.float32).reshape(len(xs), -1)
            return AdaptedTask(self, xs, ys.to(self.device), [])
        labels = labels.tolist() if isinstance(labels, Tensor) else list(labels)
        if len(labels) != len(xs):
            raise DataError(f"{len(xs)} support inputs but {len(labels)} labels")
        classes = _label_order(labels)
        if len(classes) < 2:
            raise DataError(f"the support set has {len(classes)} class; a task needs at "
                            "least 2")
        problems = self.learner.episode_problems(len(classes), len(xs))
        if problems:
            raise ConfigError("; ".join(problems))
        index = {c: i for i, c in enumerate(classes)}
        ys = torch.tensor([index[c] for c in labels])
        order = torch.sort(ys, stable=True).indices  # class-major, as episodes are
        return AdaptedTask(self, xs[order], ys[order].to(self.device), classes)


class AdaptedTask:
    """One few-shot task: its support set, the label order, and predictions on queries."""

    def __init__(self, model: FewShotModel, x_support: Tensor, y_support: Tensor,
                 classes: list[Hashable]):
        self.model, self.x_support, self.y_support = model, x_support, y_support
        self.classes = classes

    def outputs(self, queries: Inputs) -> Tensor:
        """The learner's query predictions [m, outputs] (logits, scores or values)."""
        xq = self.model.inputs(queries, "query")
        ways = len(self.classes)
        y_query = (torch.zeros(len(xq), dtype=torch.long) if ways else
                   torch.zeros(len(xq), self.y_support.shape[-1]))
        episode = Episode(self.x_support[None], self.y_support[None], xq[None],
                          y_query[None].to(xq.device), ways)
        learner = self.model.learner
        learner.eval()
        devices = [xq.device] if xq.device.type == "cuda" else []
        try:  # a learner that draws (Reptile's minibatches) draws the same on every call
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(int(self.model.config.seed))
                return learner.predict(episode)[0]  # torch.func still adapts under no_grad
        except ValueError as e:  # e.g. norm=support with too few support values
            raise ConfigError(str(e).splitlines()[0]) from None

    def predict_proba(self, queries: Inputs) -> Tensor:
        """Class probabilities [m, ways], columns in the order of ``classes``."""
        if not self.classes:
            raise UserError("predict_proba needs a classification model; this one regresses "
                            "(use predict)")
        return self.model.learner.probabilities(self.outputs(queries)).cpu()

    def predict(self, queries: Inputs) -> list[Hashable] | Tensor:
        """The predicted label of each query (regression: the predicted values [m, 1])."""
        if not self.classes:  # a predictive distribution's mean
            return self.model.learner.point_prediction(self.outputs(queries)).cpu()
        return [self.classes[i] for i in self.outputs(queries).argmax(-1).tolist()]
