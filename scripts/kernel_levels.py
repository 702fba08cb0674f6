"""Rerun the numerically sensitive test files with PyTorch's CPU kernels forced to each level
this CPU allows (ATEN_CPU_CAPABILITY, and oneDNN's DNNL_MAX_CPU_ISA to match), so a threshold or
tolerance that only holds for this machine's kernels fails here, not on the next machine.

    python scripts/kernel_levels.py                    # every level this CPU allows
    python scripts/kernel_levels.py --others           # CI: the levels beside the native one

At DEFAULT, which no machine of this kind runs natively, the learning tests are left out (SELECT).

A level above the native one is reported as unavailable: PyTorch does not check a forced level
against the CPU (it reports AVX512 and then dies of an illegal instruction)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEVELS = {"default": "SSE41", "avx2": "AVX2", "avx512": "AVX512_CORE"}  # ATen -> oneDNN ISA
ORDER = ["DEFAULT", "AVX2", "AVX512"]
# the files whose assertions depend on floating-point results that differ between kernels:
# learning thresholds, loop-vs-vmap and two-process equalities, explicit-reference gradients
# (bitwise resume compares two runs on the same kernels, so it is not among them)
FILES = ["test_maml.py", "test_gradient_family.py", "test_task_batching.py",
         "test_distributed.py", "test_bench_baseline.py", "test_conv4.py", "test_resnet12.py",
         "test_protonet.py", "test_matching.py", "test_relation.py", "test_baseline.py",
         "test_snail.py", "test_protocols.py", "test_blur.py", "test_scratch.py",
         "test_metalstm.py"]
# DEFAULT (SSE4.1) is no machine's own level (every machine of this kind has AVX2): there the
# files run without their learning tests, whose thresholds come from spreads measured over
# seeds (scripts/learning_spread.py, most also under DEFAULT and AVX2), and keep their
# exactness and tolerance tests; AVX2 and AVX512, the levels real machines run, get every
# test of the files
NOT_LEARNING = "not learns_synthetic and not sinusoid_adapts"
SELECT = {"default": ["-k", NOT_LEARNING]}


def capability(env: dict[str, str]) -> str:
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", nargs="+", choices=sorted(LEVELS), default=list(LEVELS))
    ap.add_argument("--others", action="store_true",
                    help="only the available levels other than the native one (which the "
                         "suite itself ran)")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -x)")
    ns = ap.parse_args()
    native = capability({k: v for k, v in os.environ.items()
                         if k not in ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA")})
    print(f"native kernels: {native} (torch {torch_version()})", flush=True)
    rows, failed = [], False
    for level in ns.levels:
        if ns.others and level.upper() == native:
            continue
        env = {**os.environ, "ATEN_CPU_CAPABILITY": level, "DNNL_MAX_CPU_ISA": LEVELS[level]}
        if native in ORDER and ORDER.index(level.upper()) > ORDER.index(native):
            rows.append((level, "-", f"unavailable: this CPU's best is {native}", "-"))
            continue
        got = capability(env)
        started = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                            *[f"tests/{f}" for f in FILES], *SELECT.get(level, []),
                            *ns.pytest_args], cwd=REPO, env=env,
                           capture_output=True, text=True)
        tail = [ln for ln in r.stdout.splitlines() if re.search(r"\d+ (passed|failed)", ln)]
        summary = tail[-1].strip("= ") if tail else f"pytest exit {r.returncode}"
        if r.returncode != 0:
            failed = True
            print(r.stdout[-6000:], r.stderr[-2000:], sep="\n", flush=True)
        rows.append((level, got, summary, f"{time.perf_counter() - started:.0f}s"))
        print(f"{level:8s} {got:8s} {summary}", flush=True)
    print("\nlevel     kernels   result                                      time")
    for level, got, summary, secs in rows:
        print(f"{level:9s} {got:9s} {summary:43s} {secs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
