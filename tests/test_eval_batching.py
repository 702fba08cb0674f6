"""Batched evaluation of the learners that fine-tune at test: the same episodes evaluated one at
a time (the loop, ``run_episodes(one_at_a_time=True)``) and batched (vmap over tasks, or the
Baseline's heads fitted together) give the same per-episode metrics (float64); Reptile's vmap
draws its minibatches as the loop does, from the same carried Adam state."""

from __future__ import annotations

import pytest
import torch

from metabench.algorithms import reptile as reptile_module
from metabench.algorithms.baseline import Baseline
from metabench.algorithms.maml import MAML
from metabench.algorithms.reptile import Reptile
from metabench.backbones.conv4 import Conv4
from metabench.data.sampler import ImageEpisodeSampler
from metabench.episodes import Episode, EpisodeSpec
from metabench.evaluation import run_episodes

SHAPE = (1, 16, 16)
WAYS, SHOTS, QUERIES = 3, 2, 2  # 6 support images: Reptile's minibatches of 4 are random


class DoubleSampler:
    """ImageEpisodeSampler's episodes in float64: 12 classes of 6 images, each its class's
    random pattern with a fifth of the pixels flipped."""

    def __init__(self, spec: EpisodeSpec, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        patterns = torch.rand(12, 1, *SHAPE, generator=g) < 0.5
        flips = torch.rand(12, 6, *SHAPE, generator=g) < 0.2
        self.inner = ImageEpisodeSampler((patterns ^ flips).to(torch.uint8) * 255, spec)

    def sample(self, tasks: int, generator: torch.Generator) -> Episode:
        e = self.inner.sample(tasks, generator)
        return Episode(e.x_support.double(), e.y_support, e.x_query.double(), e.y_query,
                       e.ways, e.classes)


SAMPLER = DoubleSampler(EpisodeSpec(WAYS, SHOTS, QUERIES))


def conv4(norm: str, hidden: int = 8) -> Conv4:
    """Three blocks: 2x2 maps of features, and enough positions for support statistics."""
    return Conv4(SHAPE, hidden=hidden, layers=3, norm=norm)


def evaluate(learner, batch: int, one_at_a_time: bool, episodes: int = 5,
             draws: int = 7) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-episode metrics, and the global generator's next draw after them (how far the
    learner's own random draws moved it)."""
    torch.manual_seed(draws)
    out = run_episodes(learner, SAMPLER, episodes, batch, seed=3, one_at_a_time=one_at_a_time)
    return out, torch.rand(3, dtype=torch.float64)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and "loss" in a and "acc" in a
    for k in a:
        if k.endswith("acc"):
            assert torch.equal(a[k], b[k]), (k, a[k], b[k])
        else:  # computed and kept in float64
            assert a[k].dtype == b[k].dtype == torch.float64, k
            assert (a[k] - b[k]).abs().max() < 1e-9, (k, a[k], b[k])


def trained_reptile(norm: str = "batch", **kw) -> Reptile:
    """Conv-4 Reptile whose carried inner Adam state ran through three training iterations."""
    torch.manual_seed(0)
    kw = {"inner_lr": 0.01, "inner_steps": 2, "eval_inner_steps": 4, "beta1": 0.5,
          "inner_batch": 3, "eval_inner_batch": 4, "inner_adam_state": "carried", **kw}
    learner = Reptile(conv4(norm), "classification", WAYS, **kw).double()
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        loss, _ = learner(SAMPLER.sample(2, g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert int(learner.adam_t) == 3 * 2 * 2 and learner.adam_v.abs().max() > 0
    return learner


@pytest.mark.parametrize("transductive", [False, True], ids=["per-query", "transductive"])
def test_reptile_vmap_evaluation_is_the_per_episode_loop(transductive, monkeypatch):
    monkeypatch.setattr(reptile_module, "VMAP_TASKS_CPU", 2)  # chunks of 2, 2 and 1 tasks
    learner = trained_reptile(transductive=transductive)
    state = [b.clone() for b in (learner.adam_m, learner.adam_v, learner.adam_t)]
    learner.task_batching = "loop"
    per_episode, after_loop = evaluate(learner, 5, one_at_a_time=True)
    learner.task_batching = "vmap"
    batched, after_vmap = evaluate(learner, 5, one_at_a_time=False)
    assert_same(per_episode, batched)
    assert torch.equal(after_loop, after_vmap)  # the same number of draws from the generator
    for b, before in zip((learner.adam_m, learner.adam_v, learner.adam_t), state, strict=True):
        assert torch.equal(b, before)  # evaluation leaves the carried state as it was
    # evaluation seeds its own draws (run_episodes: the global RNG from the seed, restored
    # after): the same metrics whatever the global state before, which it leaves as it was
    other, after_other = evaluate(learner, 5, one_at_a_time=False, draws=8)
    assert_same(batched, other)
    torch.manual_seed(8)
    assert torch.equal(after_other, torch.rand(3, dtype=torch.float64))


def test_reptile_vmap_with_support_norm_and_full_batch():
    learner = trained_reptile(norm="support")
    learner.eval_inner_batch = 0  # the whole support set every step: nothing drawn
    learner.task_batching = "loop"
    per_episode, after_loop = evaluate(learner, 5, one_at_a_time=True)
    learner.task_batching = "vmap"
    batched, after_vmap = evaluate(learner, 5, one_at_a_time=False)
    assert_same(per_episode, batched)
    assert torch.equal(after_loop, after_vmap)


def test_maml_vmap_evaluation_is_the_per_episode_loop():
    torch.manual_seed(0)
    learner = MAML(conv4("batch"), "classification", WAYS, inner_lr=0.3, eval_inner_steps=3,
                   task_batching="loop").double()
    per_episode, _ = evaluate(learner, 5, one_at_a_time=True)
    looped, _ = evaluate(learner, 5, one_at_a_time=False)
    learner.task_batching = "vmap"
    batched, _ = evaluate(learner, 5, one_at_a_time=False)
    assert {"pre_loss", "pre_acc"} <= set(batched)
    assert_same(per_episode, looped)
    assert_same(per_episode, batched)
    assert (batched["loss"] - batched["pre_loss"]).abs().max() > 1e-3  # 3 steps adapt


@pytest.mark.parametrize("head", ["linear", "cosine"])
def test_baseline_heads_fitted_together_are_the_per_episode_ones(head):
    torch.manual_seed(0)
    learner = Baseline(conv4("running", hidden=16), "classification", WAYS,
                       train_classes=12, head=head, finetune_steps=20, finetune_lr=0.1).double()
    per_episode, _ = evaluate(learner, 5, one_at_a_time=True)
    batched, _ = evaluate(learner, 5, one_at_a_time=False)
    assert_same(per_episode, batched)
    assert batched["loss"].std() > 1e-3  # the episodes differ: each got its own head


def test_which_path_auto_takes():
    def make(cls, mode):
        return cls(conv4("batch"), "classification", WAYS, task_batching=mode)

    reptile, maml = make(Reptile, "auto"), make(MAML, "auto")
    assert reptile.batching_mode("cpu") == "loop"  # training: the carried state runs in order
    assert make(Reptile, "vmap").batching_mode("cuda") == "loop"
    reptile.eval()
    assert reptile.batching_mode("cpu") == reptile.batching_mode("cuda") == "vmap"
    assert make(Reptile, "loop").eval().batching_mode("cuda") == "loop"
    maml.eval()  # MAML's evaluation: the loop on CPU (vmap measured slower there), vmap on CUDA
    assert maml.batching_mode("cpu") == "loop" and maml.batching_mode("cuda") == "vmap"
    with pytest.raises(ValueError, match="algo.task_batching=batch is not one of: auto, loop, "
                                         "vmap"):
        make(Reptile, "batch")
