"""Data-parallel meta-training on torch.distributed, launched by torchrun.

Every rank draws the same meta-batch (same seed, same sampler state), keeps its contiguous
share of the tasks, and the meta-gradients are averaged with one all-reduce before the
optimiser step. Because the loss is a mean over tasks and every share has the same size, the
averaged gradient is the gradient of the whole meta-batch: N processes take the same steps as
one. Rank 0 alone validates, logs and writes files; the others wait for it in the next
all-reduce. NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from metabench.episodes import Episode


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def from_env() -> World:
    """The process's place in a torchrun launch (RANK, WORLD_SIZE, LOCAL_RANK); one process
    otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    if world.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=world.rank, world_size=world.size)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(episode: Episode, world: World) -> Episode:
    """This rank's contiguous share of the tasks (the meta-batch is a multiple of the size)."""
    per = episode.tasks // world.size
    return episode.select(slice(world.rank * per, (world.rank + 1) * per))


def _flat_all_reduce(tensors: list[Tensor], world: World) -> None:
    """Average ``tensors`` across ranks in place with one all-reduce of a flat buffer."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat.div_(world.size)
    i = 0
    for t in tensors:
        t.copy_(flat[i:i + t.numel()].view_as(t))
        i += t.numel()


def average_gradients(parameters, world: World) -> None:
    if world.distributed:
        _flat_all_reduce([p.grad for p in parameters if p.grad is not None], world)


def average_values(values: dict[str, Tensor], world: World) -> dict[str, Tensor]:
    """Scalar metrics averaged across ranks (each rank saw a different share of tasks)."""
    if not world.distributed or not values:
        return values
    keys = sorted(values)
    stacked = [torch.as_tensor(values[k], dtype=torch.float32).detach().clone().reshape(1)
               for k in keys]
    _flat_all_reduce(stacked, world)
    return {k: v[0] for k, v in zip(keys, stacked, strict=True)}


def broadcast_parameters(module: torch.nn.Module, world: World) -> None:
    """Start every rank from rank 0's weights and buffers."""
    if world.distributed:
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def broadcast_object(obj, world: World):
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
