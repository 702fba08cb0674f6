"""scripts/bench.py's baseline computes what metabench computes: its torch.nn network (canonical
block order, nn.BatchNorm2d) gives the same outputs, and its cloned-module MAML loop the same
second-order meta-gradient, so the bench's speed ratios compare equal work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench  # noqa: E402

from metabench.algorithms.maml import MAML  # noqa: E402
from metabench.backbones.conv4 import Conv4  # noqa: E402
from metabench.episodes import Episode  # noqa: E402


def tiny_maml(downsample: str) -> MAML:
    torch.manual_seed(0)
    backbone = Conv4((1, 16, 16), hidden=6, downsample=downsample,
                     readout="mean" if downsample == "stride" else "flatten")
    return MAML(backbone, "classification", 3, inner_lr=0.4, inner_steps=1,
                task_batching="loop").double()


@pytest.mark.parametrize("downsample", ["pool", "stride"])
def test_library_network_matches_and_meta_gradients_agree(downsample):
    learner = tiny_maml(downsample)
    library = bench.library_network(learner.model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in library.modules())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 16, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(library(x), learner.model(x), atol=1e-12)
    ep = Episode(torch.randn(2, 3, 1, 16, 16, generator=g, dtype=torch.float64),
                 torch.arange(3).expand(2, -1),
                 torch.randn(2, 6, 1, 16, 16, generator=g, dtype=torch.float64),
                 torch.arange(3).repeat_interleave(2).expand(2, -1), 3)
    loss, _ = learner(ep)
    ours = torch.autograd.grad(loss, list(learner.model.parameters()))
    ref = torch.autograd.grad(bench.baseline_maml_loss(library, ep, 0.4, 1),
                              list(library.parameters()))
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    # the check can fail: a first-order loop gives another gradient
    first = MAML(learner.model.backbone, "classification", 3, inner_lr=0.4, inner_steps=1,
                 first_order=True, task_batching="loop").double()
    first.model.load_state_dict(learner.model.state_dict())
    fo = torch.autograd.grad(first(ep)[0], list(first.model.parameters()))
    assert not all(torch.allclose(a, b, rtol=1e-8, atol=1e-12)
                   for a, b in zip(fo, ref, strict=True))
