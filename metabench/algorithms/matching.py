"""Matching Networks (Vinyals et al. 2016): a query's class distribution is the attention-weighted
sum of the support labels' one-hots, the attention a softmax over cosine similarities between
the query and each support embedding; trained by the negative log-likelihood of the true class.

With ``fce=true`` the embeddings are full context embeddings (the paper's appendix): each support
embedding is re-read by a bidirectional LSTM over the support set, and each query embedding is
refined by an LSTM that attends over those support embeddings for ``fce_steps`` steps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metabench.algorithms.metric import MetricLearner
from metabench.episodes import Episode

#: probabilities are clamped here before the log: a class no support item attends to is no NaN
MIN_PROB = 1e-8


def attention(z_query: Tensor, z_support: Tensor, normalize_query: bool = True) -> Tensor:
    """a(x_q, x_i) [T, m, n]: softmax over the support items of the cosine similarities between
    query [T, m, D] and support [T, n, D] embeddings. ``normalize_query=False`` leaves the query
    unnormalised, so its length acts as a learned inverse temperature of the softmax."""
    q = F.normalize(z_query, dim=-1) if normalize_query else z_query
    return (q @ F.normalize(z_support, dim=-1).transpose(1, 2)).softmax(-1)


def class_probs(att: Tensor, y_support: Tensor, ways: int) -> Tensor:
    """sum_i a_i onehot(y_i): each query's class distribution [T, m, ways]."""
    return att @ F.one_hot(y_support, ways).to(att.dtype)


class FullContextEmbedding(nn.Module):
    """g: support embeddings through a bidirectional LSTM with a skip connection,
    g(x_i) = fw_i + bw_i + g'(x_i). f: the attention LSTM, K steps of
    h^_k, c_k = LSTM(f'(x), [h_{k-1}, r_{k-1}], c_{k-1}); h_k = h^_k + f'(x);
    r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i); f(x) = h_K.

    The read-out r enters the cell as extra input rather than as extra hidden state: the gate
    pre-activations are the same linear function of (f'(x), h, r) either way, and the cell's
    state keeps the embedding's width D, which the skip connection needs."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.steps = steps
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_cell = nn.LSTMCell(2 * dim, dim)

    def support(self, z_support: Tensor) -> Tensor:
        """g(S) [T, n, D] from g'(S) [T, n, D], the support set read as a sequence."""
        out, _ = self.support_lstm(z_support)
        fw, bw = out.chunk(2, dim=-1)
        return fw + bw + z_support

    def query(self, z_query: Tensor, g_support: Tensor) -> Tensor:
        """f(x) [T, m, D] from f'(x) [T, m, D], attending over g(S) [T, n, D]."""
        t, m, d = z_query.shape
        x = z_query.reshape(t * m, d)
        h = torch.zeros_like(x)
        c = torch.zeros_like(x)
        for _ in range(self.steps):
            read = (h.view(t, m, d) @ g_support.transpose(1, 2)).softmax(-1) @ g_support
            h_hat, c = self.query_cell(torch.cat([x, read.reshape(t * m, d)], -1), (h, c))
            h = h_hat + x
        return h.view(t, m, d)

    def forward(self, z_support: Tensor, z_query: Tensor) -> tuple[Tensor, Tensor]:
        g = self.support(z_support)
        return g, self.query(z_query, g)


class MatchingNet(MetricLearner):
    def __init__(self, backbone: nn.Module, kind: str, ways: int, fce: bool = False,
                 fce_steps: int = 5, normalize_query: bool = True):
        super().__init__(backbone, kind, ways)
        for key, v in (("fce", fce), ("normalize_query", normalize_query)):
            if not isinstance(v, bool):
                raise ValueError(f"algo.{key}={v} must be true or false")
        self.normalize_query = normalize_query
        if isinstance(fce_steps, bool) or not isinstance(fce_steps, int) or fce_steps <= 0:
            raise ValueError(f"algo.fce_steps={fce_steps} must be a positive integer")
        self.fce = FullContextEmbedding(backbone.out_dim, fce_steps) if fce else None

    def embed(self, episode: Episode) -> tuple[Tensor, Tensor]:
        zs, zq = super().embed(episode)
        return (zs, zq) if self.fce is None else self.fce(zs, zq)

    def logits(self, z_support: Tensor, y_support: Tensor, z_query: Tensor, ways: int) -> Tensor:
        """Log class probabilities: cross-entropy on them is the NLL of the distribution."""
        probs = class_probs(attention(z_query, z_support, self.normalize_query), y_support, ways)
        return probs.clamp_min(MIN_PROB).log()
