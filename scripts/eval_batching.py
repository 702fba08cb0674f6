"""Per-episode vs batched evaluation of the learners that fine-tune at test, on real Omniglot.

The same test episodes (5-way 1-shot, 15 queries, eval.seed, drawn ``--batch`` at a time as
``run_episodes`` draws them) are evaluated one at a time (``run_episodes(one_at_a_time=True)``,
each task adapted alone: the loop) and batched (``--batch`` tasks per call: MAML's loop and
vmap, the Baseline's heads fitted together, Reptile's vmap). Learners are the quick presets'
(experiment=quick/maml_omniglot, quick/baseline_omniglot, quick/reptile_omniglot) with RANDOM
weights (seed 0): the cost of evaluation does not depend on them. Every batched row reports the
largest per-episode difference from the per-episode row in float32, and the same for a few
episodes in float64, where the paths agree to rounding (float32's differences are rounding
amplified by the fine-tuning steps; Reptile's 50 Adam steps amplify most).

    python scripts/eval_batching.py [--episodes 600] [--reptile-episodes 100] [--out f.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module

from metabench.algorithms.base import MetaLearner
from metabench.build import build_learner, channels_last, sampler
from metabench.data.omniglot import load_omniglot
from metabench.episodes import Episode
from metabench.evaluation import run_episodes

PRESETS = {"maml": "quick/maml_omniglot", "baseline": "quick/baseline_omniglot",
           "reptile": "quick/reptile_omniglot"}
LABELS = {"maml": "MAML (3 eval steps)", "baseline": "Baseline (100 head steps)",
          "reptile": "Reptile (50 Adam steps)"}
# (row name, task_batching or None, one_at_a_time); the first row is the reference
MODES = {"maml": [("per-episode loop", "loop", True), ("batched loop", "loop", False),
                  ("batched vmap", "vmap", False)],
         "baseline": [("per-episode", None, True), ("batched heads", None, False)],
         "reptile": [("per-episode loop", "loop", True), ("batched vmap", "vmap", False)]}


class Float64Sampler:
    """A sampler's episodes in float64."""

    def __init__(self, inner: Any):
        self.inner = inner

    def sample(self, tasks: int, generator: torch.Generator) -> Episode:
        e = self.inner.sample(tasks, generator)
        return Episode(e.x_support.double(), e.y_support, e.x_query.double(), e.y_query,
                       e.ways, e.classes)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() \
            else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def setup(name: str, data: Any) -> tuple[MetaLearner, Any, Any]:
    """The preset's learner (random weights, seed 0), its test sampler and its config."""
    os.environ.setdefault("METABENCH_DOWNLOAD", "false")
    with initialize_config_module("metabench.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={PRESETS[name]}", "logger=none"])
    torch.manual_seed(0)
    learner = build_learner(cfg, data)
    if channels_last(cfg, data):  # as run.py: the Baseline's preset trains channels_last
        learner = learner.to(memory_format=torch.channels_last)
    return learner, sampler(cfg, data, "test", torch.device("cpu")), cfg


def evaluate(learner: MetaLearner, test: Any, mode: str | None, one: bool, episodes: int,
             batch: int, seed: int) -> tuple[dict[str, torch.Tensor], float]:
    """Per-episode metrics and wall seconds; the global seed fixed for Reptile's draws."""
    if mode is not None:
        learner.task_batching = mode
    torch.manual_seed(seed)
    t = time.perf_counter()
    out = run_episodes(learner, test, episodes, batch, seed, one_at_a_time=one)
    return out, time.perf_counter() - t


def max_diffs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |a - b| per metric, and how many episodes' accuracies differ at all."""
    out = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a}
    out["episodes_acc_differs"] = int((a["acc"] != b["acc"]).sum())
    return out


def bench(name: str, data: Any, episodes: int, batch: int, check64: int) -> dict[str, Any]:
    learner, test, cfg = setup(name, data)
    seed = int(cfg.eval.seed)
    rows, ref32, ref64 = [], None, None
    for label, mode, one in MODES[name]:
        evaluate(learner, test, mode, one, min(2, episodes), batch, seed + 1)  # warm-up
        m32, secs = evaluate(learner, test, mode, one, episodes, batch, seed)
        learner.double()
        m64, _ = evaluate(learner, Float64Sampler(test), mode, one, check64, batch, seed)
        learner.float()
        ref32, ref64 = (m32, m64) if ref32 is None else (ref32, ref64)
        row = {"mode": label, "task_batching": mode, "one_at_a_time": one, "seconds": secs,
               "ms_per_episode": 1000 * secs / episodes, "acc": m32["acc"].mean().item(),
               "loss": m32["loss"].mean().item()}
        if m32 is not ref32:
            row["diff_float32"] = max_diffs(ref32, m32)
            row["diff_float64"] = max_diffs(ref64, m64)
        rows.append(row)
        print(f"  {name}: {label} {secs:.1f} s", flush=True)
    best = min(rows[1:], key=lambda r: r["seconds"])
    return {"preset": PRESETS[name], "episodes": episodes, "batch": batch,
            "float64_episodes": check64, "rows": rows, "best_batched": best["mode"],
            "speedup": rows[0]["seconds"] / best["seconds"]}


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['machine']}, torch {results['torch']}, {results['threads']} threads; "
          f"5-way 1-shot, 15 queries, Omniglot test split, random weights")
    print(f"{'learner':26s} {'mode':17s} {'episodes':>8s} {'wall s':>8s} {'ms/ep':>7s} "
          f"{'speedup':>7s} {'max|dloss| f32':>14s} {'max|dacc| f32':>13s} "
          f"{'max|dloss| f64':>14s} {'max|dacc| f64':>13s}")
    for name, r in results["learners"].items():
        ref = r["rows"][0]["seconds"]
        for row in r["rows"]:
            d32, d64 = row.get("diff_float32"), row.get("diff_float64")
            diffs = (f"{d32['loss']:14.2e} {d32['acc']:13.4f} {d64['loss']:14.2e} "
                     f"{d64['acc']:13.4f}" if d32 else f"{'(reference)':>14s}")
            print(f"{LABELS[name]:26s} {row['mode']:17s} {r['episodes']:8d} "
                  f"{row['seconds']:8.1f} {row['ms_per_episode']:7.1f} "
                  f"{ref / row['seconds']:6.2f}x {diffs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.environ.get("METABENCH_OMNIGLOT",
                                                     "/work/shared/data/omniglot"))
    ap.add_argument("--episodes", type=int, default=600, help="test episodes (MAML, Baseline)")
    ap.add_argument("--reptile-episodes", type=int, default=100,
                    help="Reptile's test episodes (about 1.4 s each per episode on 2 cores)")
    ap.add_argument("--batch", type=int, default=50, help="episodes per batched call")
    ap.add_argument("--check64", type=int, default=4, help="episodes compared in float64")
    ap.add_argument("--learners", default="maml,baseline,reptile")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args()
    data = load_omniglot(args.root)
    results: dict[str, Any] = {"machine": cpu_name(),
                               "torch": torch.__version__, "threads": torch.get_num_threads(),
                               "learners": {}}
    for name in args.learners.split(","):
        episodes = args.reptile_episodes if name == "reptile" else args.episodes
        results["learners"][name] = bench(name, data, episodes, args.batch, args.check64)
        if args.out:  # after each learner: a long run keeps what it measured
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
