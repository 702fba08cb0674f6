"""MANN: the label channel is y_{t-1}, memory and usage start afresh per episode, the
least-used slot is cleared before the write, the per-presentation metric, and learning."""

from __future__ import annotations

import pytest
import torch

from metabench.algorithms.mann import MANN, least_used, lrua_write
from metabench.backbones.mlp import MLP
from metabench.episodes import Episode


def small(ways: int = 3, **kw) -> MANN:
    torch.manual_seed(0)
    args = dict(controller=8, slots=6, slot_size=4, reads=2) | kw
    return MANN(MLP((5,), hidden=()), "classification", ways, **args).double()


def test_the_label_input_is_the_previous_steps_and_zero_first():
    m = small()
    seen = []
    step = m.step
    m.step = lambda s, x, prev: seen.append(prev.clone()) or step(s, x, prev)
    y = torch.tensor([[2, 0, 1, 0]])
    m.run(torch.randn(1, 4, 5, dtype=torch.float64), y, 3)
    assert torch.equal(seen[0], torch.zeros(1, 3, dtype=torch.float64))
    for t in range(1, 4):
        assert torch.equal(seen[t], torch.nn.functional.one_hot(y[:, t - 1], 3).double())


def test_memory_and_usage_start_afresh_for_every_episode():
    m = small().eval()
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    with torch.no_grad():
        first, after = m.run(x, y, 3)
        assert after.usage.abs().sum() > 0 and (after.memory - 1e-6).abs().sum() > 0
        again, _ = m.run(x, y, 3)  # a new sequence: no state carried over
        carried, _ = m.run(x, y, 3, state=after)
    assert torch.equal(first, again)
    assert not torch.allclose(first, carried)


def test_least_used_slot_is_cleared_before_the_write():
    memory = torch.arange(12.0, dtype=torch.float64).view(1, 3, 4) + 1.0
    usage = torch.tensor([[0.9, 0.1, 0.5]], dtype=torch.float64)
    read_w = torch.tensor([[[1.0, 0.0, 0.0]]], dtype=torch.float64)
    keys = torch.full((1, 1, 4), 0.25, dtype=torch.float64)
    assert least_used(usage, 1).tolist() == [[0.0, 1.0, 0.0]]
    assert least_used(usage, 2).tolist() == [[0.0, 1.0, 1.0]]
    new, w = lrua_write(memory, usage, read_w, keys, torch.zeros(1, 1, 1, dtype=torch.float64))
    assert w.tolist() == [[[0.0, 1.0, 0.0]]]  # gate 0: all on the least-used slot
    assert torch.equal(new[0, 1], keys[0, 0])  # its old content gone, only the write
    assert torch.equal(new[0, 0], memory[0, 0]) and torch.equal(new[0, 2], memory[0, 2])
    new, w = lrua_write(memory, usage, read_w, keys, torch.ones(1, 1, 1, dtype=torch.float64))
    assert torch.equal(new[0, 0], memory[0, 0] + keys[0, 0])  # gate 1: where it last read
    assert torch.equal(new[0, 1], torch.zeros(4, dtype=torch.float64))  # cleared all the same


def test_instance_metric_counts_presentations_per_class():
    m = small().eval()
    z = torch.randn(1, 12, 5, dtype=torch.float64)
    y = torch.tensor([[0, 1, 2] * 4])
    torch.manual_seed(3)
    with torch.no_grad():
        got = m.instance_accuracy(z, y, 3)
    assert sorted(got) == ["instance1", "instance2", "instance3", "instance4"]
    torch.manual_seed(3)  # the same shuffle, then by hand: class-wise presentation counts
    order = torch.rand(y.shape).argsort(-1)
    zs, ys = z.gather(1, order[..., None].expand_as(z)), y.gather(1, order)
    with torch.no_grad():
        logits, _ = m.run(zs, ys, 3)
    correct = (logits.argmax(-1) == ys)[0].tolist()
    counts, hits = [0, 0, 0], {k: [] for k in range(4)}
    for t, c in enumerate(ys[0].tolist()):
        hits[counts[c]].append(correct[t])
        counts[c] += 1
    for k in range(4):
        assert got[f"instance{k + 1}"].item() == pytest.approx(sum(hits[k]) / 3)
    m.instances = 2  # only each class's first 2 examples
    with torch.no_grad():
        assert sorted(m.instance_accuracy(z, y, 3)) == ["instance1", "instance2"]


def test_queries_do_not_see_each_other():
    m = small().eval()
    xs, ys = torch.randn(1, 3, 5, dtype=torch.float64), torch.tensor([[0, 1, 2]])
    xq = torch.randn(1, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(0)
        both = m.query_logits(xs, ys, xq, 3)
        torch.manual_seed(0)
        alone = m.query_logits(xs, ys, xq[:, 2:3], 3)
    assert torch.allclose(both[:, 2:3], alone, atol=1e-12)


def test_evaluation_reports_query_and_instance_accuracy():
    m = small().eval()
    ep = Episode(torch.randn(2, 3, 5), torch.tensor([[0, 1, 2]] * 2), torch.randn(2, 6, 5),
                 torch.tensor([[0, 1, 2] * 2] * 2), 3)
    with torch.no_grad():
        _, metrics = m.float()(ep)
    assert {"acc", "nll", "ece", "instance1", "instance3"} <= set(metrics)
    assert metrics["instance1"].shape == (2,)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match=r"^algo.reads=9 must be at most algo.slots=6"):
        small(reads=9)


def test_mann_learns_synthetic(tmp_path, cfg_factory):
    from learning import CASES, train_and_compare

    before, after = train_and_compare(cfg_factory, tmp_path, *CASES["mann"])
    # 18 runs (seeds 0-5 x kernels AVX512, AVX2, DEFAULT; scripts/learning_spread.py): after
    # 0.768 +- 0.079 (min 0.631), gap 0.267 +- 0.092 (min 0.117); 2-way, chance 0.5 (a seed
    # that leaves the plateau late ends near 0.63)
    assert after >= 0.58, (before, after)
    assert after >= before + 0.06, (before, after)


def test_key_strength_sharpens_the_reads_and_is_off_by_default():
    assert small().strength is None
    m = small(key_strength=True).eval()
    x, y = torch.randn(1, 6, 5, dtype=torch.float64), torch.tensor([[0, 1, 2, 0, 1, 2]])
    with torch.no_grad():
        m.strength.weight.zero_()
        m.strength.bias.fill_(-30.0)  # beta = 1 + softplus(-30) ~ 1: the plain softmax
        _, flat = m.run(x, y, 3)
        m.strength.bias.fill_(30.0)  # beta ~ 31
        _, sharp = m.run(x, y, 3)
    assert sharp.read_w.max() > flat.read_w.max()


def test_read_scale_multiplies_the_cosines_in_the_read_softmax():
    x, y = torch.randn(1, 1, 5, dtype=torch.float64), torch.tensor([[0]])
    with torch.no_grad():
        _, sharp = small(read_scale=10.0).run(x, y, 3)
        _, plain = small().run(x, y, 3)
    # one step from the same fresh state: the same keys and memory (written before the read,
    # so the slots differ), hence the sharp read weights are softmax(10 log w) of the plain ones
    assert plain.read_w.std() > 1e-3
    expected = (10.0 * plain.read_w.log()).softmax(-1)
    assert torch.allclose(sharp.read_w, expected, atol=1e-12)
    assert sharp.read_w.max() > plain.read_w.max()
    with pytest.raises(ValueError, match="read_scale"):
        small(read_scale=0.0)
