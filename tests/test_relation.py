"""Relation Network: class maps are sums over shots, scores are sigmoid relation scores of
concatenated (query, class) maps, the loss is MSE against the one-hot target, backbones without
feature maps are refused (also at the CLI), it learns; and Conv-4's ``pool`` option."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from metabench.algorithms.relation import RelationModule, RelationNet, class_maps
from metabench.backbones.conv4 import Conv4
from metabench.backbones.mlp import MLP
from metabench.episodes import Episode

REFUSAL = ("algo=relation needs a backbone with spatial feature maps (conv4 or resnet12); "
           "backbone=mlp has none")


def episode(tasks: int = 2, ways: int = 3, shots: int = 2, queries: int = 4,
            size: int = 12) -> Episode:
    g = torch.Generator().manual_seed(0)
    ys = torch.arange(ways).repeat(shots)[None].expand(tasks, -1)
    yq = torch.arange(ways).repeat(queries)[None].expand(tasks, -1)
    return Episode(torch.rand(tasks, ways * shots, 1, size, size, generator=g), ys,
                   torch.rand(tasks, ways * queries, 1, size, size, generator=g), yq, ways)


def learner(size: int = 12, **kw) -> RelationNet:
    torch.manual_seed(0)
    return RelationNet(Conv4((1, size, size), hidden=8, pool=2), "classification", 3, **kw)


def test_class_maps_are_sums_over_shots_for_any_label_order():
    maps = torch.arange(5 * 2 * 2 * 2, dtype=torch.float32).view(5, 2, 2, 2)
    y = torch.tensor([2, 0, 1, 0, 2])
    out = class_maps(maps, y, 3)
    assert torch.equal(out, torch.stack([maps[1] + maps[3], maps[2], maps[0] + maps[4]]))


def test_scores_are_relations_of_concatenated_query_and_class_maps():
    net, ep = learner(), episode()
    scores = net.scores(ep)
    assert scores.shape == (2, 12, 3)
    assert ((scores >= 0) & (scores <= 1)).all()
    for t in range(2):  # by hand: maps, class sums, every pair concatenated
        maps = net.backbone.feature_map(torch.cat([ep.x_support[t], ep.x_query[t]]))
        support, query = maps[:6], maps[6:]
        classes = torch.stack([support[c::3].sum(0) for c in range(3)])
        pairs = torch.cat([query[:, None].expand(-1, 3, -1, -1, -1),
                           classes[None].expand(12, -1, -1, -1, -1)], 2).flatten(0, 1)
        assert torch.allclose(scores[t], net.relation(pairs).view(12, 3), atol=1e-5)


def test_loss_is_mse_against_one_hot_and_accuracy_is_argmax():
    net, ep = learner(), episode()
    loss, metrics = net(ep)
    scores = net.scores(ep)
    target = F.one_hot(ep.y_query, 3).float()
    per_task = ((scores - target) ** 2).mean((1, 2))
    assert torch.allclose(metrics["loss"], per_task, atol=1e-6)
    assert torch.allclose(loss, F.mse_loss(scores, target), atol=1e-6)
    acc = (scores.argmax(-1) == ep.y_query).float().mean(1)
    assert torch.equal(metrics["acc"], acc)


@pytest.mark.parametrize("size,pool", [(28, 2), (28, None), (16, None), (12, 3)])
def test_relation_module_fits_the_backbone_map_shape(size, pool):
    """Maps from 7 x 7 down to 1 x 1: padding and skipped pools keep every size valid."""
    backbone = Conv4((1, size, size), hidden=8, pool=pool)
    net = RelationNet(backbone, "classification", 3)
    h = backbone.map_shape[1]
    assert net.relation.blocks[0].in_channels == 2 * backbone.map_shape[0]
    scores = net.scores(episode(tasks=1, size=size))
    assert scores.shape == (1, 12, 3) and torch.isfinite(scores).all(), h


def test_relation_module_head_sizes():
    module = RelationModule((64, 7, 7))
    assert module.fc[0].in_features == 64 * 1 * 1  # 7 -> 3 -> 1, as in the paper's code
    assert module.fc[0].out_features == 8 and module.fc[2].out_features == 1
    assert RelationModule((64, 1, 1)).fc[0].in_features == 64


def test_backbone_without_feature_maps_is_refused():
    with pytest.raises(ValueError) as e:
        RelationNet(MLP((1, 12, 12)), "classification", 3)
    assert str(e.value) == REFUSAL


def test_cli_refuses_relation_on_mlp_in_one_line(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "metabench", "train", "algo=relation",
                        "backbone=mlp", "data=synthetic", "logger=none",
                        f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and REFUSAL in lines[0], r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not run_dir.exists()


@pytest.mark.parametrize("bad", [{"channels": 0}, {"hidden": 2.5}, {"norm": "group"}])
def test_bad_arguments_name_the_key(bad):
    key = next(iter(bad))
    with pytest.raises(ValueError, match=f"algo.{key}="):
        learner(**bad)


def test_conv4_pool_option():
    torch.manual_seed(0)
    default = Conv4((1, 28, 28))
    assert default.map_shape == (64, 1, 1)
    torch.manual_seed(0)
    all_pool = Conv4((1, 28, 28), pool=4)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(default(x), all_pool(x))
    two = Conv4((1, 28, 28), pool=2)
    assert two.map_shape == (64, 7, 7) and two.out_dim == 64 * 49
    assert list(two.state_dict()) == list(default.state_dict())  # same keys for every pool
    assert Conv4((1, 28, 28), pool=0).map_shape == (64, 28, 28)
    for bad in (5, -1, 1.5, True):
        with pytest.raises(ValueError, match="backbone.pool="):
            Conv4((1, 28, 28), pool=bad)


def test_relation_learns_synthetic(tmp_path, cfg_factory):
    from learning import CASES, train_and_compare

    before, after = train_and_compare(cfg_factory, tmp_path, *CASES["relation"])
    # 12 runs (seeds 0-5 x kernels AVX2, DEFAULT; scripts/learning_spread.py): after
    # 0.965 +- 0.005 (min 0.959), gap 0.766 +- 0.008 (min 0.754) with 160 iterations (at 80,
    # seed 3 had not left the start on either kernel: 0.368, 0.410); thresholds 0.9 = mean -
    # 14.2 sd, 0.65 = mean - 13.8 sd (min(mean - 4 sd, min - 0.05), rounded down; chance 0.2)
    assert after >= 0.9, (before, after)
    assert after >= before + 0.65, (before, after)


@pytest.mark.parametrize("name", ["paper/relation_omniglot_5w1s", "paper/relation_omniglot_5w5s",
                                  "paper/relation_omniglot_20w1s", "paper/relation_omniglot_20w5s",
                                  "quick/relation_omniglot"])
def test_presets_compose_with_the_papers_encoder(cfg_factory, name):
    from metabench import run

    cfg = cfg_factory(f"experiment={name}", "logger=none")
    assert run.check_static(cfg) == []
    backbone = run.build(cfg.backbone, "backbone", input_shape=(1, 28, 28))
    net = run.build(cfg.algo, "algo", backbone=backbone, kind="classification", ways=5)
    assert backbone.map_shape == (64, 7, 7) and net.relation.fc[0].in_features == 64
    assert cfg.train.lr == 0.001 and cfg.train.lr_decay == 0.5 and cfg.train.grad_clip == 0.5
    if not name.startswith("quick"):
        assert cfg.train.iterations == 1_000_000 and cfg.train.lr_decay_every == 100_000
        queries = {(5, 1): 19, (5, 5): 15, (20, 1): 10, (20, 5): 5}
        d = cfg.data
        assert d.train_queries == queries[(d.ways, d.shots)] and d.train_ways == d.ways
