"""Sinusoid regression (Finn et al. 2017): y = A sin(x - phase), A ~ U[0.1, 5], phase ~ U[0, pi],
x ~ U[-5, 5]; K support points and ``queries`` query points per task, MSE loss."""

from __future__ import annotations

import math

import torch

from metabench.episodes import Episode, EpisodeSpec


class SinusoidSampler:
    def __init__(self, spec: EpisodeSpec, amplitude: tuple[float, float],
                 phase: tuple[float, float], x_range: tuple[float, float], device: torch.device):
        self.spec, self.amplitude, self.phase, self.x_range = spec, amplitude, phase, x_range
        self.device = device

    def sample(self, tasks: int, generator: torch.Generator) -> Episode:
        def uniform(shape, lo_hi):
            lo, hi = lo_hi
            return torch.rand(shape, generator=generator) * (hi - lo) + lo

        amp = uniform((tasks, 1, 1), self.amplitude)
        phase = uniform((tasks, 1, 1), self.phase)
        x = uniform((tasks, self.spec.shots + self.spec.queries, 1), self.x_range)
        y = amp * torch.sin(x - phase)
        x, y = x.to(self.device), y.to(self.device)
        k = self.spec.shots
        return Episode(x[:, :k], y[:, :k], x[:, k:], y[:, k:], ways=0)


class Sinusoid:
    """The task distribution; every split draws from it, the seeds keep val and test fixed."""

    kind = "regression"
    input_shape = (1,)

    def __init__(self, amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0)):
        self.amplitude = tuple(float(v) for v in amplitude)
        self.phase = tuple(float(v) for v in phase)
        self.x_range = tuple(float(v) for v in x_range)
        self.name = "sinusoid"

    def problems(self, split: str, spec: EpisodeSpec, prefix: str = "data.") -> list[str]:
        return []

    def sampler(self, split: str, spec: EpisodeSpec, device: torch.device,
                channels_last: bool = False) -> SinusoidSampler:
        return SinusoidSampler(spec, self.amplitude, self.phase, self.x_range, device)
