"""Memory-augmented neural network (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML
2016, "Meta-Learning with Memory-Augmented Neural Networks"; no official code). An LSTM
controller reads a sequence of (x_t, one-hot y_{t-1}) (zero label at t = 0) and an external
memory M (slots x slot size) through ``reads`` heads:

- read: weights softmax_i(cosine(k_t, M_t(i))) per head, r_t = sum_i w_t(i) M_t(i);
- least-recently-used write: w^w_t = sigmoid(a) w^r_{t-1} + (1 - sigmoid(a)) w^lu_{t-1}, the
  least-used slot (by w^u_{t-1}) cleared first, then M_t = M_{t-1} + sum_heads w^w_t k_t^T;
- usage w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t; w^lu marks the ``reads`` least-used slots;
- output softmax(W [h_t, r_t]); the previous reads join the controller's input.

Memory, usage and controller state start afresh for every episode. Training: a task's support
and query examples in one shuffled sequence, cross-entropy over every step (the paper's loss).
Evaluation: query accuracy (each query one step on from the state after the support sequence,
so queries never see each other) and the paper's metric, accuracy at the 1st, 2nd, ...
presentation of a class (``instance<k>``) over a shuffled sequence of ``instances`` examples of
each class.

Deviations: with a conv backbone the controller reads its embedding (``backbone=mlp
backbone.hidden=[]`` feeds raw pixels, as the paper); the read keys double as the written
vectors, as in the paper's equations. ``key_strength`` (off by default) adds the NTM's learned
sharpening of the read softmax, and ``read_scale`` (1 by default) a fixed one, softmax(scale *
cosine): the paper's equations have neither, and over 128 slots the plain softmax of cosines
in [-1, 1] gives no slot more than e / (e + 127 / e) ~ 5% of a read."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.base import task_metrics
from metabench.algorithms.metric import MetricLearner, class_ranks
from metabench.episodes import Episode

EPS = 1e-6  # memory's initial value (a cosine with an all-zero slot is undefined)


class MemoryState:
    """Controller (h, c), memory [B, slots, size], read weights [B, reads, slots], usage
    [B, slots], reads [B, reads * size] of a batch of sequences."""

    def __init__(self, h, c, memory, read_w, usage, reads):
        self.h, self.c, self.memory, self.read_w, self.usage, self.reads = (
            h, c, memory, read_w, usage, reads)

    def repeat(self, m: int) -> MemoryState:
        """Each of the B states m times, [B * m, ...], task-major."""
        return MemoryState(*(t.repeat_interleave(m, 0) for t in (
            self.h, self.c, self.memory, self.read_w, self.usage, self.reads)))


def least_used(usage: Tensor, n: int) -> Tensor:
    """w^lu: 1 at the n smallest usages [B, slots] (ties to the lower index), else 0."""
    idx = usage.topk(n, -1, largest=False, sorted=True).indices
    return torch.zeros_like(usage).scatter_(-1, idx, 1.0)


def lrua_write(memory: Tensor, usage: Tensor, read_w: Tensor, keys: Tensor,
               gate: Tensor) -> tuple[Tensor, Tensor]:
    """Least-recently-used access: write weights [B, reads, slots] interpolating each head's
    previous read weights and the least-used slots (``gate`` [B, reads, 1] = sigmoid(a)), and
    the memory after clearing the least-used slot and adding every head's key."""
    lu = least_used(usage, read_w.shape[1])
    write_w = gate * read_w + (1 - gate) * lu[:, None]
    oldest = F.one_hot(usage.argmin(-1), memory.shape[1]).to(memory.dtype)
    return memory * (1 - oldest)[..., None] + write_w.transpose(1, 2) @ keys, write_w


