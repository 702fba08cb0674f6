"""Evaluation protocols (backbones/norms.py): in every non-transductive mode a query's prediction
never depends on another query, and in the transductive one it does; support-set statistics
equal batch norm computed by hand on the support set (float64); running averages move in
training only and are refused where they cannot work; the protocol is in results.json."""

from __future__ import annotations

import json

import pytest
import torch

from metabench import run
from metabench.backbones.norms import SupportNorm2d, support_rows
from metabench.checks import check_static
from metabench.errors import ConfigError

SMALL = ["data=synthetic", "logger=none", "data.ways=3", "data.shots=2", "data.queries=2",
         "backbone.hidden=8"]
# (algo overrides, backbone.norm, transductive?)
CASES = {
    "protonet-running": (["algo=protonet"], "running", False),
    "protonet-support": (["algo=protonet"], "support", False),
    "protonet-none": (["algo=protonet"], "none", False),
    "protonet-batch": (["algo=protonet"], "batch", True),
    "matching-running": (["algo=matching"], "running", False),
    "matching-fce-support": (["algo=matching", "algo.fce=true"], "support", False),
    "relation-running": (["algo=relation", "algo.channels=8"], "running", False),
    "relation-batch": (["algo=relation", "algo.channels=8"], "batch", True),
    "baseline-running": (["algo=baseline", "algo.finetune_steps=5"], "running", False),
    "baselinepp-support": (["algo=baselinepp", "algo.finetune_steps=5"], "support", False),
    "baseline-batch": (["algo=baseline", "algo.finetune_steps=5"], "batch", True),
    "snail-running": (["algo=snail", "algo.filters=8", "algo.attention=[[8,4]]"], "running",
                      False),
    "snail-support": (["algo=snail", "algo.filters=8", "algo.attention=[[8,4]]"], "support",
                      False),
    "snail-batch": (["algo=snail", "algo.filters=8", "algo.attention=[[8,4]]"], "batch", True),
    "maml-support": (["algo=maml", "algo.eval_inner_steps=2"], "support", False),
    "maml-none": (["algo=maml", "algo.eval_inner_steps=2"], "none", False),
    "maml-batch": (["algo=maml", "algo.eval_inner_steps=2"], "batch", True),
    "maml-vmap-support": (["algo=maml", "algo.eval_inner_steps=2", "algo.task_batching=vmap"],
                          "support", False),
    "fomaml-support": (["algo=fomaml", "algo.eval_inner_steps=2"], "support", False),
    "anil-support": (["algo=anil", "algo.eval_inner_steps=2"], "support", False),
    "metasgd-support": (["algo=metasgd"], "support", False),
    "reptile-support": (["algo=reptile", "algo.eval_inner_steps=3"], "support", False),
    "reptile-batch-per-query": (["algo=reptile", "algo.eval_inner_steps=3"], "batch", False),
    "reptile-batch-transductive": (["algo=reptile", "algo.eval_inner_steps=3",
                                    "algo.transductive=true"], "batch", True),
}


def learner_and_episode(cfg_factory, overrides, norm):
    cfg = cfg_factory(*SMALL, *overrides, f"backbone.norm={norm}")
    assert check_static(cfg) == []
    data = run.build_data(cfg)
    torch.manual_seed(0)
    learner = run.build_learner(cfg, data)
    g = torch.Generator().manual_seed(3)
    ep = data.sampler("test", run.episode_spec(cfg, False), torch.device("cpu")).sample(2, g)
    if norm == "running":  # move the running averages away from their (0, 1) start
        learner.train()
        with torch.no_grad():
            learner(data.sampler("train", run.episode_spec(cfg, True),
                                 torch.device("cpu")).sample(2, g))
    learner.eval()
    return learner, ep


