"""The sinusoid's variants (data.source options and data=sinusoid_bmaml): the defaults draw
exactly what the original formula draws, the BMAML pool's size, repeats and seed, noise that
scales with the amplitude, frequencies in range, noiseless evaluation queries, and the
argument checks."""

from __future__ import annotations

import math

import pytest
import torch

from metabench import run
from metabench.data.sinusoid import Sinusoid
from metabench.episodes import EpisodeSpec

SPEC = EpisodeSpec(1, 5, 7)


def draw(source: Sinusoid, split: str, tasks: int = 40, seed: int = 3, spec=SPEC):
    return source.sampler(split, spec, torch.device("cpu")).sample(
        tasks, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("split", ["train", "test"])
def test_defaults_draw_the_original_formula_exactly(split):
    g = torch.Generator().manual_seed(3)
    amp = torch.rand((40, 1, 1), generator=g) * (5.0 - 0.1) + 0.1
    phase = torch.rand((40, 1, 1), generator=g) * (math.pi - 0.0) + 0.0
    x = torch.rand((40, 12, 1), generator=g) * (5.0 - -5.0) + -5.0
    y = amp * torch.sin(x - phase)
    ep = draw(Sinusoid(), split)
    assert torch.equal(ep.x_support, x[:, :5]) and torch.equal(ep.x_query, x[:, 5:])
    assert torch.equal(ep.y_support, y[:, :5]) and torch.equal(ep.y_query, y[:, 5:])


def test_the_config_defaults_are_the_original_task_distribution(cfg_factory):
    data = run.build_data(cfg_factory("algo=maml", "data=sinusoid", "logger=none"))
    a, b = draw(data, "train"), draw(Sinusoid(), "train")
    assert torch.equal(a.y_support, b.y_support) and torch.equal(a.y_query, b.y_query)


def bmaml_formula(tasks: int, n: int, seed: int, noisy_queries: bool):
    """BMAML's draws written out (jsikyoon/bmaml data_generator.py, in metabench's order):
    A ~ U[0.1, 5], phase ~ U[0, 2 pi], x ~ U[-5, 5], w ~ U[0.5, 2], noise sd 0.01 A."""
    g = torch.Generator().manual_seed(seed)
    amp = torch.rand((tasks, 1, 1), generator=g) * 4.9 + 0.1
    phase = torch.rand((tasks, 1, 1), generator=g) * (2 * math.pi)
    x = torch.rand((tasks, n, 1), generator=g) * 10 - 5
    freq = torch.rand((tasks, 1, 1), generator=g) * 1.5 + 0.5
    clean = amp * torch.sin(freq * x - phase)
    noisy = clean + torch.randn(x.shape, generator=g) * (0.01 * amp)
    return x, noisy, (noisy if noisy_queries else clean), freq


@pytest.mark.parametrize("split", ["train", "test"])
def test_bmaml_draws_its_formula_noiseless_test_queries_included(cfg_factory, split):
    cfg = cfg_factory("algo=maml", "data=sinusoid_bmaml", "logger=none",
                      "data.source.task_pool=0")
    ep = draw(run.build_data(cfg), split)
    x, y_support, y_query, freq = bmaml_formula(40, 12, 3, noisy_queries=split == "train")
    assert torch.equal(ep.x_support, x[:, :5]) and torch.equal(ep.x_query, x[:, 5:])
    torch.testing.assert_close(ep.y_support, y_support[:, :5], rtol=0, atol=1e-6)
    torch.testing.assert_close(ep.y_query, y_query[:, 5:], rtol=0, atol=1e-6)
    assert not torch.equal(ep.y_support, x[:, :5] * 0)  # (a non-trivial draw)
    assert freq.min() >= 0.5 and freq.max() <= 2.0 and freq.max() - freq.min() > 0.7


def test_noise_sd_scales_with_the_amplitude():
    clean = Sinusoid(amplitude=(0.5, 4.0))
    noisy = Sinusoid(amplitude=(0.5, 4.0), noise_per_amplitude=0.1)
    spec = EpisodeSpec(1, 500, 500)
    a, b = draw(clean, "train", tasks=30, spec=spec), draw(noisy, "train", tasks=30, spec=spec)
    assert torch.equal(a.x_support, b.x_support)  # the same tasks: noise is drawn after them
    noise = torch.cat([b.y_support - a.y_support, b.y_query - a.y_query], 1)[..., 0]
    amp = torch.cat([a.y_support, a.y_query], 1)[..., 0].abs().max(1).values  # ~ A (1000 pts)
    ratio = noise.std(1) / amp
    assert ((ratio - 0.1).abs() < 0.012).all(), ratio  # sd of an sd from 1000 draws: ~2%
    const = draw(Sinusoid(amplitude=(0.5, 4.0), noise_std=0.2), "train", tasks=30, spec=spec)
    sd = (const.y_query - a.y_query)[..., 0].std(1)  # constant: whatever A is
    assert ((sd - 0.2).abs() < 0.03).all(), sd


def test_the_training_pool_has_its_size_and_repeats_while_test_tasks_do_not():
    source = Sinusoid(frequency=(0.5, 2.0), noise_per_amplitude=0.01, task_pool=10)
    sampler = source.sampler("train", SPEC, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    batches = [sampler.sample(4, g) for _ in range(30)]
    seen = torch.cat([b.y_support for b in batches])  # a pool task keeps its points and noise
    distinct = torch.unique(seen.flatten(1), dim=0)
    assert distinct.shape[0] == 10 and seen.shape[0] == 120
    assert all(torch.unique(b.y_support.flatten(1), dim=0).shape[0] == 4 for b in batches)
    again = source.sampler("train", SPEC, torch.device("cpu"))  # the pool's own seed: the same
    assert torch.equal(torch.unique(torch.cat([again.sample(10, g).y_support]).flatten(1), dim=0),
                       distinct)
    other = Sinusoid(frequency=(0.5, 2.0), task_pool=10, pool_seed=1)
    assert not torch.equal(other.sampler("train", SPEC, "cpu").pool[0], sampler.pool[0])
    big = sampler.sample(25, g)  # more tasks than the pool: drawn with replacement
    assert torch.unique(big.y_support.flatten(1), dim=0).shape[0] <= 10
    test = draw(source, "test", tasks=200)
    assert torch.unique(test.y_support.flatten(1), dim=0).shape[0] == 200
    val = draw(source, "val", tasks=50, seed=9)
    assert not (val.y_support[:, None, :, 0] == seen[None, :, :, 0]).all(-1).any()


def test_bmaml_config_builds_its_pool(cfg_factory):
    cfg = cfg_factory("algo=alpaca", "data=sinusoid_bmaml", "logger=none")
    data = run.build_data(cfg)
    assert (data.task_pool, data.phase, data.frequency) == (100, (0.0, 2 * math.pi), (0.5, 2.0))
    train = run.sampler(cfg, data, "train", torch.device("cpu"))
    assert train.pool[0].shape == (100, 30, 1) and train.noisy_queries  # 10 + 20 points
    assert not run.sampler(cfg, data, "test", torch.device("cpu")).noisy_queries
    assert cfg.algo.name == "alpaca" and cfg.backbone.activation == "tanh"  # the pair's


@pytest.mark.parametrize("kwargs, message", [
    ({"frequency": [2.0, 0.5]}, r"data.source.frequency=\[2.0, 0.5\] must be a range"),
    ({"noise_std": -0.1}, "data.source.noise_std=-0.1 must be a non-negative number"),
    ({"task_pool": 2.5}, "data.source.task_pool=2.5 must be a non-negative integer"),
    ({"eval_query_noise": "no"}, "data.source.eval_query_noise=no must be true or false"),
])
def test_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Sinusoid(**kwargs)
