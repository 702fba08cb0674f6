"""scripts/sinusoid_bands.py: the 90% band of a Gaussian mixture (closed form for one Gaussian,
bisection for several) against the mixture CDF and the shared coverage scoring, the seeded test
tasks drawn from a checkpoint's own data ranges, and the figure from a real MAML checkpoint."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metabench import run
from metabench.algorithms.base import MetaLearner
from metabench.errors import ConfigError
from metabench.uncertainty import gaussian_mixture_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import sinusoid_bands as sb  # noqa: E402

pytest.importorskip("matplotlib")


def mixture_cdf(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference: (1/S) sum_s Phi((y - mu_s) / sd_s), written out with math.erf."""
    out = torch.empty(pred.shape[:-2], dtype=torch.float64)
    for idx in itertools.product(*map(range, pred.shape[:-2])):
        comps = pred[idx].tolist()
        out[idx] = sum(0.5 * (1 + math.erf((y[idx].item() - m) / math.sqrt(2 * v)))
                       for m, v in comps) / len(comps)
    return out


def test_band_of_one_gaussian_is_mean_plus_minus_1645_sd():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 5, 1, 1, generator=g, dtype=torch.float64) * 3
    var = torch.rand(2, 5, 1, 1, generator=g, dtype=torch.float64) * 2 + 0.01
    pred = torch.cat([mu, var], -1)
    lo, hi = sb.band90(pred)
    sd = var[..., 0, 0].sqrt()
    assert sb.Z90 == pytest.approx(1.6448536269514722, abs=1e-12)
    torch.testing.assert_close(lo, mu[..., 0, 0] - 1.6448536269514722 * sd, rtol=0, atol=1e-12)
    torch.testing.assert_close(hi, mu[..., 0, 0] + 1.6448536269514722 * sd, rtol=0, atol=1e-12)
    # the bisection finds the same quantiles, and S identical components are that Gaussian
    torch.testing.assert_close(sb.mixture_quantile(pred, 0.05), lo, rtol=0, atol=1e-9)
    same = sb.band90(pred.expand(2, 5, 4, 2))
    torch.testing.assert_close(same[0], lo, rtol=0, atol=1e-9)
    torch.testing.assert_close(same[1], hi, rtol=0, atol=1e-9)


def test_mixture_band_holds_5_and_95_percent_and_matches_the_coverage_scoring():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(2, 4, 3, generator=g, dtype=torch.float64) * 2
    var = torch.rand(2, 4, 3, generator=g, dtype=torch.float64) + 0.05
    pred = torch.stack([mu, var], -1)  # [T=2, m=4, S=3, 2]
    lo, hi = sb.band90(pred)
    torch.testing.assert_close(mixture_cdf(pred, lo), torch.full_like(lo, 0.05), rtol=0,
                               atol=1e-12)
    torch.testing.assert_close(mixture_cdf(pred, hi), torch.full_like(hi, 0.95), rtol=0,
                               atol=1e-12)
    symmetric = torch.tensor([[[[-2.0, 0.5], [2.0, 0.5]]]], dtype=torch.float64)
    slo, shi = sb.band90(symmetric)
    assert slo.item() == pytest.approx(-shi.item(), abs=1e-12) and shi.item() > 2.0
    # the band is the interval gaussian_mixture_metrics counts as covered
    eps = 1e-6
    for y, covered in ((lo + eps, 1.0), (hi - eps, 1.0), (lo - eps, 0.0), (hi + eps, 0.0)):
        cov = gaussian_mixture_metrics(pred, y[..., None])["coverage90"]
        torch.testing.assert_close(cov, torch.full((2,), covered, dtype=torch.float64))


SOURCE = OmegaConf.create({"_target_": sb.SINUSOID, "amplitude": [2.0, 3.0],
                           "phase": [0.5, 1.0], "x_range": [-1.0, 4.0]})


def test_tasks_come_from_the_checkpoints_ranges_seeded_and_task_by_task():
    ep, params = sb.draw_tasks(SOURCE, tasks=4, shots=6, points=11, seed=3)
    amp, phase = params["amplitude"], params["phase"]
    assert ep.x_support.shape == (4, 6, 1) and ep.x_query.shape == (4, 11, 1) and ep.ways == 0
    assert ((amp >= 2) & (amp <= 3)).all() and ((phase >= 0.5) & (phase <= 1)).all()
    assert ((ep.x_support >= -1) & (ep.x_support <= 4)).all() and (params["frequency"] == 1).all()
    torch.testing.assert_close(ep.x_query[2, :, 0], torch.linspace(-1, 4, 11))
    for x, y in ((ep.x_support, ep.y_support), (ep.x_query, ep.y_query)):
        torch.testing.assert_close(y, amp[:, None, None] * torch.sin(x - phase[:, None, None]))
    again, first = sb.draw_tasks(SOURCE, tasks=2, shots=6, points=11, seed=3)
    torch.testing.assert_close(first["amplitude"], amp[:2])  # the first tasks: whatever --tasks
    torch.testing.assert_close(again.x_support, ep.x_support[:2])
    other = sb.draw_tasks(SOURCE, tasks=4, shots=6, points=11, seed=4)[1]["amplitude"]
    assert not torch.equal(other, amp)


