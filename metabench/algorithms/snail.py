"""SNAIL (Mishra et al. 2018): a causal sequence model reads a task's support examples, each an
embedding with its one-hot label, then a query with a zero label vector; its output at the query
position is the query's logits.

Blocks as in the paper: a dense block is a causal dilated convolution (kernel 2) with a gated
activation tanh * sigmoid whose output is concatenated to its input; a TC block stacks dense
blocks with dilations 1, 2, 4, ... (ceil(log2 L) of them, L the sequence length); an attention
block is causal single-head key/query/value attention, its read concatenated to its input.
Omniglot network (paper, Appendix): AttentionBlock(64, 32), TCBlock(L, 128),
AttentionBlock(256, 128), TCBlock(L, 128), AttentionBlock(512, 256), then a 1x1 convolution
(here the equivalent linear layer) to N logits.

Each query gets its own sequence, so queries never see each other. As every block is causal,
the outputs at the support positions are the same in all of a task's sequences: the network
runs the support prefix once per task and continues it by one step for each query at once
(``SNAILNet.forward(prefix, last)``), which gives exactly the logits of running every
[support, query] sequence as a batch [B, L, D] (tests/test_snail.py checks this) at a fraction
of the cost when there are many queries.

Deviations: the embedding is the shared backbone (Conv-4: ReLU, batch statistics per task
over support and query together, as for every metabench learner; the paper's Omniglot embedding
uses leaky ReLU); an episode trains on all its queries (``ways * queries`` sequences sharing one
support set), where the paper has one query per sequence sample; in training the support order
is shuffled per task, in evaluation it is the episode's (class-major) order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.metric import MetricLearner

PAPER_ATTENTION = ((64, 32), (256, 128), (512, 256))  # (key size, value size) per block


def gated(h: Tensor) -> Tensor:
    """tanh(first half) * sigmoid(second half) along the last dimension."""
    f, g = h.chunk(2, dim=-1)
    return torch.tanh(f) * torch.sigmoid(g)


class DenseBlock(nn.Module):
    """Causal convolution, kernel 2, dilation ``dilation``: output t reads inputs t - d and t."""

    def __init__(self, channels: int, filters: int, dilation: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * filters, kernel_size=2, dilation=dilation)
        self.out_channels = channels + filters

    def forward(self, x: Tensor, last: Tensor | None = None):
        """``x`` [B, L, C] -> [B, L, C + filters]. With ``last`` [B, m, C] (m one-step
        continuations of ``x``, each at position L and seeing only ``x`` and itself), also
        returns their outputs [B, m, C + filters]."""
        d = self.dilation
        h = self.conv(F.pad(x.transpose(1, 2), (d, 0))).transpose(1, 2)
        out = torch.cat([x, gated(h)], -1)
        if last is None:
            return out
        w = self.conv.weight  # [2F, C, 2]: tap 0 reads t - d, tap 1 reads t
        h_last = F.linear(last, w[:, :, 1], self.conv.bias)
        if x.shape[1] >= d:  # position L - d exists (else it is the zero padding)
            h_last = h_last + F.linear(x[:, x.shape[1] - d], w[:, :, 0])[:, None]
        return out, torch.cat([last, gated(h_last)], -1)


class TCBlock(nn.Module):
    """Dense blocks with dilations 1, 2, 4, ..., enough to see a whole sequence of ``length``."""

    def __init__(self, channels: int, length: int, filters: int):
        super().__init__()
        blocks = []
        for i in range(max(1, math.ceil(math.log2(length)))):
            blocks.append(DenseBlock(channels, filters, 2 ** i))
            channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels

    def forward(self, x: Tensor, last: Tensor | None = None):
        for block in self.blocks:
            x, last = block(x, last) if last is not None else (block(x), None)
        return x if last is None else (x, last)


class AttentionBlock(nn.Module):
    """Causal single-head attention: position t attends to positions <= t."""

    def __init__(self, channels: int, key_size: int, value_size: int):
        super().__init__()
        self.query = nn.Linear(channels, key_size)
        self.key = nn.Linear(channels, key_size)
        self.value = nn.Linear(channels, value_size)
        self.scale = 1.0 / math.sqrt(key_size)
        self.out_channels = channels + value_size

    def forward(self, x: Tensor, last: Tensor | None = None):
        """As DenseBlock.forward: ``x`` [B, L, C], optional one-step continuations ``last``."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        n = x.shape[1]
        logits = (q @ k.transpose(1, 2)) * self.scale
        future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        read = logits.masked_fill(future, float("-inf")).softmax(-1) @ v
        out = torch.cat([x, read], -1)
        if last is None:
            return out
        ql, kl, vl = self.query(last), self.key(last), self.value(last)
        logits_last = torch.cat([ql @ k.transpose(1, 2), (ql * kl).sum(-1, keepdim=True)], -1)
        p = (logits_last * self.scale).softmax(-1)  # [B, m, L + 1]: the prefix, then itself
        read_last = p[..., :n] @ v + p[..., n:] * vl
        return out, torch.cat([last, read_last], -1)


