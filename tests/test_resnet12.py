"""ResNet-12: shapes, the standard variant's parameter count, the residual shortcut, gradients
through ProtoNet and MAML, and MAML's vmapped meta-gradient against the per-task loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metabench import run
from metabench.algorithms.maml import MAML
from metabench.algorithms.protonet import ProtoNet
from metabench.backbones.resnet12 import ResNet12
from metabench.episodes import Episode

TINY = (3, 4, 5, 6)  # four blocks with distinct widths, to catch channel mix-ups


def episode(shape, tasks=2, ways=3, shots=2, queries=2, seed=0,
            dtype=torch.float32) -> Episode:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(tasks, ways * shots, *shape, generator=g, dtype=dtype)
    xq = torch.randn(tasks, ways * queries, *shape, generator=g, dtype=dtype)
    ys = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1)
    yq = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1)
    return Episode(xs, ys, xq, yq, ways)


@pytest.mark.parametrize("shape, spatial", [((1, 28, 28), (1, 1)), ((3, 84, 84), (5, 5))])
def test_output_and_map_shapes(shape, spatial):
    torch.manual_seed(0)
    net = ResNet12(shape).eval()
    assert net.out_dim == 640 and net.map_shape == (640, *spatial)
    x = torch.rand(2, *shape)
    with torch.no_grad():
        fmap, z = net.feature_map(x), net(x)
    assert fmap.shape == (2, *net.map_shape)
    assert z.shape == (2, 640)
    assert torch.allclose(z, fmap.mean(dim=(-2, -1)))  # global average pooling


def test_standard_parameter_count():
    # A block c_in -> c_out holds 3x3 convs 9*c_in*c_out + 2*9*c_out^2 (no biases), the 1x1
    # shortcut c_in*c_out and 4 norms (weight + bias) 8*c_out:
    #   3->64: 76,160   64->160: 564,480   160->320: 2,357,760   320->640: 9,425,920
    # = 12,424,320, the "12.4M" reported for MetaOptNet's ResNet-12 (which has no head either;
    # global average pooling adds no parameters, so the figure holds for any input size).
    net = ResNet12((3, 84, 84))
    assert sum(p.numel() for p in net.parameters()) == 12_424_320
    assert [sum(p.numel() for p in b.parameters()) for b in net.features] == \
        [76_160, 564_480, 2_357_760, 9_425_920]


def test_shortcut_is_added_before_the_last_activation():
    torch.manual_seed(0)
    block = ResNet12((3, 8, 8), channels=(5,)).features[0].double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        full = block(x)
        shortcut = block.shortcut(x)
        block.norm3.weight.zero_()
        block.norm3.bias.zero_()  # the main branch now adds exactly 0
        only_shortcut = block(x)
    assert torch.allclose(only_shortcut, F.max_pool2d(F.leaky_relu(shortcut, 0.1), 2))
    assert only_shortcut.abs().max() > 0.1 and (only_shortcut < 0).any()  # leaky, not zero
    assert not torch.allclose(full, only_shortcut)  # the main branch contributed before


def test_small_input_and_bad_channels_are_refused():
    with pytest.raises(ValueError, match="8x8 input is too small .* at least 16 pixels"):
        ResNet12((1, 8, 8))
    with pytest.raises(ValueError, match=r"backbone.channels=\[64, 0\] must be"):
        ResNet12((1, 28, 28), channels=[64, 0])


def assert_grads_reach_every_parameter(learner: torch.nn.Module) -> None:
    for name, p in learner.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_protonet_resnet12_gradients():
    torch.manual_seed(0)
    learner = ProtoNet(ResNet12((3, 20, 20), channels=TINY), "classification", 3)
    loss, metrics = learner(episode((3, 20, 20)))
    assert metrics["acc"].shape == (2,) and torch.isfinite(loss)
    loss.backward()
    assert_grads_reach_every_parameter(learner)


def test_maml_resnet12_gradients():
    torch.manual_seed(0)
    learner = MAML(ResNet12((3, 20, 20), channels=TINY), "classification", 3, inner_lr=0.1,
                   inner_steps=1, task_batching="loop")
    loss, metrics = learner(episode((3, 20, 20)))
    assert metrics["acc"].shape == (2,) and torch.isfinite(loss)
    loss.backward()
    assert_grads_reach_every_parameter(learner)


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_maml_vmap_meta_gradient_matches_loop(first_order):
    torch.manual_seed(0)
    learners = [MAML(ResNet12((1, 16, 16), channels=TINY), "classification", 3, inner_lr=0.3,
                     inner_steps=2, first_order=first_order, task_batching=mode).double()
                for mode in ("loop", "vmap")]
    learners[1].load_state_dict(learners[0].state_dict())
    ep = episode((1, 16, 16), tasks=3, dtype=torch.float64)
    results = []
    for learner in learners:
        learner.train()
        loss, _ = learner(ep)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in learner.named_parameters()}))
    (loss_l, grads_l), (loss_v, grads_v) = results
    assert abs(loss_l - loss_v) < 1e-9
    assert grads_l.keys() == grads_v.keys()
    for n, g in grads_l.items():
        assert (g - grads_v[n]).abs().max() < 1e-8, n
    assert max(g.abs().max() for g in grads_l.values()) > 1e-4


def test_config_builds_resnet12(cfg_factory):
    cfg = cfg_factory("data=synthetic", "data.source.image_size=16", "backbone=resnet12",
                      "backbone.channels=[4,4,8,8]", "logger=none")
    data = run.build_data(cfg)
    learner = run.build_learner(cfg, data)
    assert isinstance(learner.backbone, ResNet12)
    assert learner.backbone.out_dim == 8 and learner.backbone.map_shape == (8, 1, 1)
    default = cfg_factory("backbone=resnet12", "logger=none").backbone
    assert list(default.channels) == [64, 160, 320, 640] and default.norm == "batch"
