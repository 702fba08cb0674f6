"""metabench speed benchmark: metabench against a baseline written the way common libraries do
it (bench_baseline.py), in ONE process, on the same machine and data.

For MAML (second order, 5-way 1-shot, meta-batch 32, 1 inner step, 15 queries per class; on the
max-pooled Conv-4 and on the strided Conv-4 of MAML's Omniglot code) and ProtoNet (60-way 5-shot
5-query training episodes) it times meta-iterations/s three ways, each the median of repeats
after warm-up, so that a ratio says where it comes from:
- step: forward + backward + optimizer step on the SAME episodes, already on the device, for
  both sides (metabench: the torch.func inner loop; baseline: torch.nn layers and, for MAML, a
  per-task loop over cloned modules stepped with torch.autograd.grad(create_graph=True));
- data: producing one meta-batch of episodes on the device (metabench: indexing the uint8 cache;
  baseline: a per-item PIL-decoding Dataset read through a DataLoader);
- end to end: both together, as training runs them.
Precision rows: fp32 and channels_last everywhere; bf16 (and fp16) where the device runs them
natively (CUDA, or a CPU with AVX512-BF16/AMX; elsewhere the row says why not). It also checks
that both sides compute the same MAML meta-gradient and times 600 ProtoNet test episodes.

    python scripts/bench.py --root ../shared/data/omniglot [--device cpu|cuda] [--out bench.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_baseline import (  # noqa: E402,F401 (re-exported for tests/test_bench_baseline.py)
    MeanReadout,
    PngCharacters,
    baseline_maml_loss,
    baseline_protonet_loss,
    clone_module,
    library_network,
    loader_episodes,
    set_params,
)

from metabench.algorithms.maml import MAML  # noqa: E402
from metabench.algorithms.protonet import ProtoNet  # noqa: E402
from metabench.backbones.conv4 import Conv4  # noqa: E402
from metabench.checks import check_precision  # noqa: E402
from metabench.data.omniglot import load_omniglot  # noqa: E402
from metabench.episodes import Episode, EpisodeSpec  # noqa: E402
from metabench.evaluation import run_episodes  # noqa: E402
from metabench.precision import autocast, grad_scaler, native_bf16_cpu  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, device, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    sync(device)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process-wide, monotone


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


# --- the benchmark -----------------------------------------------------------------------

def make_maml(device, channels_last=False, task_batching="auto", downsample="pool") -> MAML:
    torch.manual_seed(0)
    backbone = Conv4((1, 28, 28), downsample=downsample,
                     readout="mean" if downsample == "stride" else "flatten")
    m = MAML(backbone, "classification", 5, inner_lr=0.4, inner_steps=1,
             task_batching=task_batching).to(device)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def make_protonet(device, channels_last=False) -> ProtoNet:
    torch.manual_seed(0)
    m = ProtoNet(Conv4((1, 28, 28)), "classification", 60).to(device)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def to_channels_last(ep: Episode) -> Episode:
    def cl(x):  # each task's [N, C, H, W] slice in channels_last strides
        return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return Episode(cl(ep.x_support), ep.y_support, cl(ep.x_query), ep.y_query, ep.ways)


def meta_grad_check(device, dtype, sampler, downsample="pool") -> float:
    """Max relative difference between metabench's and the baseline's MAML meta-gradient
    (TF32 off, so float32 means float32 on CUDA too)."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    learner = make_maml(device, downsample=downsample).to(dtype)
    ep = sampler.sample(4, torch.Generator().manual_seed(5))
    ep = Episode(ep.x_support.to(dtype), ep.y_support, ep.x_query.to(dtype), ep.y_query, 5)
    loss, _ = learner(ep)
    ours = torch.autograd.grad(loss, list(learner.model.parameters()))
    library = library_network(learner.model)
    ref_loss = baseline_maml_loss(library, ep, 0.4, 1)
    ref = torch.autograd.grad(ref_loss, list(library.parameters()))
    a, b = torch.cat([g.flatten() for g in ours]), torch.cat([g.flatten() for g in ref])
    return ((a - b).abs().max() / b.abs().max()).item()


def precision_variants(device: torch.device) -> tuple[list[tuple[str, bool, str]], str | None]:
    """(name, channels_last, precision) rows this device runs, and why bf16 is not one (None
    when it is): the line ``train.precision=bf16`` would be refused with."""
    rows = [("metabench", False, "fp32"), ("metabench_channels_last", True, "fp32")]
    if device.type == "cuda":
        return rows + [("metabench_bf16", True, "bf16"), ("metabench_fp16", True, "fp16")], None
    cfg = OmegaConf.create({"train": {"precision": "bf16"}, "device": str(device)})
    refused = check_precision(cfg, device)
    if refused:
        return rows, refused[0]
    return rows + [("metabench_bf16", False, "bf16"), ("metabench_bf16_channels_last", True,
                                                       "bf16")], None