def test_variant_sources_frequency_and_noise_on_the_support_only():
    bmaml = OmegaConf.create({**SOURCE, "frequency": [0.5, 2.0], "noise_std": 0.3,
                              "noise_per_amplitude": 0.1})
    ep, p = sb.draw_tasks(bmaml, tasks=3, shots=4000, points=9, seed=0)
    w, amp, phase = (p[k][:, None, None] for k in ("frequency", "amplitude", "phase"))
    assert ((w >= 0.5) & (w <= 2)).all() and w.unique().numel() == 3
    torch.testing.assert_close(ep.y_query, amp * torch.sin(w * ep.x_query - phase))  # noiseless
    noise = ep.y_support - amp * torch.sin(w * ep.x_support - phase)
    sd = noise.std(dim=1).flatten()
    torch.testing.assert_close(sd, 0.3 + 0.1 * p["amplitude"], rtol=0.05, atol=0)
    fixed = sb.draw_tasks(OmegaConf.create({**SOURCE, "frequency": [2.0, 2.0]}), 2, 3, 5, 0)[1]
    assert (fixed["frequency"] == 2).all()  # one value: fixed, not drawn
    plain, q = sb.draw_tasks(SOURCE, tasks=3, shots=4000, points=9, seed=0)
    assert torch.equal(q["amplitude"], p["amplitude"]) and torch.equal(q["phase"], p["phase"])
    assert torch.equal(plain.x_support, ep.x_support)  # rows of different variants: same tasks


def test_source_checks():
    assert sb.check_source(OmegaConf.create({"data": {"source": SOURCE}}), "x") == []
    bmaml = {**SOURCE, "task_pool": 100, "pool_seed": 0, "eval_query_noise": False}
    assert sb.check_source(OmegaConf.create({"data": {"source": bmaml}}), "x") == []
    odd = OmegaConf.create({"data": {"source": {**SOURCE, "shift": 0.1}}})
    assert sb.check_source(odd, "x") == ["shift"]  # reported, not silently modelled
    images = OmegaConf.create({"data": {"name": "omniglot", "source": {"_target_": "x.Omni"}}})
    with pytest.raises(ConfigError, match="trained on data=omniglot, not the sinusoid"):
        sb.check_source(images, "best.pt")


class TwoBumps(MetaLearner):
    """A fake distributional learner: per query two components at x -+ 1, variance 0.25."""

    predicts_variance = True

    def __init__(self):
        super().__init__(torch.nn.Identity(), "regression", 0)

    def predict(self, episode):
        x = episode.x_query.double()
        comps = torch.cat([x - 1, x + 1], -1)  # [T, m, 2]
        return torch.stack([comps, torch.full_like(comps, 0.25)], -1)  # [T, m, 2, 2]


def test_predictive_mean_and_band_of_a_variance_learner_and_its_panel(tmp_path: Path):
    ep, params = sb.draw_tasks(SOURCE, tasks=2, shots=3, points=7, seed=0)
    out = sb.predictive(TwoBumps(), ep, seed=0)
    torch.testing.assert_close(out["mean"], ep.x_query[..., 0].double())
    lo, hi = sb.band90(TwoBumps().predict(ep))
    torch.testing.assert_close(out["lo"], lo)
    torch.testing.assert_close(out["hi"], hi)
    # x -+ 1 with sd 0.5: the 95% quantile sits a bit under x + 1 + 1.645 * 0.5
    assert ((out["hi"] - out["mean"]) < 1 + sb.Z90 * 0.5).all()
    assert ((out["hi"] - out["mean"]) > 1 + 0.5).all()
    row = {"label": "fake", "episode": ep, "params": params, **out}
    assert sb.plot([row], tmp_path / "one.png").stat().st_size > 5_000


@pytest.fixture(scope="module")
def maml_checkpoint(tmp_path_factory) -> Path:
    """MAML on the sinusoid (the paper's 40-40 MLP), 5 meta-iterations of 4 tasks."""
    from conftest import make_cfg

    run_dir = tmp_path_factory.mktemp("bands") / "maml"
    cfg = make_cfg("algo=maml", "data=sinusoid", "logger=none", "device=cpu",
                   "train.iterations=5", "train.meta_batch=4", "train.eval_every=5",
                   "train.log_every=5", "train.val_episodes=4", "algo.eval_inner_steps=3",
                   "train.evaluate_at_end=false")
    run.train(cfg, run_dir, say=lambda *_: None)
    return run_dir / "checkpoints" / "best.pt"


def test_script_draws_a_row_per_checkpoint_and_means_only_for_maml(maml_checkpoint: Path,
                                                                  tmp_path: Path, capsys):
    from PIL import Image

    import metabench

    out = tmp_path / "bands.png"
    assert sb.main([str(maml_checkpoint), str(maml_checkpoint), "--out", str(out),
                    "--tasks", "3", "--shots", "5", "--points", "60"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert Image.open(out).size == (1056, 594)  # 3 x 3.2 in by 2 x 2.7 in at 110 dpi
    args = sb.argparse.Namespace(shots=None, tasks=2, points=50, seed=0, device="cpu")
    row = sb.load_row(maml_checkpoint, args, print)
    assert row["lo"] is None and row["hi"] is None and "mean only" in row["label"]
    assert row["episode"].x_support.shape == (2, 10, 1)  # the run's data.shots
    model = metabench.load(maml_checkpoint)  # the mean is what the evaluation path predicts
    torch.testing.assert_close(row["mean"].float(), model.learner.predict(row["episode"])[..., 0])

    assert sb.main([str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and err.count("\n") == 1
    assert sb.main([str(maml_checkpoint), "--out", str(out), "--tasks", "0"]) == 2
    assert capsys.readouterr().err == "error: --tasks=0 must be at least 1\n"
