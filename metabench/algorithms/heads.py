"""Differentiable closed-form and convex heads on support embeddings, shared by R2-D2 and
MetaOptNet: ridge regression in closed form (Woodbury or standard form) and the
Crammer-Singer multi-class SVM solved in the dual by qpth's batched interior-point solver,
whose backward differentiates the KKT conditions (no unrolled solver iterations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

#: ridge_solve's forms (``auto``: the smaller system)
RIDGE_FORMS = ("auto", "woodbury", "standard")


def ridge_dual(z: Tensor, y: Tensor, lam: Tensor | float) -> Tensor:
    """(z z^T + lam I_n)^-1 y [T, n, c]: ridge's dual coefficients, an n x n system."""
    n = z.shape[-2]
    gram = z @ z.transpose(-1, -2) + lam * torch.eye(n, dtype=z.dtype, device=z.device)
    return torch.linalg.solve(gram, y)


def ridge_solve(z: Tensor, y: Tensor, lam: Tensor | float, form: str = "auto") -> Tensor:
    """argmin_W ||z W - y||^2 + lam ||W||^2 for z [T, n, d], y [T, n, c] -> W [T, d, c].

    ``woodbury``: W = z^T (z z^T + lam I_n)^-1 y, an n x n system (cheap when n <= d, the
    few-shot case); ``standard``: W = (z^T z + lam I_d)^-1 z^T y; ``auto`` picks the smaller
    system, as R2-D2's code does. Both are the same W (tested)."""
    n, d = z.shape[-2:]
    if form == "auto":
        form = "woodbury" if n <= d else "standard"
    if form == "woodbury":
        return z.transpose(-1, -2) @ ridge_dual(z, y, lam)
    if form == "standard":
        gram = z.transpose(-1, -2) @ z + lam * torch.eye(d, dtype=z.dtype, device=z.device)
        return torch.linalg.solve(gram, z.transpose(-1, -2) @ y)
    raise ValueError(f"ridge form {form!r} must be auto, woodbury or standard")


def crammer_singer_qp(kernel: Tensor, y_support: Tensor, ways: int, c: float,
                      jitter: float = 1.0) -> tuple[Tensor, ...]:
    """The Crammer-Singer SVM dual of a task as qpth's (Q, p, G, h, A, b), batched over tasks:

    min_a 1/2 sum_m ||sum_i a_im z_i||^2 - sum_i a_i,y_i  s.t.  a_im <= c [m = y_i],
    sum_m a_im = 0, over a [n, ways] flattened sample-major (a_im at i * ways + m). Q is the
    kernel [T, n, n] Kronecker I_ways, plus ``jitter`` I (MetaOptNet's code adds 1.0 I to keep
    Q positive definite, which also regularises the dual)."""
    tasks, n = kernel.shape[:2]
    eye_w = torch.eye(ways, dtype=kernel.dtype, device=kernel.device)
    q = (kernel[:, :, None, :, None] * eye_w[:, None, :]).reshape(tasks, n * ways, n * ways)
    q = q + jitter * torch.eye(n * ways, dtype=kernel.dtype, device=kernel.device)
    onehot = F.one_hot(y_support, ways).to(kernel.dtype).reshape(tasks, n * ways)
    g = torch.eye(n * ways, dtype=kernel.dtype, device=kernel.device).expand(tasks, -1, -1)
    a = torch.kron(torch.eye(n, dtype=kernel.dtype, device=kernel.device),
                   torch.ones(1, ways, dtype=kernel.dtype, device=kernel.device))
    b = torch.zeros(tasks, n, dtype=kernel.dtype, device=kernel.device)
    return q, -onehot, g, c * onehot, a.expand(tasks, -1, -1), b


def svm_dual(z_support: Tensor, y_support: Tensor, ways: int, c: float = 0.1,
             iterations: int = 15, jitter: float = 1.0) -> Tensor:
    """Dual coefficients a [T, n, ways] of the Crammer-Singer SVM on support embeddings
    [T, n, D] (labels [T, n]), solved in float64 by qpth with ``iterations`` interior-point
    steps (MetaOptNet: 15 in training, 3 at test); differentiable in the embeddings."""
    from qpth.qp import QPFunction  # an optional dependency: pip install metabench[metaoptnet]

    z = z_support.double()
    qp = crammer_singer_qp(z @ z.transpose(1, 2), y_support, ways, c, jitter)
    q, p, g, h, a, b = qp
    alpha = QPFunction(verbose=-1, maxIter=iterations)(q, p.detach(), g.detach(), h.detach(),
                                                       a.detach(), b.detach())
    return alpha.view(z.shape[0], -1, ways).to(z_support.dtype)
