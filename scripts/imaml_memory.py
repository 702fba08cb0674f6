"""What one training step's autograd graph holds for the backward, iMAML against second-order
MAML, as the inner step count grows (Omniglot 5-way 1-shot shapes, MAML's strided Conv-4,
one task): iMAML's stays flat (nothing is backpropagated through its inner loop), MAML's grows
with every step. Also the peak resident memory of the process after each size.

    python scripts/imaml_memory.py --steps 1,4,16,32
"""

from __future__ import annotations

import argparse
import resource

import torch

from metabench.algorithms.imaml import IMAML
from metabench.algorithms.maml import MAML
from metabench.backbones.conv4 import Conv4
from metabench.episodes import Episode
from metabench.memory import graph_saved_bytes


def episode(ways: int = 5, shots: int = 1, queries: int = 5) -> Episode:
    g = torch.Generator().manual_seed(0)
    ys = torch.arange(ways).repeat_interleave(shots)[None]
    yq = torch.arange(ways).repeat_interleave(queries)[None]
    return Episode(torch.rand(1, ways * shots, 1, 28, 28, generator=g), ys,
                   torch.rand(1, ways * queries, 1, 28, 28, generator=g), yq, ways)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="1,4,16,32")
    args = ap.parse_args()
    ep = episode()
    print(f"{'inner steps':>11} {'iMAML graph MB':>15} {'MAML graph MB':>14} {'peak RSS MB':>12}")
    for steps in (int(s) for s in args.steps.split(",")):
        sizes = []
        for cls in (IMAML, MAML):
            torch.manual_seed(0)
            net = Conv4((1, 28, 28), downsample="stride", readout="mean")
            learner = cls(net, "classification", 5, inner_lr=0.1, inner_steps=steps)
            sizes.append(graph_saved_bytes(learner(ep)[0]) / 2**20)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{steps:>11} {sizes[0]:>15.2f} {sizes[1]:>14.2f} {peak:>12.0f}")


if __name__ == "__main__":
    main()