@pytest.mark.parametrize("case", list(CASES))
def test_a_query_changes_only_its_own_prediction_unless_transductive(case, cfg_factory):
    overrides, norm, transductive = CASES[case]
    learner, ep = learner_and_episode(cfg_factory, overrides, norm)
    assert learner.transductive() is transductive
    with torch.no_grad():
        torch.manual_seed(1)  # the same draws (e.g. Reptile's inner minibatches) both times
        before = learner.predict(ep)
        ep.x_query[:, 0] = torch.rand_like(ep.x_query[:, 0])  # one query image per task
        torch.manual_seed(1)
        after = learner.predict(ep)
    assert before.shape[:2] == ep.y_query.shape
    others = (after[:, 1:] - before[:, 1:]).abs().max().item()
    scale = before.abs().max().item()
    if transductive:
        assert others > 1e-4 * scale, others  # the test has teeth: batch statistics leak
    else:
        assert others <= 1e-6 * scale, others
    assert not torch.equal(after[:, 0], before[:, 0])  # its own prediction moved


def test_support_norm_equals_batch_norm_of_the_support_set_by_hand():
    torch.manual_seed(0)
    norm = SupportNorm2d(4).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    xs = torch.randn(6, 4, 5, 5, dtype=torch.float64) * 3 + 1
    xq = torch.randn(7, 4, 5, 5, dtype=torch.float64)
    with support_rows(6):
        out = norm(torch.cat([xs, xq]))
    for c in range(4):  # per channel, over support images and positions, biased variance
        values = xs[:, c].flatten()
        mean = values.sum() / values.numel()
        var = ((values - mean) ** 2).sum() / values.numel()
        ref = (torch.cat([xs, xq])[:, c] - mean) / torch.sqrt(var + 1e-5)
        ref = ref * norm.weight[c] + norm.bias[c]
        assert torch.allclose(out[:, c], ref, atol=1e-12, rtol=0)
    assert not torch.allclose(out[6:], norm(xq))  # queries are not normalised by themselves


def test_running_averages_move_in_training_only_and_checkpoints_carry_them(cfg_factory,
                                                                          tmp_path):
    learner, ep = learner_and_episode(cfg_factory, ["algo=protonet"], "running")
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 8  # 4 blocks x (mean, var)
    assert not torch.equal(state[stats[0]], torch.zeros_like(state[stats[0]]))
    with torch.no_grad():
        learner(ep)  # evaluation: normalised by the averages, which stay as they are
    assert all(torch.equal(state[k], learner.state_dict()[k]) for k in state)
    learner.train()
    with torch.no_grad():
        learner(ep)
    assert not torch.equal(state[stats[0]], learner.state_dict()[stats[0]])
    run.save_checkpoint(tmp_path / "c.pt", {"model": learner.state_dict(), "step": 1})
    blob = run.load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(blob["model"][stats[0]], learner.state_dict()[stats[0]])


@pytest.mark.parametrize("overrides, expected", [
    (["algo=maml", "backbone.norm=running"],
     "algo=maml does not support backbone.norm=running (supported: batch, support, none)"),
    (["algo=relation", "backbone.norm=support"],
     "algo=relation does not support backbone.norm=support (supported: batch, running, none)"),
])
def test_unsupported_norm_is_one_line(cfg_factory, overrides, expected):
    assert check_static(cfg_factory("data=synthetic", *overrides)) == [expected]


def test_support_statistics_floor_is_refused_before_any_work(cfg_factory):
    # stride-2 Conv-4 on 28 x 28: the last norm sees 2 x 2 maps; 2-way 1-shot = 8 values < 16
    cfg = cfg_factory("data=synthetic", "logger=none", "backbone.norm=support",
                      "backbone.downsample=stride", "data.ways=2", "data.shots=1")
    with pytest.raises(ConfigError, match=r"^backbone.norm=support: a layer sees 8 support "
                                          r"values per channel .*\(train episodes: 2-way"):
        run.prepare(cfg, ("train",))


def test_results_record_the_protocol(cfg_factory, tmp_path):
    cfg = cfg_factory(*SMALL, "backbone.norm=running", "train.iterations=2",
                      "train.eval_every=2", "train.val_episodes=2", "eval.episodes=4",
                      "eval.batch=2", "eval.seed=77")
    run.train(cfg, tmp_path, say=lambda *_: None)
    results = json.loads((tmp_path / "checkpoints" / "results.json").read_text())
    assert {k: results[k] for k in ("transductive", "norm", "split", "ways", "shots",
                                    "queries", "episodes", "test_seed")} == {
        "transductive": False, "norm": "running", "split": "default", "ways": 3, "shots": 2,
        "queries": 2, "episodes": 4, "test_seed": 77}
