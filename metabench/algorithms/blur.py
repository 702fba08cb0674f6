"""BLUR: meta-learned bidirectional update rules (Sandler et al., ICML 2021; official code
google-research/google-research ``blur/``, read for these equations). Every neuron holds K
states; each layer pair has a forward synapse block Wf [in+1, out, K] (a bias row whose K
states are 1) and a separate backward block Wb [out, in, K]. The synapses are the inner-loop
weights and never see a gradient; only the genome is meta-learned: neuron mixing F, G (K x K),
neuron keep/update, Hebbian projections A, B (K x K), synapse keep and update (init -1e-3).

One inner step on the support batch: neuron states reset to 0; the input into state 0; a
forward sweep u_j = sum_i sum_k x~_ik F_kl Wf_ijl, a <- act(keep a + update u) (hidden
relu(tanh), last layer tanh); the raw +-1 one-hot target written into state 1 of the output
layer; a backward sweep through Wb with G that never touches the input layer; then per synapse
channel o, dS_pqo = sum_b (z_p A)_o (B z_q)_o (batch summed; the backward block with pre and
post swapped) and S <- keep_s S + update_s dS. Predictions are state 0 of the output layer
after a forward-only pass; the meta-loss is their MSE against the query targets.

``genome=gradient`` is the hand-set genome that is exactly a gradient step of
sum_b 1/2 |y_hat - y|^2 (K = 2, per-layer genomes, hidden tanh with its derivative in state 1,
a linear output, the backward sweep multiplying state 1, Wb tied to Wf's transpose):
``learn=rate`` meta-learns only its step size (the sanity check that must track SGD).
CMA-ES (the paper's other outer optimiser) is not offered: it does not fit the one loop."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metabench.algorithms.arguments import require
from metabench.algorithms.scratch import ScratchLearner, pm_one
from metabench.episodes import Episode

ACTIVATIONS = {
    "relu_tanh": lambda a: torch.relu(torch.tanh(a)),
    "tanh": torch.tanh,
    "linear": lambda a: a,
    # state 0 the activation, state 1 its derivative at state 1's input (the gradient genome)
    "tanh_grad": lambda a: torch.stack([torch.tanh(a[..., 0]),
                                        1 - torch.tanh(a[..., 1]) ** 2], -1),
}
BACKWARD = ("additive", "multiplicative")
GENOMES = ("random", "gradient")
LEARN = ("all", "rate")


def gradient_genome(layers: int) -> dict[str, Tensor]:
    """Per-layer-pair genome [layers, ...] of one backprop step (K = 2): F and A copy state 0
    to both channels; the last pair's G sends y - y_hat back, its B forms y_hat - y, the other
    pairs pass state 1 on (G) and negate it (B), so dS is the loss gradient and
    synapse_update = -lr (negative, as the paper's init)."""
    f = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).repeat(layers, 1, 1)
    g = torch.eye(2).repeat(layers, 1, 1)
    a = f.clone()
    b = torch.tensor([[0.0, -1.0], [0.0, -1.0]]).repeat(layers, 1, 1)
    g[-1] = torch.tensor([[1.0, -1.0], [0.0, 1.0]])
    b[-1] = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    ones = torch.ones(layers)
    return {"F": f, "G": g, "A": a, "B": b, "neuron_keep": ones, "neuron_update": ones.clone(),
            "synapse_keep": ones.clone()}


