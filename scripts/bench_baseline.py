"""The bench's baseline, written the way common libraries do it: Omniglot read as one PNG file
per item, decoded by PIL on every access through a DataLoader; the network rebuilt from
torch.nn layers in the canonical order with metabench's weights; MAML as a per-task loop over
cloned modules stepped with torch.autograd.grad (learn2learn's way). tests/test_bench_baseline.py
checks that it computes what metabench computes."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from metabench.episodes import Episode, EpisodeSpec

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
