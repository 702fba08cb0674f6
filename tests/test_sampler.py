"""Episode sampling: distinct classes, disjoint support/query, labels, determinism, shapes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metabench.data.sampler import ImageClasses, ImageEpisodeSampler
from metabench.episodes import EpisodeSpec


def tagged_images(classes: int, per_class: int) -> torch.Tensor:
    """Image (c, i) carries c in pixel (0, 0) and i in pixel (0, 1), so samples can be traced."""
    x = torch.zeros(classes, per_class, 1, 4, 4, dtype=torch.uint8)
    x[:, :, 0, 0, 0] = torch.arange(classes)[:, None]
    x[:, :, 0, 0, 1] = torch.arange(per_class)[None, :]
    return x


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pix = (x[..., 0, 0, :2] * 255).round().long()
    return pix[..., 0], pix[..., 1]  # class id, item id


def check_episode(ep, spec: EpisodeSpec, classes: int, tasks: int) -> None:
    w, s, q = spec.ways, spec.shots, spec.queries
    assert ep.x_support.shape == (tasks, w * s, 1, 4, 4)
    assert ep.x_query.shape == (tasks, w * q, 1, 4, 4)
    assert ep.y_support.shape == (tasks, w * s) and ep.y_query.shape == (tasks, w * q)
    assert ep.y_support.min() >= 0 and ep.y_support.max() < w
    assert ep.y_query.min() >= 0 and ep.y_query.max() < w
    cs, is_ = decode(ep.x_support)
    cq, iq = decode(ep.x_query)
    for t in range(tasks):
        # every label maps to exactly one source class, the same in support and query
        label_to_class = {}
        for c, y in zip(cs[t].tolist() + cq[t].tolist(),
                        ep.y_support[t].tolist() + ep.y_query[t].tolist(), strict=True):
            assert label_to_class.setdefault(y, c) == c
        assert len(set(label_to_class.values())) == w  # no class repeated within a task
        assert all(0 <= c < classes for c in label_to_class.values())
        support = set(zip(cs[t].tolist(), is_[t].tolist(), strict=True))
        query = set(zip(cq[t].tolist(), iq[t].tolist(), strict=True))
        assert len(support) == w * s and len(query) == w * q  # no image twice
        assert not support & query  # support and query disjoint


def test_sampler_basic_properties():
    spec = EpisodeSpec(5, 2, 3)
    sampler = ImageEpisodeSampler(tagged_images(12, 8), spec)
    ep = sampler.sample(4, torch.Generator().manual_seed(0))
    check_episode(ep, spec, 12, 4)


def test_sampler_is_deterministic_per_seed_and_varies_across_seeds():
    sampler = ImageEpisodeSampler(tagged_images(30, 20), EpisodeSpec(5, 1, 5))
    a = sampler.sample(3, torch.Generator().manual_seed(3))
    b = sampler.sample(3, torch.Generator().manual_seed(3))
    c = sampler.sample(3, torch.Generator().manual_seed(4))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    assert not torch.equal(a.x_query, c.x_query)


def test_dataset_reports_impossible_specs():
    data = ImageClasses("toy", {s: tagged_images(6, 10) for s in ("train", "val", "test")})
    assert data.problems("test", EpisodeSpec(5, 5, 5)) == []
    problems = data.problems("test", EpisodeSpec(7, 5, 6))
    assert any("data.ways=7 exceeds the 6 classes" in p for p in problems)
    assert any("= 11 exceeds the 10 images per class" in p for p in problems)


@settings(max_examples=40, deadline=None)
@given(classes=st.integers(2, 15), per_class=st.integers(2, 12), data=st.data())
def test_sampler_property(classes, per_class, data):
    ways = data.draw(st.integers(1, classes))
    shots = data.draw(st.integers(1, per_class - 1))
    queries = data.draw(st.integers(1, per_class - shots))
    tasks = data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 2**31 - 1))
    spec = EpisodeSpec(ways, shots, queries)
    ep = ImageEpisodeSampler(tagged_images(classes, per_class), spec).sample(
        tasks, torch.Generator().manual_seed(seed))
    check_episode(ep, spec, classes, tasks)


def test_channels_last_sampling_keeps_values_and_sets_strides():
    images = torch.randint(0, 256, (10, 6, 3, 8, 8), dtype=torch.uint8)
    spec = EpisodeSpec(3, 2, 2)
    a = ImageEpisodeSampler(images, spec).sample(2, torch.Generator().manual_seed(1))
    b = ImageEpisodeSampler(images, spec, channels_last=True).sample(
        2, torch.Generator().manual_seed(1))
    assert torch.equal(a.x_support, b.x_support) and torch.equal(a.x_query, b.x_query)
    assert b.x_query[0].is_contiguous(memory_format=torch.channels_last)
    assert not a.x_query[0].is_contiguous(memory_format=torch.channels_last)
