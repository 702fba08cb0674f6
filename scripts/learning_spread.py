"""Spread over seeds of the learning tests' numbers, to set their thresholds with a margin.

Float32 training trajectories drift between CPUs (AVX-512 vs AVX2 kernels) much as they do with
a change of seed, so a learning test's threshold must sit several standard deviations below
its mean over seeds. This script runs the tests' own code path (tests/learning.py's CASES,
configs composed as tests/conftest.py's make_cfg does) for seeds 0..N-1 and prints, per case,
mean, sample sd and min of ``after`` and of ``after - before`` (accuracy; for the MSE cases
the post-adaptation MSE and post/pre ratio). Choose the kernels from outside:

    python scripts/learning_spread.py [--seeds 6] [--cases maml,anil] [--json out.json]
    ATEN_CPU_CAPABILITY=default DNNL_MAX_CPU_ISA=SSE41 python scripts/learning_spread.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"


def stats(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else float("nan")
    return f"{statistics.mean(xs):7.4f} {sd:7.4f} {min(xs):7.4f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 (default 6)")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--json", type=Path, default=None,
                   help="write the raw numbers here (after each run; an existing file from the "
                        "same kernels is resumed)")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="learning_spread-"))
    os.environ["METABENCH_CACHE"] = str(tmp / "cache")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    sys.path.insert(0, str(TESTS))
    import torch
    from conftest import make_cfg
    from learning import CASES, MSE_CASES, adapt_mse, train_and_compare

    torch.set_num_threads(min(2, torch.get_num_threads()))
    table = {**{k: (v, train_and_compare) for k, v in CASES.items()},
             **{k: (v, adapt_mse) for k, v in MSE_CASES.items()}}
    names = [c for c in args.cases.split(",") if c] or list(table)
    unknown = sorted(set(names) - set(table))
    if unknown:
        p.error(f"unknown cases {unknown}; known: {sorted(table)}")

    cap = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, cpu capability {cap}, "
          f"DNNL_MAX_CPU_ISA={os.environ.get('DNNL_MAX_CPU_ISA', '-')}, "
          f"threads {torch.get_num_threads()}, seeds 0-{args.seeds - 1}", flush=True)
    raw: dict = {"capability": cap, "torch": torch.__version__,
                 "dnnl_max_cpu_isa": os.environ.get("DNNL_MAX_CPU_ISA"), "cases": {}}
    if args.json and args.json.exists():  # resume: keep the seeds already run on these kernels
        old = json.loads(args.json.read_text())
        if {k: old.get(k) for k in ("capability", "torch", "dnnl_max_cpu_isa")} == \
                {k: raw[k] for k in ("capability", "torch", "dnnl_max_cpu_isa")}:
            raw["cases"] = old["cases"]
    rows = []
    for name in names:
        overrides, fn = table[name]
        acc = fn is train_and_compare
        keys = ("before", "after") if acc else ("pre", "post")
        case = raw["cases"].setdefault(name, {"kind": "accuracy" if acc else "mse", "runs": []})
        done = {r["seed"] for r in case["runs"]}
        for seed in (s for s in range(args.seeds) if s not in done):
            started = time.perf_counter()
            first, second = fn(make_cfg, tmp / f"{name}-{seed}", *overrides, f"seed={seed}")
            case["runs"].append({"seed": seed, keys[0]: first, keys[1]: second,
                                 "seconds": time.perf_counter() - started})
            print(f"  {name} seed {seed}: {first:.4f} -> {second:.4f} "
                  f"({case['runs'][-1]['seconds']:.0f} s)", flush=True)
            if args.json:
                args.json.write_text(json.dumps(raw, indent=1))
        runs = [r for r in case["runs"] if r["seed"] < args.seeds]
        seconds = [r[keys[1]] for r in runs]
        derived = [r[keys[1]] - r[keys[0]] if acc else r[keys[1]] / r[keys[0]] for r in runs]
        rows.append((name, "acc" if acc else "mse", stats(seconds), "gap" if acc else "ratio",
                     stats(derived)))

    print(f"\n{'case':20} {'':5} {'mean':>7} {'sd':>7} {'min':>7}   {'':5} "
          f"{'mean':>7} {'sd':>7} {'min':>7}   (capability {cap})")
    for name, a, sa, b, sb in rows:
        print(f"{name:20} {a:5} {sa}   {b:5} {sb}")


if __name__ == "__main__":
    main()
