"""Predictive bands of sinusoid learners: what each checkpoint predicts on a few fixed test tasks.

For one or more sinusoid checkpoints (a run's checkpoints/best.pt), draw ``--tasks`` test
sinusoids with a fixed seed (y = A sin(w x - phase), amplitude, phase and frequency uniform in
the ranges of the checkpoint's own ``cfg.data.source``, as metabench/data/sinusoid.py draws
them), K support points each (the run's ``data.shots`` unless ``--shots``) with the source's
noise, and plot a row of panels per checkpoint: the support points, the noiseless true
function, the predictive mean on a dense x grid (the grid is the episode's queries) and, for
learners with ``predicts_variance``, the central 90% interval of the predictive. The
predictive is a mixture of S equally weighted Gaussians per query ([T, m, S, 2]): for S = 1
the interval is mean -+ 1.645 sd exactly; for S > 1 its 5% and 95% quantiles are found by
bisection on the mixture's CDF (to float64 precision). Learners without a variance (MAML)
show the mean only.

    python scripts/sinusoid_bands.py outputs/maml/checkpoints/best.pt [more.pt ...] \\
        --out bands.png [--tasks 4] [--shots 5] [--seed 0] [--points 200]
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

SINUSOID = "metabench.data.sinusoid.Sinusoid"
#: the cfg.data.source keys this script draws test tasks from, or that concern only training
#: or scoring (the task pool, the noise of evaluation queries); any other is reported, not
#: modelled
DRAWN_KEYS = {"_target_", "amplitude", "phase", "x_range", "frequency", "noise_std",
              "noise_per_amplitude", "task_pool", "pool_seed", "eval_query_noise"}
Z90 = math.sqrt(2.0) * torch.erfinv(torch.tensor(0.9, dtype=torch.float64)).item()  # 1.6449


def check_source(cfg: DictConfig, where: str) -> list[str]:
    """Raise ConfigError unless ``cfg`` trained on the sinusoid data; return the names of
    source options this script does not draw (a variant it would plot as the standard one)."""
    from metabench.errors import ConfigError

    source = cfg.data.get("source") or {}
    if source.get("_target_") != SINUSOID:
        raise ConfigError(f"{where} was trained on data={cfg.data.get('name')}, not the "
                          "sinusoid regression")
    return sorted(set(source) - DRAWN_KEYS)


def draw_tasks(source: DictConfig, tasks: int, shots: int, points: int, seed: int
               ) -> tuple[Any, dict[str, Tensor]]:
    """``tasks`` sinusoids y = A sin(w x - phase) drawn with ``seed`` from the ranges of
    ``source`` (the checkpoint's cfg.data.source; a key it lacks, from a run before the
    option existed, takes the data's default), as one regression Episode: ``shots`` uniform
    support points with the source's noise (sd = noise_std + noise_per_amplitude * A), and
    ``points`` evenly spaced queries over the x range with the noiseless values; and the
    tasks' ``amplitude``, ``phase`` and ``frequency`` [tasks]. Task by task, amplitude, phase
    and support x from one stream, the frequency (where it is a range) and the noise (where its
    sd is not 0) each from their own, so the first tasks stay the same whatever ``tasks`` is,
    and checkpoints of different variants see the same amplitudes, phases and support x."""
    from metabench.episodes import Episode

    base, g_freq, g_noise = (torch.Generator().manual_seed(seed + k * 1_000_003)
                             for k in range(3))

    def uniform(shape: tuple[int, ...], lo_hi: Sequence[float], g: torch.Generator) -> Tensor:
        lo, hi = (float(v) for v in lo_hi)
        return torch.rand(shape, generator=g) * (hi - lo) + lo

    frequency = [float(v) for v in source.get("frequency", (1.0, 1.0))]
    noise_std = float(source.get("noise_std", 0.0))
    per_amplitude = float(source.get("noise_per_amplitude", 0.0))
    drawn = []
    for _ in range(tasks):
        amp, phase = uniform((1, 1), source.amplitude, base), uniform((1, 1), source.phase, base)
        x = uniform((shots, 1), source.x_range, base)
        w = (uniform((1, 1), frequency, g_freq) if frequency[1] > frequency[0]
             else torch.tensor([[frequency[0]]]))
        sd = noise_std + per_amplitude * amp
        noise = (torch.randn(x.shape, generator=g_noise) * sd if noise_std or per_amplitude
                 else torch.zeros_like(x))
        drawn.append((amp, phase, w, x, noise))
    amp, phase, w, x_support, noise = (torch.stack(v) for v in zip(*drawn, strict=True))
    lo, hi = (float(v) for v in source.x_range)
    x_query = torch.linspace(lo, hi, points).expand(tasks, points)[..., None].contiguous()
    episode = Episode(x_support, amp * torch.sin(w * x_support - phase) + noise, x_query,
                      amp * torch.sin(w * x_query - phase), ways=0)
    return episode, {"amplitude": amp.flatten(), "phase": phase.flatten(),
                     "frequency": w.flatten()}


def mixture_quantile(pred: Tensor, q: float, iters: int = 64) -> Tensor:
    """The ``q`` quantile [...] of mixtures ``pred`` [..., S, 2] (S equally weighted Gaussians:
    mean, variance), by bisection on the mixture CDF in float64: the bracket starts 10 sd
    beyond the outermost components and halves ``iters`` times."""
    mu, sd = pred[..., 0].double(), pred[..., 1].double().clamp_min(1e-24).sqrt()
    lo, hi = (mu - 10 * sd).min(-1).values, (mu + 10 * sd).max(-1).values
    for _ in range(iters):
        mid = (lo + hi) / 2
        cdf = (0.5 * (1 + torch.erf((mid[..., None] - mu) / (sd * math.sqrt(2))))).mean(-1)
        below = cdf < q
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


def band90(pred: Tensor) -> tuple[Tensor, Tensor]:
    """The central 90% interval (5% and 95% quantiles) of mixtures [..., S, 2]: mean -+ 1.645
    sd for one Gaussian, bisection on the CDF for several."""
    if pred.shape[-2] == 1:
        mu, sd = pred[..., 0, 0].double(), pred[..., 0, 1].double().clamp_min(0).sqrt()
        return mu - Z90 * sd, mu + Z90 * sd
    return mixture_quantile(pred, 0.05), mixture_quantile(pred, 0.95)


def predictive(learner: Any, episode: Any, seed: int) -> dict[str, Tensor | None]:
    """The learner's predictive mean [T, m] on the episode's queries (evaluation protocol, the
    global RNG seeded as metabench.load's models seed it) and its 90% band (None without a
    variance)."""
    learner.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):  # torch.func still adapts
        torch.manual_seed(seed)
        pred = learner.predict(episode).detach().cpu()
    if not getattr(learner, "predicts_variance", False):
        return {"mean": pred[..., 0].double(), "lo": None, "hi": None}
    lo, hi = band90(pred)
    return {"mean": pred[..., 0].double().mean(-1), "lo": lo, "hi": hi}


def load_row(checkpoint: Path, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """One checkpoint's row: its learner rebuilt as metabench.load does, its tasks, its
    predictions and a label."""
    import metabench

    model = metabench.load(checkpoint, device=args.device)
    cfg = model.config
    extra = check_source(cfg, str(checkpoint))
    if extra:
        say(f"note: {checkpoint}: data.source option(s) {', '.join(extra)} are not modelled "
            "here; its test tasks are drawn without them")
    shots = args.shots or int(cfg.data.shots)
    episode, params = draw_tasks(cfg.data.source, args.tasks, shots, args.points, args.seed)
    out = predictive(model.learner, episode.to(model.device), int(cfg.seed))
    learner = model.learner
    band = "90% band" if learner.predicts_variance else "mean only"
    if learner.predicts_variance and learner.transductive():
        band += ", transductive"
    where = checkpoint.resolve()
    return {"label": f"{cfg.algo.name} {shots}-shot ({band})\n{where.parent.parent.name}/"
                     f"{where.name}", "episode": episode,
            "params": params, **out}


def plot(rows: list[dict[str, Any]], out: Path) -> Path:
    """A row of panels per checkpoint, a column per task; written to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = rows[0]["episode"].tasks
    fig, axes = plt.subplots(len(rows), tasks, figsize=(3.2 * tasks, 2.7 * len(rows)),
                             squeeze=False, sharex=True)
    for r, row in enumerate(rows):
        ep = row["episode"]
        for t in range(tasks):
            ax = axes[r, t]
            x, y = ep.x_query[t, :, 0], ep.y_query[t, :, 0]
            mean = row["mean"][t]
            if row["lo"] is not None:
                ax.fill_between(x, row["lo"][t], row["hi"][t], color="tab:orange", alpha=0.3,
                                linewidth=0, label="90% predictive")
            ax.plot(x, y, color="black", linewidth=1, label="true")
            ax.plot(x, mean, color="tab:orange", linewidth=1.5, label="predictive mean")
            ax.plot(ep.x_support[t, :, 0], ep.y_support[t, :, 0], "o", color="tab:blue",
                    markersize=4, label="support")
            mse = ((mean - y.double()) ** 2).mean().item()
            ax.text(0.02, 0.03, f"grid MSE {mse:.3f}", transform=ax.transAxes, fontsize=7)
            p = {k: v[t].item() for k, v in row["params"].items()}
            w = f", w={p['frequency']:.2f}" if p["frequency"] != 1 else ""
            ax.set_title(f"A={p['amplitude']:.2f}, phase={p['phase']:.2f}{w}", fontsize=8)
            ax.tick_params(labelsize=7)
            if t == 0:
                ax.set_ylabel(row["label"], fontsize=8)
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels(),
                                                                   strict=True)}
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=len(handles),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.7 * len(rows))))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", type=Path, help="sinusoid checkpoints (best.pt)")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument("--tasks", type=int, default=4, help="test sinusoids (columns; default 4)")
    p.add_argument("--shots", type=int, default=None, help="support points K (default: "
                   "each run's data.shots)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn tasks (default 0)")
    p.add_argument("--points", type=int, default=200, help="x grid points (default 200)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    args = p.parse_args(argv)
    from metabench.errors import UserError

    for name in ("tasks", "shots", "points"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"error: --{name}={getattr(args, name)} must be at least 1", file=sys.stderr)
            return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: matplotlib is not installed (pip install 'metabench[report]')",
              file=sys.stderr)
        return 2
    try:
        rows = [load_row(c, args, lambda s: print(s, file=sys.stderr)) for c in args.checkpoints]
    except UserError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {plot(rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