def presampled(sampler, tasks: int, count: int, channels_last: bool) -> list[Episode]:
    gen = torch.Generator().manual_seed(0)
    eps = [sampler.sample(tasks, gen) for _ in range(count)]
    return [to_channels_last(e) for e in eps] if channels_last else eps


def ours_step(learner, next_episode, opt, precision: str = "fp32"):
    """forward + backward + step on ``next_episode()``: pre-sampled episodes for the step
    alone, freshly sampled ones end to end."""
    device = next(learner.parameters()).device
    scaler = grad_scaler(precision, device)

    def step():
        ep = next_episode()
        with autocast(precision, device):
            loss, _ = learner(ep)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def cycle(episodes: list[Episode]):
    order = iter(range(10**9))
    return lambda: episodes[next(order) % len(episodes)]


def sampling(sampler, tasks: int, channels_last: bool):
    gen = torch.Generator().manual_seed(0)
    return lambda: (to_channels_last if channels_last else lambda e: e)(sampler.sample(tasks, gen))


def baseline_step(model, maml: bool, next_episode):
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def step():
        ep = next_episode()
        loss = baseline_maml_loss(model, ep, 0.4, 1) if maml else baseline_protonet_loss(model, ep)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def it_per_s(step, device, args) -> float:
    return 1 / statistics.median(timed(step, device, args.warmup, args.repeats))


