"""Conv-4's options: strided downsampling (the MAML/Reptile Omniglot network), the mean
readout, and max pooling placed before the ReLU giving the canonical block's values and
gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metabench.backbones.conv4 import Conv4


def test_strided_network_has_the_reference_map_sizes():
    net = Conv4((1, 28, 28), downsample="stride")
    assert net.map_shape == (64, 2, 2)  # 28 -> 14 -> 7 -> 4 -> 2, as TF's 'SAME' stride 2
    assert net.out_dim == 256
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert [m.stride for m in net.modules() if isinstance(m, nn.Conv2d)] == [(2, 2)] * 4
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 256)
    # pool=2: only the first two blocks downsample, as with max pooling
    assert Conv4((1, 28, 28), downsample="stride", pool=2).map_shape == (64, 7, 7)


def test_mean_readout_averages_the_last_map():
    torch.manual_seed(0)
    net = Conv4((1, 28, 28), downsample="stride", readout="mean")
    x = torch.randn(4, 1, 28, 28)
    assert net.out_dim == 64
    assert torch.allclose(net(x), net.feature_map(x).mean(dim=(2, 3)))


def test_state_dict_keys_do_not_depend_on_the_downsampling():
    keys = set(Conv4((1, 28, 28)).state_dict())
    assert keys == set(Conv4((1, 28, 28), downsample="stride").state_dict())
    assert keys == set(Conv4((1, 28, 28), pool=2).state_dict())


def test_pooling_before_relu_matches_the_canonical_block_values_and_gradients():
    torch.manual_seed(0)
    net = Conv4((1, 28, 28), hidden=8).double()
    mods = list(net.features)
    canonical = nn.Sequential(*[m for i in range(0, len(mods), 4)
                                for m in (mods[i], mods[i + 1], mods[i + 3], mods[i + 2])])
    assert isinstance(canonical[2], nn.ReLU) and isinstance(canonical[3], nn.MaxPool2d)
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    ours, ref = net.features(x), canonical(x)
    assert torch.equal(ours, ref)
    # first and second order: the gradient of a gradient norm through both
    params = list(net.parameters())

    def grad_of_grad(f):
        g = torch.autograd.grad(f(x).pow(2).sum(), params, create_graph=True)
        return torch.autograd.grad(sum(t.pow(2).sum() for t in g), params)

    for a, b in zip(grad_of_grad(net.features), grad_of_grad(canonical), strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("key", "value"), [("downsample", "avg"), ("readout", "max")])
def test_bad_options_are_refused_in_one_line(key, value):
    with pytest.raises(ValueError, match=f"backbone.{key}={value} is not one of"):
        Conv4((1, 28, 28), **{key: value})
