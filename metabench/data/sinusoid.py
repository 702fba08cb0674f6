"""Sinusoid regression: y = A sin(w x - phase) + noise, K support and ``queries`` query points
per task, MSE loss.

The defaults are Finn et al. 2017's task distribution (A ~ U[0.1, 5], phase ~ U[0, pi],
w = 1, x ~ U[-5, 5], no noise), drawn exactly as before these options existed: a frequency
is drawn only from a range that is not one value, noise only when its sd is not 0, both after
A, phase and x. The options give the other papers' variants (methods spec sheet §0.5):
ALPaCA's (noise sd sqrt(0.02), w ~ U[0.999, 1]) and BMAML's harder one (phase ~ U[0, 2 pi],
w ~ U[0.5, 2], noise sd 0.01 A, a finite pool of training tasks, noiseless test queries:
jsikyoon/bmaml data_generator.py)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metabench.episodes import Episode, EpisodeSpec


def _uniform(shape: tuple[int, ...], lo_hi: tuple[float, float],
             generator: torch.Generator) -> Tensor:
    lo, hi = lo_hi
    return torch.rand(shape, generator=generator) * (hi - lo) + lo


class SinusoidSampler:
    """Draws episodes of fresh tasks, or (``pool``: a training split's finite task set) of
    tasks picked from a fixed pool of drawn tasks, each with its own fixed points and noise."""

    def __init__(self, spec: EpisodeSpec, source: Sinusoid, device: torch.device,
                 noisy_queries: bool = True, pool: int = 0):
        self.spec, self.source, self.device = spec, source, device
        self.noisy_queries = noisy_queries
        self.pool = None
        if pool > 0:  # drawn once, from its own seed: the same pool for every run seed
            g = torch.Generator().manual_seed(source.pool_seed)
            self.pool = tuple(t.to(device) for t in self.draw(pool, g))

    def draw(self, tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """x, the noiseless y and the noise, each [tasks, shots + queries, 1]."""
        s = self.source
        amp = _uniform((tasks, 1, 1), s.amplitude, generator)
        phase = _uniform((tasks, 1, 1), s.phase, generator)
        x = _uniform((tasks, self.spec.shots + self.spec.queries, 1), s.x_range, generator)
        lo, hi = s.frequency
        freq = _uniform((tasks, 1, 1), s.frequency, generator) if hi > lo else lo
        y = amp * torch.sin(freq * x - phase)
        sd = s.noise_std + s.noise_per_amplitude * amp
        noise = (torch.randn(x.shape, generator=generator) * sd if s.noisy
                 else torch.zeros_like(x))
        return x, y, noise

    def sample(self, tasks: int, generator: torch.Generator) -> Episode:
        if self.pool is None:
            x, y, noise = (t.to(self.device) for t in self.draw(tasks, generator))
        else:  # BMAML: a batch of distinct pool tasks (repeats only past the pool's size)
            size = self.pool[0].shape[0]
            idx = (torch.randperm(size, generator=generator)[:tasks] if tasks <= size
                   else torch.randint(size, (tasks,), generator=generator))
            x, y, noise = (t[idx.to(self.device)] for t in self.pool)
        k = self.spec.shots
        observed = y + noise
        query_y = observed[:, k:] if self.noisy_queries else y[:, k:]
        return Episode(x[:, :k], observed[:, :k], x[:, k:], query_y, ways=0)


def _pair(key: str, v) -> tuple[float, float]:
    lo, hi = (float(a) for a in v)
    if not lo <= hi:
        raise ValueError(f"data.source.{key}={list(v)} must be a range [low, high], low <= high")
    return lo, hi


class Sinusoid:
    """The task distribution; every split draws from it, the seeds keep val and test fixed.
    ``task_pool`` > 0: training draws from that many fixed tasks, val and test stay fresh."""

    kind = "regression"
    input_shape = (1,)

    def __init__(self, amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0),
                 frequency=(1.0, 1.0), noise_std: float = 0.0, noise_per_amplitude: float = 0.0,
                 task_pool: int = 0, pool_seed: int = 0, eval_query_noise: bool = True):
        self.amplitude = _pair("amplitude", amplitude)
        self.phase = _pair("phase", phase)
        self.x_range = _pair("x_range", x_range)
        self.frequency = _pair("frequency", frequency)
        for key, v in (("noise_std", noise_std), ("noise_per_amplitude", noise_per_amplitude)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"data.source.{key}={v} must be a non-negative number")
        for key, v in (("task_pool", task_pool), ("pool_seed", pool_seed)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"data.source.{key}={v} must be a non-negative integer")
        if not isinstance(eval_query_noise, bool):
            raise ValueError(f"data.source.eval_query_noise={eval_query_noise} must be true "
                             "or false")
        self.noise_std, self.noise_per_amplitude = float(noise_std), float(noise_per_amplitude)
        self.noisy = self.noise_std > 0 or self.noise_per_amplitude > 0
        self.task_pool, self.pool_seed = task_pool, pool_seed
        self.eval_query_noise = eval_query_noise
        self.name = "sinusoid"

    def problems(self, split: str, spec: EpisodeSpec, prefix: str = "data.") -> list[str]:
        return []

    def sampler(self, split: str, spec: EpisodeSpec, device: torch.device,
                channels_last: bool = False) -> SinusoidSampler:
        train = split == "train"
        return SinusoidSampler(spec, self, device, noisy_queries=train or self.eval_query_noise,
                               pool=self.task_pool if train else 0)