class SNAILNet(nn.Module):
    """Attention and TC blocks alternating (A, TC, A, ..., A), then a linear layer to logits."""

    def __init__(self, in_channels: int, outputs: int, length: int, filters: int = 128,
                 attention: tuple[tuple[int, int], ...] = PAPER_ATTENTION):
        super().__init__()
        blocks, c = [], in_channels
        for i, (key_size, value_size) in enumerate(attention):
            if i > 0:
                blocks.append(TCBlock(c, length, filters))
                c = blocks[-1].out_channels
            blocks.append(AttentionBlock(c, key_size, value_size))
            c = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(c, outputs)

    def forward(self, x: Tensor, last: Tensor | None = None):
        """``x`` [B, L, C] -> logits [B, L, outputs]; with ``last`` [B, m, C] only the logits of
        the m continuations [B, m, outputs] (each the sequence ``x`` followed by it)."""
        for block in self.blocks:
            x, last = block(x, last) if last is not None else (block(x), None)
        return self.head(x if last is None else last)


def label_sequences(z_support: Tensor, y_support: Tensor, z_query: Tensor,
                    ways: int) -> tuple[Tensor, Tensor]:
    """The support prefix [T, n, D + ways] (embedding, one-hot label) and the query steps
    [T, m, D + ways] (embedding, zero label vector)."""
    onehot = F.one_hot(y_support, ways).to(z_support.dtype)
    blank = z_query.new_zeros(*z_query.shape[:2], ways)
    return torch.cat([z_support, onehot], -1), torch.cat([z_query, blank], -1)


def _positive_int(key: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise ValueError(f"algo.{key}={v} must be a positive integer")
    return v


class SNAIL(MetricLearner):
    any_ways = False  # the output layer has one logit per training way

    def __init__(self, backbone: nn.Module, kind: str, ways: int, shots: int = 1,
                 filters: int = 128, attention: list[list[int]] | None = None,
                 shuffle: bool = True):
        super().__init__(backbone, kind, ways)
        _positive_int("shots", shots)
        _positive_int("filters", filters)
        attention = PAPER_ATTENTION if attention is None else attention
        try:  # lists from YAML arrive as omegaconf ListConfig
            pairs = tuple(tuple(a) for a in attention)
        except TypeError:
            pairs = ()
        if not pairs or any(len(a) != 2 for a in pairs):
            raise ValueError(f"algo.attention={attention} must be a non-empty list of "
                             "[key_size, value_size] pairs")
        for a in pairs:
            for v in a:
                _positive_int("attention", v)
        if not isinstance(shuffle, bool):
            raise ValueError(f"algo.shuffle={shuffle} must be true or false")
        self.shuffle = shuffle
        self.shots = shots
        self.net = SNAILNet(backbone.out_dim + ways, ways, ways * shots + 1, filters, pairs)

    def episode_problems(self, ways: int, support: int) -> list[str]:
        if support != self.ways * self.shots:  # the sequence length sets the TC depth
            return super().episode_problems(ways, support) + [
                f"this SNAIL model reads sequences of {self.ways * self.shots} support "
                f"examples ({self.ways} ways x {self.shots} shots), not {support}"]
        return super().episode_problems(ways, support)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor,
               ways: int) -> Tensor:
        if self.training and self.shuffle:  # a random support order per task
            order = torch.rand(y_support.shape, device=y_support.device).argsort(-1)
            z_support = z_support.gather(1, order[..., None].expand_as(z_support))
            y_support = y_support.gather(1, order)
        prefix, steps = label_sequences(z_support, y_support, z_query, ways)
        return self.net(prefix, steps)