def bench_setting(name, spec, tasks, make, data, pngs, device, args) -> dict:
    """The step, data and end-to-end rows of one setting."""
    sampler = data.sampler("train", spec, device)
    variants, bf16_refused = precision_variants(device)
    if args.compile and name == "protonet":
        variants.append(("metabench_compiled", True, "fp32"))
    if device.type == "cuda" and name.startswith("maml"):
        variants.append(("metabench_loop", False, "fp32"))
    row: dict = {"spec": vars(spec), "tasks": tasks, "step": {}, "data": {}, "e2e": {},
                 "peak_mb": {}, "bf16_refused": bf16_refused}
    count = args.warmup + args.repeats
    for variant, cl, precision in variants:
        kw = {"task_batching": "loop"} if variant == "metabench_loop" else {}
        reset_peak(device)
        learner = make(device, cl, **kw)
        model = torch.compile(learner) if variant == "metabench_compiled" else learner
        opt = torch.optim.Adam(learner.parameters(), 1e-3)
        started = time.perf_counter()
        row["step"][variant] = it_per_s(
            ours_step(model, cycle(presampled(sampler, tasks, count, cl)), opt, precision),
            device, args)
        if variant == "metabench_compiled":  # the warm-up steps include compiling
            row["compile_and_warmup_s"] = time.perf_counter() - started
        row["peak_mb"][variant] = peak_mb(device)
        if variant in ("metabench", "metabench_channels_last"):
            opt = torch.optim.Adam(learner.parameters(), 1e-3)
            row["e2e"][variant] = it_per_s(ours_step(model, sampling(sampler, tasks, cl), opt),
                                           device, args)
    gen = torch.Generator().manual_seed(0)
    row["data"]["metabench"] = 1 / statistics.median(
        timed(lambda: sampler.sample(tasks, gen), device, 2, 20))
    maml = name.startswith("maml")
    reset_peak(device)
    learner = make(device)
    model = library_network(learner.model if maml else learner.backbone)
    row["step"]["baseline"] = it_per_s(
        baseline_step(model, maml, cycle(presampled(sampler, tasks, count, False))), device, args)
    episodes = loader_episodes(pngs, spec, tasks, device)
    row["data"]["baseline"] = 1 / statistics.median(
        timed(lambda: next(episodes), device, 1, args.repeats))
    row["e2e"]["baseline"] = it_per_s(baseline_step(model, maml, lambda: next(episodes)),
                                      device, args)
    row["peak_mb"]["baseline"] = peak_mb(device)
    fp32 = ("metabench", "metabench_channels_last")
    row["ratio"] = {
        "step": max(row["step"][v] for v in fp32) / row["step"]["baseline"],
        "data": row["data"]["metabench"] / row["data"]["baseline"],
        "e2e": max(row["e2e"][v] for v in fp32) / row["e2e"]["baseline"]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="../shared/data/omniglot")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default="bench.json")
    ap.add_argument("--compile", action="store_true",
                    help="also time ProtoNet under torch.compile (minutes to compile)")
    args = ap.parse_args()
    device = torch.device(args.device)
    results: dict = {"device": str(device), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "machine": platform.machine(),
                     "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "native_bf16_cpu": native_bf16_cpu(),
                     "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}
    started = time.perf_counter()
    data = load_omniglot(args.root, split="vinyals")
    tmp = tempfile.TemporaryDirectory()
    with zipfile.ZipFile(Path(args.root) / "images_background.zip") as z:
        z.extractall(tmp.name)
    pngs = PngCharacters(Path(tmp.name) / "images_background")
    settings = {
        "maml": (EpisodeSpec(5, 1, 15), 32, make_maml),
        "maml_strided": (EpisodeSpec(5, 1, 15), 32,
                         lambda *a, **kw: make_maml(*a, downsample="stride", **kw)),
        "protonet": (EpisodeSpec(60, 5, 5), 1, make_protonet),
    }
    for name, (spec, tasks, make) in settings.items():
        results[name] = bench_setting(name, spec, tasks, make, data, pngs, device, args)

    maml_sampler = data.sampler("train", EpisodeSpec(5, 1, 15), device)
    for key, downsample in (("maml_meta_grad_rel_diff", "pool"),
                            ("maml_strided_meta_grad_rel_diff", "stride")):
        results[key] = {"float32": meta_grad_check(device, torch.float32, maml_sampler,
                                                   downsample),
                        "float64": meta_grad_check(device, torch.float64, maml_sampler,
                                                   downsample)}

    learner = make_protonet(device)
    test = data.sampler("test", EpisodeSpec(5, 1, 15), device)
    run_episodes(learner, test, 50, 50, 0)  # warm-up
    sync(device)
    t = time.perf_counter()
    run_episodes(learner, test, 600, 50, 1234)
    sync(device)
    results["protonet_eval_600_episodes_s"] = time.perf_counter() - t
    results["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


LABELS = {"maml": "MAML 5w1s 2nd-order mb32", "maml_strided": "  strided Conv-4 (paper's)",
          "protonet": "ProtoNet 60w5s5q"}
WHAT = {"step": "step (same episodes on the device)", "data": "data (meta-batches/s)",
        "e2e": "end to end"}


def print_table(r: dict) -> None:
    print(f"device {r['device']} ({r['gpu'] or r['machine']}, CPU capability "
          f"{r['cpu_capability']}, native bf16: {'yes' if r['native_bf16_cpu'] else 'no'}), "
          f"torch {r['torch']}, {r['threads']} threads; {r['seconds']:.0f} s")
    print(f"{'setting':27s} {'timed':35s} {'metabench':>10s} {'+chan_last':>10s} "
          f"{'baseline':>9s} {'ratio':>7s}")
    for name, label in LABELS.items():
        x = r[name]
        for i, what in enumerate(("step", "data", "e2e")):
            ours = x[what].get("metabench")
            cl = x[what].get("metabench_channels_last")
            cl_text = f"{cl:10.3f}" if cl is not None else f"{'-':>10s}"
            print(f"{label if i == 0 else '':27s} {WHAT[what]:35s} {ours:10.3f} {cl_text} "
                  f"{x[what]['baseline']:9.3f} {x['ratio'][what]:6.2f}x")
    print("ratio: metabench's faster fp32 column over the baseline; step and data are the two "
          "parts of end to end")
    for name in LABELS:
        x = r[name]
        extra = [f"{k.removeprefix('metabench_')} {v:.3f}" for k, v in x["step"].items()
                 if k not in ("metabench", "metabench_channels_last", "baseline")]
        if extra:
            print(f"{name} step it/s: " + ", ".join(extra))
    refused = r["protonet"]["bf16_refused"]
    if refused:
        print(f"bf16 rows: none on this device: {refused}")
    for key, label in (("maml_meta_grad_rel_diff", "MAML"),
                       ("maml_strided_meta_grad_rel_diff", "MAML strided")):
        g = r[key]
        print(f"{label} meta-gradient vs baseline (max rel diff): float32 {g['float32']:.2e}, "
              f"float64 {g['float64']:.2e}")
    print(f"ProtoNet: 600 test episodes (5w1s15q) evaluated in "
          f"{r['protonet_eval_600_episodes_s']:.1f} s")
    if "compile_and_warmup_s" in r["protonet"]:
        print(f"protonet torch.compile: compiling and warm-up "
              f"{r['protonet']['compile_and_warmup_s']:.0f} s")
    for name in LABELS:
        x = r[name]["peak_mb"]
        print(f"peak memory {name}: metabench {x['metabench']:.0f} MB, "
              f"baseline {x['baseline']:.0f} MB")


if __name__ == "__main__":
    main()
