"""Same/different pairs from sampled episodes, for verification learners (Siamese networks):
every query paired with every support example of its task. The episode sampler already draws
from the uint8 cache on the device, so pairs cost no extra image reads; which classes a task
holds (random, or one alphabet with ``data.episode_classes=within_alphabet``) decides where
the negatives come from."""

from __future__ import annotations

from torch import Tensor


def pair_targets(y_query: Tensor, y_support: Tensor) -> Tensor:
    """[T, m] x [T, n] labels -> [T, m, n] booleans: whether query i and support j match."""
    return y_query[:, :, None] == y_support[:, None]


def pair_weights(same: Tensor) -> Tensor:
    """Weights [T, m, n] that make positives and negatives count equally, each half summing
    to 0.5 per task (the paper samples pairs 50/50); a task without negatives (one way) gives
    its positives the whole weight."""
    pos = same.float()
    neg = 1.0 - pos
    n_pos = pos.sum((1, 2), keepdim=True).clamp_min(1.0)
    n_neg = neg.sum((1, 2), keepdim=True)
    half = (n_neg > 0).float() * 0.5 + (n_neg == 0).float()
    return half * pos / n_pos + 0.5 * neg / n_neg.clamp_min(1.0)