class BLUR(ScratchLearner):
    kinds = ("classification",)

    def __init__(self, backbone: nn.Module, kind: str, ways: int, states: int = 2,
                 per_layer: bool = False, genome: str = "random", learn: str = "all",
                 hidden_activation: str = "relu_tanh", output_activation: str = "tanh",
                 backward: str = "additive", symmetric: bool = False,
                 synapse_update_init: float = -1e-3, **kwargs):
        kwargs.setdefault("loss", "mse")
        super().__init__(backbone, kind, ways, **kwargs)
        require("a positive integer", states=states)
        require("true or false", per_layer=per_layer, symmetric=symmetric)
        for key, v, options in (("genome", genome, GENOMES), ("learn", learn, LEARN),
                                ("hidden_activation", hidden_activation, ACTIVATIONS),
                                ("output_activation", output_activation, ACTIVATIONS),
                                ("backward", backward, BACKWARD)):
            if v not in options:
                raise ValueError(f"algo.{key}={v} is not one of: {', '.join(options)}")
        pairs = len(self.widths) + 1
        if genome == "gradient":
            if states != 2:
                raise ValueError("algo.genome=gradient needs algo.states=2")
            per_layer, symmetric, backward = True, True, "multiplicative"
            hidden_activation, output_activation = "tanh_grad", "linear"
            init = gradient_genome(pairs)
        else:
            n, k = pairs if per_layer else 1, states
            init = {"F": torch.randn(n, k, k), "G": torch.randn(n, k, k),
                    "A": torch.randn(n, k, k), "B": torch.randn(n, k, k),
                    "neuron_keep": torch.ones(n), "neuron_update": torch.ones(n),
                    "synapse_keep": torch.ones(n)}
        # stored in units of |synapse_update_init|: an outer step of Adam moves the rate by a
        # fraction of itself, not by its whole size (at lr 1e-3 it flipped sign every step)
        self.rate_unit = abs(float(synapse_update_init)) or 1.0
        init["synapse_update"] = torch.full((len(init["F"]),),
                                            float(synapse_update_init) / self.rate_unit)
        self.genome = nn.ParameterDict({k: nn.Parameter(v) for k, v in init.items()})
        if learn == "rate":
            for name, p in self.genome.items():
                p.requires_grad_(name == "synapse_update")
        self.k, self.gene_kind, self.backward_mode, self.symmetric = (
            states, genome, backward, symmetric)
        self.hidden_act = ACTIVATIONS[hidden_activation]
        self.output_act = ACTIVATIONS[output_activation]

    def gene(self, name: str, pair: int) -> Tensor:
        g = self.genome[name]
        g = g[pair if len(g) > 1 else 0]
        return g * self.rate_unit if name == "synapse_update" else g

    def fresh_synapses(self, episode: Episode) -> tuple[list[Tensor], list[Tensor]]:
        """Wf [T, in+1, out, K] (the bias row last) and Wb [T, out, in, K] per layer pair, every
        entry U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as the MLP arms' weights; channel 0 of Wf is
        the very MLP those arms start from (the gradient genome: every channel)."""
        p = self.fresh(episode)
        wf, wb = [], []
        for j in range(len(p) // 2):
            w = torch.cat([p[f"w{j}"], p[f"b{j}"][:, None]], 1)[..., None]
            t, rows, out, _ = w.shape
            if self.gene_kind == "gradient":
                wf.append(w.expand(t, rows, out, self.k).clone())
            else:
                bound = (rows - 1) ** -0.5
                more = w.new_empty(t, rows, out, self.k - 1).uniform_(-bound, bound)
                wf.append(torch.cat([w, more], -1))
            wb.append(w.new_empty(t, out, rows - 1, self.k).uniform_(-out ** -0.5, out ** -0.5))
        return wf, wb

    def with_bias(self, a: Tensor) -> Tensor:
        return torch.cat([a, a.new_ones(*a.shape[:2], 1, a.shape[-1])], 2)

    def forward_sweep(self, wf: list[Tensor], x: Tensor) -> list[Tensor]:
        """Neuron states [T, n, N_l, K] per layer after resetting and the forward sweep."""
        x = x.flatten(2).to(wf[0].dtype)
        a = [torch.stack([x] + [torch.zeros_like(x)] * (self.k - 1), -1)]
        for j, w in enumerate(wf):
            mixed = self.with_bias(a[j]) @ self.gene("F", j)
            u = torch.einsum("tbil,tijl->tbjl", mixed, w)
            act = self.output_act if j == len(wf) - 1 else self.hidden_act
            a.append(act(self.gene("neuron_update", j) * u))  # keep x 0: states were reset
        return a

    def backward_sweep(self, wf: list[Tensor], wb: list[Tensor], a: list[Tensor]) -> None:
        """Post -> pre through Wb with G, from the last pair down; the input layer is kept."""
        for j in range(len(wf) - 1, 0, -1):
            back = wf[j][:, :-1].transpose(1, 2) if self.symmetric else wb[j]
            v = torch.einsum("tbjl,tjil->tbil", a[j + 1] @ self.gene("G", j), back)
            keep, upd = self.gene("neuron_keep", j), self.gene("neuron_update", j)
            if self.backward_mode == "multiplicative":  # state 1 <- state 1 x v_1
                a[j] = torch.cat([a[j][..., :1], keep * a[j][..., 1:2] * v[..., 1:2],
                                  a[j][..., 2:]], -1)
            else:
                a[j] = self.hidden_act(keep * a[j] + upd * v)

    def hebbian(self, pre: Tensor, post: Tensor, pair: int) -> Tensor:
        """dS_pqo = sum_b (pre_p A)_o (B post_q)_o: [T, P, Q, K] for states [T, n, P|Q, K]."""
        return torch.einsum("tbpo,tbqo->tpqo", pre @ self.gene("A", pair),
                            post @ self.gene("B", pair).T)

    def step(self, wf: list[Tensor], wb: list[Tensor], x: Tensor, target: Tensor
             ) -> tuple[list[Tensor], list[Tensor]]:
        """One inner step on a batch: new synapse blocks."""
        a = self.forward_sweep(wf, x)
        out = a[-1]
        a[-1] = torch.cat([out[..., :1], target[..., None], torch.zeros_like(out[..., 2:])], -1)
        self.backward_sweep(wf, wb, a)
        new_f, new_b = [], []
        for j, (f, b) in enumerate(zip(wf, wb, strict=True)):
            keep, upd = self.gene("synapse_keep", j), self.gene("synapse_update", j)
            new_f.append(keep * f + upd * self.hebbian(self.with_bias(a[j]), a[j + 1], j))
            new_b.append(b if self.symmetric else
                         keep * b + upd * self.hebbian(a[j + 1], a[j], j))
        return new_f, new_b

    def predictions(self, wf: list[Tensor], x: Tensor) -> Tensor:
        return self.forward_sweep(wf, x)[-1][..., 0]

    def trajectory(self, episode: Episode, steps: int, record: set[int]) -> dict[int, Tensor]:
        wf, wb = self.fresh_synapses(episode)
        target = pm_one(episode.y_support, episode.ways, wf[0].dtype)
        outs = {0: self.predictions(wf, episode.x_query)} if 0 in record else {}
        for t in range(1, steps + 1):
            wf, wb = self.step(wf, wb, episode.x_support, target)
            if t in record:
                outs[t] = self.predictions(wf, episode.x_query)
        return outs
