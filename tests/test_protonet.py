"""ProtoNet: prototypes are class means, logits are minus squared distances, and it learns."""

from __future__ import annotations

import torch

from metabench.algorithms.protonet import ProtoNet, prototypes, squared_distances
from metabench.backbones.mlp import MLP
from metabench.episodes import Episode


def test_prototypes_are_class_means_for_any_label_order():
    z = torch.tensor([[[0.0, 0.0], [2.0, 4.0], [10.0, 0.0], [4.0, 2.0], [12.0, 2.0]]])
    y = torch.tensor([[0, 1, 2, 1, 2]])
    protos = prototypes(z, y, 3)
    assert torch.allclose(protos, torch.tensor([[[0.0, 0.0], [3.0, 3.0], [11.0, 1.0]]]))


def test_logits_are_negative_squared_distances():
    q = torch.tensor([[[1.0, 1.0], [10.0, 1.0]]])
    p = torch.tensor([[[0.0, 0.0], [3.0, 3.0], [11.0, 1.0]]])
    d = squared_distances(q, p)
    assert torch.allclose(d, torch.tensor([[[2.0, 8.0, 100.0], [101.0, 53.0, 1.0]]]))
    learner = ProtoNet(MLP((2,), hidden=()), "classification", 3)  # identity embedding
    ep = Episode(p, torch.tensor([[0, 1, 2]]), q, torch.tensor([[0, 2]]), ways=3)
    loss, metrics = learner(ep)
    assert torch.equal(metrics["acc"], torch.tensor([1.0]))
    expected = torch.nn.functional.cross_entropy(-d[0], torch.tensor([0, 2]))
    assert torch.allclose(loss, expected)


def test_protonet_learns_synthetic(tmp_path, cfg_factory):
    from learning import CASES, train_and_compare

    before, after = train_and_compare(cfg_factory, tmp_path, *CASES["protonet"])
    # 12 runs (seeds 0-5 x kernels AVX2, DEFAULT; scripts/learning_spread.py): after
    # 0.909 +- 0.007 (min 0.899), gap 0.519 +- 0.028 (min 0.482); thresholds 0.85 = mean - 9.0 sd
    # (min - 0.049), 0.4 = mean - 4.2 sd (chance 0.2)
    assert after >= 0.85, (before, after)
    assert after >= before + 0.4, (before, after)
