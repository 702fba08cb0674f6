"""Uncertainty metrics on hand-built predictions: NLL, ECE and its bins, the pooled reliability,
a Gaussian mixture's NLL and 90% coverage; every learner reports them in evaluation."""

from __future__ import annotations

import math

import torch

from metabench.evaluation import run_episodes, summarize
from metabench.uncertainty import (
    calibration,
    gaussian_mixture_metrics,
    log_mean_exp,
    pooled_reliability,
)


def test_ece_and_nll_on_hand_built_predictions():
    # 4 queries, 2 classes: confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right)
    probs = torch.tensor([[[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.45, 0.55]]], dtype=torch.float64)
    target = torch.tensor([[0, 1, 1, 1]])
    out = calibration(probs, target, bins=10)
    # bins (0.8, 0.9]: acc 1/2, conf 0.9 -> gap 0.4 x 2; (0.5, 0.6]: acc 1, conf 0.575 -> 0.425 x 2
    ece = torch.tensor([(2 * 0.4 + 2 * 0.425) / 4], dtype=torch.float64)
    assert torch.allclose(out["ece"], ece)
    nll = -(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.55)) / 4
    assert torch.allclose(out["nll"], torch.tensor([nll], dtype=torch.float64))
    assert out["bin_count"][0].tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 2, 0]
    assert out["bin_correct"][0, 8].item() == 1 and out["bin_correct"][0, 5].item() == 2


def test_perfectly_calibrated_and_confidently_wrong():
    uniform = torch.full((1, 6, 3), 1 / 3, dtype=torch.float64)
    target = torch.tensor([[0, 1, 2, 0, 1, 2]])
    # predicts class 0 (ties -> first) and is right 1/3 of the time at confidence 1/3: ECE 0
    assert calibration(uniform, target)["ece"].item() < 1e-12
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).double()
    out = calibration(wrong, target)
    assert out["ece"].item() == 1.0 and out["nll"].item() > 20


def test_pooled_reliability_sums_episodes_and_skips_bins_in_summaries():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.95, 0.05], [0.6, 0.4]]])
    target = torch.tensor([[0, 0], [0, 1]])
    per = calibration(probs, target, bins=5)
    pooled = pooled_reliability(per)
    assert pooled["count"] == [0, 0, 1, 1, 2]
    assert pooled["accuracy"][:2] == [None, None] and pooled["accuracy"][4] == 1.0
    assert abs(pooled["ece"] - (0.6 + 0.8 + 2 * (1 - 0.925)) / 4) < 1e-6
    assert set(summarize({**per, "acc": torch.ones(2)})) == {"nll", "ece", "acc"}


def test_gaussian_mixture_nll_and_coverage():
    mu = torch.tensor([[[0.0], [1.0]]], dtype=torch.float64)
    var = torch.tensor([[[4.0], [0.25]]], dtype=torch.float64)
    pred = torch.stack([mu, var], -1)  # [1, 2, 1, 2]: one Gaussian per query
    y = torch.tensor([[[3.0], [1.1]]], dtype=torch.float64)
    out = gaussian_mixture_metrics(pred, y)
    ref = -torch.distributions.Normal(mu[..., 0], var[..., 0].sqrt()).log_prob(y[..., 0]).mean()
    assert torch.allclose(out["nll"], ref[None])
    # 3.0 is 1.5 sd out (inside 1.645), 1.1 is 0.2 sd out: both covered; 4.0 would not be
    assert out["coverage90"].item() == 1.0
    assert gaussian_mixture_metrics(pred, y + torch.tensor([[[0.2], [1.0]]],
                                                           dtype=torch.float64))[
        "coverage90"].item() == 0.5
    assert torch.allclose(out["loss"], torch.tensor([(9 + 0.01) / 2], dtype=torch.float64))
    # a two-component mixture: NLL is -log of the mean density, the mean is the mixture's
    two = torch.tensor([[[[-1.0, 1.0], [1.0, 1.0]]]], dtype=torch.float64)
    out = gaussian_mixture_metrics(two, torch.zeros(1, 1, 1, dtype=torch.float64))
    dens = torch.distributions.Normal(torch.tensor([-1.0, 1.0], dtype=torch.float64), 1.0)
    assert torch.allclose(out["nll"], -dens.log_prob(torch.tensor(0.0)).exp().mean().log()[None])
    assert out["loss"].item() == 0.0 and out["coverage90"].item() == 1.0


def test_log_mean_exp_is_the_log_of_the_averaged_probabilities():
    logp = torch.randn(3, 4, 5, dtype=torch.float64).log_softmax(-1)
    assert torch.allclose(log_mean_exp(logp, 0).exp(), logp.exp().mean(0))


def test_every_classifier_reports_nll_and_ece_in_evaluation(cfg_factory):
    from metabench import run

    for algo in ("protonet", "relation", "maml", "reptile", "baseline"):
        cfg = cfg_factory("data=synthetic", f"algo={algo}", "data.source.image_size=16",
                          "eval.episodes=4", "eval.batch=2", "logger=none")
        data, learner, device = run.prepare(cfg, ("test",))
        per = run_episodes(learner, data.sampler("test", run.episode_spec(cfg, False), device),
                           4, 2, 0)
        assert {"nll", "ece", "bin_count"} <= set(per), algo
        assert per["bin_count"].shape == (4, 15) and (per["ece"] >= 0).all(), algo
        assert torch.allclose(per["bin_count"].sum(1), torch.full((4,), 5.0 * 5)), algo