class MANN(MetricLearner):
    any_ways = False  # one output unit per training way
    reported = tuple(f"instance{k}" for k in range(1, 11))

    def __init__(self, backbone: nn.Module, kind: str, ways: int, controller: int = 200,
                 slots: int = 128, slot_size: int = 40, reads: int = 4, gamma: float = 0.95,
                 instances: int = 10, key_strength: bool = False, read_scale: float = 1.0):
        super().__init__(backbone, kind, ways)
        require("a positive integer", controller=controller, slots=slots,
                slot_size=slot_size, reads=reads, instances=instances)
        require("a non-negative number", gamma=gamma)
        require("a positive number", read_scale=read_scale)
        require("true or false", key_strength=key_strength)
        if reads > slots:
            raise ValueError(f"algo.reads={reads} must be at most algo.slots={slots}")
        self.slots, self.size, self.n_reads = slots, slot_size, reads
        self.gamma, self.instances = float(gamma), instances
        self.read_scale = float(read_scale)
        d = backbone.out_dim
        self.cell = nn.LSTMCell(d + ways + reads * slot_size, controller)
        self.keys = nn.Linear(controller, reads * slot_size)
        self.gate = nn.Linear(controller, reads)
        # the NTM's key strength beta >= 1 per head (softmax(beta * cosine)); the paper's
        # reads have none, and a softmax over cosines in [-1, 1] across 128 slots is flat
        self.strength = nn.Linear(controller, reads) if key_strength else None
        self.out = nn.Linear(controller + reads * slot_size, ways)

    def initial(self, b: int, like: Tensor) -> MemoryState:
        z = like.new_zeros
        read_w = z(b, self.n_reads, self.slots)
        read_w[..., 0] = 1.0
        return MemoryState(z(b, self.cell.hidden_size), z(b, self.cell.hidden_size),
                           like.new_full((b, self.slots, self.size), EPS), read_w,
                           z(b, self.slots), z(b, self.n_reads * self.size))

    def step(self, s: MemoryState, x: Tensor, prev_label: Tensor) -> tuple[Tensor, MemoryState]:
        """One time step for a batch: input x [B, D], y_{t-1} one-hot [B, ways] -> logits."""
        b = x.shape[0]
        h, c = self.cell(torch.cat([x, prev_label, s.reads], -1), (s.h, s.c))
        k = torch.tanh(self.keys(h)).view(b, self.n_reads, self.size)
        gate = torch.sigmoid(self.gate(h))[..., None]  # [B, reads, 1]
        memory, write_w = lrua_write(s.memory, s.usage, s.read_w, k, gate)
        sim = self.read_scale * F.cosine_similarity(k[:, :, None], memory[:, None], dim=-1,
                                                    eps=1e-8)
        if self.strength is not None:
            sim = sim * (1 + F.softplus(self.strength(h)))[..., None]
        read_w = sim.softmax(-1)
        reads = (read_w @ memory).flatten(1)
        usage = self.gamma * s.usage + read_w.sum(1) + write_w.sum(1)
        logits = self.out(torch.cat([h, reads], -1))
        return logits, MemoryState(h, c, memory, read_w, usage, reads)

    def run(self, x: Tensor, y: Tensor, ways: int,
            state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        """Logits [B, L, ways] of sequences x [B, L, D] with labels y [B, L], each step fed the
        previous step's label (zeros at the first step of a fresh state)."""
        b, steps = y.shape
        s = self.initial(b, x) if state is None else state
        onehot = F.one_hot(y, ways).to(x.dtype)
        prev = torch.cat([x.new_zeros(b, 1, ways), onehot[:, :-1]], 1)
        out = []
        for t in range(steps):
            logits, s = self.step(s, x[:, t], prev[:, t])
            out.append(logits)
        return torch.stack(out, 1), s

    def _shuffled(self, z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        order = torch.rand(y.shape, device=y.device).argsort(-1)
        return z.gather(1, order[..., None].expand_as(z)), y.gather(1, order)

    def query_logits(self, zs: Tensor, ys: Tensor, zq: Tensor, ways: int) -> Tensor:
        """Each query one step on from the state after the (shuffled) support sequence."""
        zs, ys = self._shuffled(zs, ys)
        _, s = self.run(zs, ys, ways)
        t, m = zq.shape[:2]
        last = F.one_hot(ys[:, -1], ways).to(zq.dtype).repeat_interleave(m, 0)
        logits, _ = self.step(s.repeat(m), zq.flatten(0, 1), last)
        return logits.view(t, m, ways)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        return self.query_logits(z_support, y_support, z_query, ways)

    def forward(self, episode: Episode) -> tuple[Tensor, dict[str, Tensor]]:
        zs, zq = self.embed(episode)
        z = torch.cat([zs, zq], 1)
        y = torch.cat([episode.y_support, episode.y_query], 1)
        if self.training:  # the whole shuffled sequence, every step scored
            z, y = self._shuffled(z, y)
            logits, _ = self.run(z, y, episode.ways)
            per_task = task_metrics(logits, y, classification=True)
            return per_task["loss"].mean(), {"loss": per_task["loss"].detach(),
                                             "acc": per_task["acc"]}
        loss, metrics = self.scored(self.query_logits(zs, episode.y_support, zq, episode.ways),
                                    episode)
        metrics.update(self.instance_accuracy(z, y, episode.ways))
        return loss, metrics

    def instance_accuracy(self, z: Tensor, y: Tensor, ways: int) -> dict[str, Tensor]:
        """Per task, accuracy at the k-th presentation of a class (k = 1..instances) over a
        shuffled sequence of each class's first ``instances`` examples."""
        keep = class_ranks(y, ways) < self.instances
        n = int(keep[0].sum())
        z = z[keep].view(z.shape[0], n, -1)
        y = y[keep].view(y.shape[0], n)
        z, y = self._shuffled(z, y)
        logits, _ = self.run(z, y, ways)
        correct = (logits.argmax(-1) == y).float()
        rank = class_ranks(y, ways)
        out = {}
        for k in range(int(rank.max()) + 1):
            at = (rank == k).float()
            out[f"instance{k + 1}"] = (correct * at).sum(1) / at.sum(1)
        return out
