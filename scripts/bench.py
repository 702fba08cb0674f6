"""metabench speed benchmark: metabench against a baseline written the way common libraries do
it, in ONE process, on the same machine and data.

For MAML (second order, 5-way 1-shot, meta-batch 32, 1 inner step, 15 queries per class; on the
max-pooled Conv-4 and on the strided Conv-4 of MAML's Omniglot code) and ProtoNet (60-way 5-shot
5-query training episodes) it times end-to-end meta-iterations/s
(episode sampling + forward + backward + optimizer step; median of repeats after warm-up):
- metabench: episodes sampled by indexing the uint8 cache on the device, torch.func inner loop;
- baseline: a per-item PIL-decoding Dataset read through a DataLoader, the network built from
  torch.nn layers in the usual order ([conv, BatchNorm2d, ReLU, MaxPool2d] blocks) with the same
  weights, and for MAML a per-task loop that copies the model per task (learn2learn-style clone)
  and steps it with torch.autograd.grad(create_graph=True).
It also checks that both compute the same MAML meta-gradient, measures the share of a step
spent sampling episodes, and times the evaluation of 600 ProtoNet test episodes.

    python scripts/bench.py --root ../shared/data/omniglot [--device cpu|cuda] [--out bench.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from metabench.algorithms.maml import MAML
from metabench.algorithms.protonet import ProtoNet
from metabench.backbones.conv4 import Conv4
from metabench.data.omniglot import load_omniglot
from metabench.episodes import Episode, EpisodeSpec
from metabench.evaluation import run_episodes
from metabench.precision import autocast, grad_scaler


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


# --- the baseline: per-item PIL decoding and a per-task copied model --------------------------

class PngCharacters(Dataset):
    """Omniglot as most libraries read it: one PNG file per item, decoded by PIL each time."""

    def __init__(self, folder: Path, size: int = 28):
        self.chars = sorted(p for p in folder.glob("*/*") if p.is_dir())
        self.files = [sorted(c.glob("*.png")) for c in self.chars]
        self.size = size

    def __len__(self) -> int:
        return sum(len(f) for f in self.files)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        c, i = key
        img = Image.open(self.files[c][i]).convert("L").resize((self.size, self.size),
                                                              Image.LANCZOS)
        t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(1, self.size,
                                                                                self.size)
        return 1.0 - t.float() / 255.0


class TaskBatches:
    """Batch sampler of (class, item) keys, task after task, class-major."""

    def __init__(self, dataset: PngCharacters, spec: EpisodeSpec, tasks: int, seed: int):
        self.ds, self.spec, self.tasks = dataset, spec, tasks
        self.g = torch.Generator().manual_seed(seed)

    def __iter__(self):
        w, n = self.spec.ways, self.spec.shots + self.spec.queries
        while True:
            keys = []
            for _ in range(self.tasks):
                classes = torch.randperm(len(self.ds.chars), generator=self.g)[:w]
                for c in classes.tolist():
                    items = torch.randperm(len(self.ds.files[c]), generator=self.g)[:n]
                    keys += [(c, i) for i in items.tolist()]
            yield keys


def loader_episodes(dataset, spec: EpisodeSpec, tasks: int, device):
    loader = DataLoader(dataset, batch_sampler=TaskBatches(dataset, spec, tasks, 0),
                        num_workers=0)
    w, s, q = spec.ways, spec.shots, spec.queries
    for x in loader:
        x = x.to(device).view(tasks, w, s + q, *x.shape[1:])
        labels = torch.arange(w, device=device)
        yield Episode(x[:, :, :s].flatten(1, 2), labels.repeat_interleave(s).expand(tasks, -1),
                      x[:, :, s:].flatten(1, 2), labels.repeat_interleave(q).expand(tasks, -1), w)


def clone_module(module: torch.nn.Module) -> torch.nn.Module:
    """A copy whose parameters are graph-connected clones of the originals (learn2learn's way)."""
    clone = copy.deepcopy(module)
    for (_, src), (_, mod) in zip(_param_owners(module), _param_owners(clone),
                                         strict=True):
        for name, p in src._parameters.items():
            if p is not None:
                mod._parameters[name] = p.clone()
    return clone


def library_network(model: nn.Module) -> nn.Module:
    """metabench's Conv-4 (+ head) rebuilt from torch.nn layers as libraries write it:
    [Conv2d, BatchNorm2d (batch statistics), ReLU, MaxPool2d] blocks, the same weights, the
    same parameter order."""
    body = model.backbone if hasattr(model, "backbone") else model
    mods, blocks = list(body.features), []
    for i in range(0, len(mods), 4):
        conv, norm, pooling, _ = mods[i:i + 4]
        bn = nn.BatchNorm2d(conv.out_channels, track_running_stats=False)
        bn.load_state_dict(norm.state_dict())
        blocks += [copy.deepcopy(conv), bn, nn.ReLU(), copy.deepcopy(pooling)]
    layers = [nn.Sequential(*blocks)]
    layers.append(MeanReadout() if body.readout == "mean" else nn.Flatten())
    if hasattr(model, "head"):
        layers.append(copy.deepcopy(model.head))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    return nn.Sequential(*layers).to(device, dtype)


class MeanReadout(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _param_owners(module):
    return [(n, m) for n, m in module.named_modules() if m._parameters]


def set_params(module: torch.nn.Module, new: list[torch.Tensor]) -> None:
    it = iter(new)
    for _, mod in _param_owners(module):
        for name in list(mod._parameters):
            if mod._parameters[name] is not None:
                mod._parameters[name] = next(it)


def baseline_maml_loss(model, ep: Episode, lr: float, steps: int) -> torch.Tensor:
    total = 0.0
    for t in range(ep.tasks):
        learner = clone_module(model)
        for _ in range(steps):
            loss = F.cross_entropy(learner(ep.x_support[t]), ep.y_support[t])
            params = list(learner.parameters())
            grads = torch.autograd.grad(loss, params, create_graph=True)
            set_params(learner, [p - lr * g for p, g in zip(params, grads, strict=True)])
        total = total + F.cross_entropy(learner(ep.x_query[t]), ep.y_query[t])
    return total / ep.tasks


def baseline_protonet_loss(encoder, ep: Episode) -> torch.Tensor:
    losses = []
    for t in range(ep.tasks):
        n = ep.x_support.shape[1]
        z = encoder(torch.cat([ep.x_support[t], ep.x_query[t]]))
        zs, zq = z[:n], z[n:]
        protos = zs.view(ep.ways, -1, zs.shape[-1]).mean(1)
        losses.append(F.cross_entropy(-torch.cdist(zq, protos) ** 2, ep.y_query[t]))
    return torch.stack(losses).mean()


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


def ours_step(learner, sampler, tasks, opt, generator, channels_last, precision="fp32"):
    device = next(learner.parameters()).device
    scaler = grad_scaler(precision, device)

    def step():
        ep = sampler.sample(tasks, generator)
        if channels_last:
            ep = to_channels_last(ep)
        with autocast(precision, device):
            loss, _ = learner(ep)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


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
                     "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None}

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
        row: dict = {"spec": vars(spec), "tasks": tasks}
        sampler = data.sampler("train", spec, device)
        variants = [("metabench", False, {}, "fp32"),
                    ("metabench_channels_last", True, {}, "fp32")]
        if device.type == "cuda":  # mixed precision, and (MAML) the per-task loop against vmap
            variants += [("metabench_bf16", True, {}, "bf16"), ("metabench_fp16", True, {}, "fp16")]
            if name.startswith("maml"):
                variants.append(("metabench_loop", False, {"task_batching": "loop"}, "fp32"))
        if args.compile and name == "protonet":
            variants.append(("metabench_compiled", True, {}, "fp32"))
        for variant, cl, kw, precision in variants:
            reset_peak(device)
            learner = make(device, cl, **kw)
            opt = torch.optim.Adam(learner.parameters(), 1e-3)
            gen = torch.Generator().manual_seed(0)
            model = torch.compile(learner) if variant == "metabench_compiled" else learner
            started = time.perf_counter()
            times = timed(ours_step(model, sampler, tasks, opt, gen, cl, precision), device,
                          args.warmup, args.repeats)
            if variant == "metabench_compiled":  # the warm-up steps include compiling
                row["compile_and_warmup_s"] = time.perf_counter() - started - sum(times)
            row[variant] = {"it_per_s": 1 / statistics.median(times),
                            "peak_mb": peak_mb(device)}
        # sampling share of a metabench step
        gen = torch.Generator().manual_seed(0)
        sample_t = timed(lambda s=sampler, g=gen, n=tasks: s.sample(n, g), device, 2, 20)
        row["sampling_share"] = statistics.median(sample_t) * row["metabench"]["it_per_s"]
        # the baseline
        reset_peak(device)
        learner = make(device)
        maml = name.startswith("maml")
        model = library_network(learner.model if maml else learner.backbone)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        episodes = loader_episodes(pngs, spec, tasks, device)

        def base_step(model=model, opt=opt, episodes=episodes, maml=maml):
            ep = next(episodes)
            loss = (baseline_maml_loss(model, ep, 0.4, 1) if maml
                    else baseline_protonet_loss(model, ep))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        times = timed(base_step, device, args.warmup, args.repeats)
        row["baseline"] = {"it_per_s": 1 / statistics.median(times), "peak_mb": peak_mb(device)}
        best = max(row["metabench"]["it_per_s"], row["metabench_channels_last"]["it_per_s"])
        row["speedup"] = best / row["baseline"]["it_per_s"]
        results[name] = row

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

    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(r: dict) -> None:
    print(f"device {r['device']} ({r['gpu'] or r['machine']}), torch {r['torch']}, "
          f"{r['threads']} threads")
    print(f"{'setting':28s} {'metabench it/s':>15s} {'+channels_last':>15s} {'baseline it/s':>14s}"
          f" {'speedup':>8s} {'sampling':>9s}")
    labels = {"maml": "MAML 5w1s 2nd-order mb32", "maml_strided": "  strided Conv-4 (paper's)",
              "protonet": "ProtoNet 60w5s5q"}
    for name, label in labels.items():
        x = r[name]
        print(f"{label:28s} {x['metabench']['it_per_s']:15.3f} "
              f"{x['metabench_channels_last']['it_per_s']:15.3f} {x['baseline']['it_per_s']:14.3f}"
              f" {x['speedup']:7.2f}x {100 * x['sampling_share']:8.2f}%")
    for key, label in (("maml_meta_grad_rel_diff", "MAML"),
                       ("maml_strided_meta_grad_rel_diff", "MAML strided")):
        g = r[key]
        print(f"{label} meta-gradient vs baseline (max rel diff): float32 {g['float32']:.2e}, "
              f"float64 {g['float64']:.2e}")
    print(f"ProtoNet: 600 test episodes (5w1s15q) evaluated in "
          f"{r['protonet_eval_600_episodes_s']:.1f} s")
    for name in labels:
        if "metabench_bf16" in r[name]:
            x = r[name]
            print(f"{name} channels_last + bf16 {x['metabench_bf16']['it_per_s']:.3f} it/s, "
                  f"+ fp16 {x['metabench_fp16']['it_per_s']:.3f} it/s")
    if "metabench_compiled" in r["protonet"]:
        x = r["protonet"]
        print(f"protonet channels_last + torch.compile {x['metabench_compiled']['it_per_s']:.3f}"
              f" it/s (compiling and warm-up: {x['compile_and_warmup_s']:.0f} s)")
    for name in ("maml", "maml_strided"):
        if "metabench_loop" in r[name]:
            print(f"{name} task batching: vmap (auto) {r[name]['metabench']['it_per_s']:.3f} "
                  f"it/s, per-task loop {r[name]['metabench_loop']['it_per_s']:.3f} it/s")
    for name in labels:
        x = r[name]
        print(f"peak memory {name}: metabench {x['metabench']['peak_mb']:.0f} MB, "
              f"baseline {x['baseline']['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
