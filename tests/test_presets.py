"""Every shipped experiment preset composes, passes the static checks and runs the setting its
name promises (``paper/<algo>_omniglot_<W>w<S>s``; ``quick/<algo>_omniglot[_<W>w<S>s]``, 5-way
1-shot unless the name says otherwise) under its paper's protocol; the old flat names are
aliases of the grouped ones; every algorithm x data pair composes to its documented defaults
or is refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONFIGS = Path(__file__).parents[1] / "configs"
EXPERIMENTS = CONFIGS / "experiment"
PRESETS = sorted(f"{g}/{p.stem}" for g in ("paper", "quick")
                 for p in (EXPERIMENTS / g).glob("*.yaml"))
ALIASES = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
ALGOS = sorted(p.stem for p in (CONFIGS / "algo").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))
PAIRS = {p.stem for p in (CONFIGS / "algo_data").glob("*.yaml")}

# the protocol each family's reference code evaluates with (backbone.norm, transductive)
PROTOCOL = {"protonet": "running", "baseline": "running", "relation": "batch",
            "matching": "batch", "snail": "batch", "maml": "batch", "metasgd": "batch",
            "anil": "batch", "reptile": "batch", "versa": "batch", "platipus": "batch",
            "bmaml": "batch", "r2d2": "running", "metaoptnet": "running",
            "cavia": "batch", "mamlpp": "batch", "imaml": "batch", "alphamaml": "batch",
            "imp": "running", "siamese": "running", "mann": "none",
            "metanet": "running", "metalstm": "batch"}
PAPER_EPISODES = {"protonet": 1000, "relation": 1000, "reptile": 10000, "r2d2": 10000,
                  "metaoptnet": 1000}


def promised_setting(name: str) -> tuple[str, str, int, int] | None:
    """(group, algo, ways, shots) the name promises; None for presets without a few-shot
    setting."""
    m = re.fullmatch(r"(paper|quick)/([a-z0-9]+)_omniglot(?:_(\d+)w(\d+)s)?", name)
    if m is None:
        return None
    group, algo, ways, shots = m.groups()
    return group, algo, int(ways or 5), int(shots or 1)


def test_presets_found():
    assert len(PRESETS) >= 50 and "quick/maml_omniglot_20w1s" in PRESETS
    assert "paper/protonet_omniglot_5w1s" in PRESETS and "paper/maml_sinusoid" in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_as_named_with_its_papers_protocol(cfg_factory, name):
    from metabench import run

    cfg = cfg_factory(f"experiment={name}", "logger=none")
    assert run.check_static(cfg) == []
    promised = promised_setting(name)
    if promised is None:
        return
    group, algo, ways, shots = promised
    assert (cfg.algo.name, cfg.data.name) == (algo, "omniglot")
    assert (cfg.data.ways, cfg.data.shots) == (ways, shots)
    assert cfg.backbone.get("norm", "none") == PROTOCOL[algo]  # mlp: no norm layers
    assert cfg.eval.episodes == (PAPER_EPISODES.get(algo, 600) if group == "paper" else 600)
    assert "# Protocol:" in (EXPERIMENTS / f"{name}.yaml").read_text()


@pytest.mark.parametrize("alias", ALIASES)
def test_flat_names_are_aliases_of_the_grouped_presets(cfg_factory, alias):
    target = re.search(r"^  - ((?:paper|quick)/\w+)$",
                       (EXPERIMENTS / f"{alias}.yaml").read_text(), re.M).group(1)
    a = cfg_factory(f"experiment={alias}", "logger=none")
    b = cfg_factory(f"experiment={target}", "logger=none")
    assert OmegaConf.to_container(a) == OmegaConf.to_container(b)


def _algo_kinds(cfg) -> tuple[str, ...]:
    from hydra.utils import get_class

    return get_class(cfg.algo._target_).kinds


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_data_pair_has_its_defaults_or_one_line(cfg_factory, algo):
    """A pair with an algo_data file carries its values (an override still wins); any other
    pair carries the algorithm's own defaults untouched; a pair the algorithm cannot do is
    one line from the static checks."""
    from metabench import run

    # the algorithm's own defaults: composed with a data set it has no pair file for
    bare = next(d for d in DATA if f"{algo}_{d}" not in PAIRS)
    plain = OmegaConf.to_container(cfg_factory(f"algo={algo}", f"data={bare}"), resolve=False)
    for data in DATA:
        cfg = cfg_factory(f"algo={algo}", f"data={data}")
        problems = run.check_static(cfg)
        if cfg.data.kind not in _algo_kinds(cfg):
            assert problems == [f"algo={algo} does not handle {cfg.data.kind} data "
                                f"(data={data})"], (algo, data)
            continue
        assert problems == [], (algo, data, problems)
        pair = f"{algo}_{data}"
        if pair in PAIRS:
            values = OmegaConf.load(CONFIGS / "algo_data" / f"{pair}.yaml")
            if "defaults" in values:  # e.g. fomaml_sinusoid: maml_sinusoid's values
                values = OmegaConf.load(CONFIGS / "algo_data" /
                                        f"{values.defaults[0]}.yaml")
            for section in ("algo", "train"):
                for k, v in values.get(section, {}).items():
                    assert cfg[section][k] == v, (pair, section, k)
            override = cfg_factory(f"algo={algo}", f"data={data}", "train.iterations=7")
            assert override.train.iterations == 7
        else:
            got = OmegaConf.to_container(cfg, resolve=False)
            assert got["algo"] == plain["algo"] and got["train"] == plain["train"], (algo, data)
        if cfg.data.kind == "regression":
            assert cfg.backbone.name == "mlp"  # vectors, not images


@pytest.mark.parametrize("algo", sorted(p.removesuffix("_sinusoid") for p in PAIRS
                                       if p.endswith("_sinusoid")))
def test_every_sinusoid_default_applies_to_the_harder_variant(cfg_factory, algo):
    plain = cfg_factory(f"algo={algo}", "data=sinusoid", "logger=none")
    harder = cfg_factory(f"algo={algo}", "data=sinusoid_bmaml", "logger=none")
    assert harder.data.name == "sinusoid_bmaml"
    assert harder.algo == plain.algo and harder.train == plain.train, algo
    assert harder.backbone == plain.backbone, algo


def test_maml_on_sinusoid_gets_the_papers_settings(cfg_factory):
    cfg = cfg_factory("algo=maml", "data=sinusoid")
    assert cfg.backbone.name == "mlp" and list(cfg.backbone.hidden) == [40, 40]
    assert (cfg.algo.inner_lr, cfg.algo.inner_steps, cfg.algo.eval_inner_steps,
            cfg.train.meta_batch) == (0.01, 1, 10, 25)
    explicit = cfg_factory("algo=maml", "data=sinusoid", "algo.inner_lr=0.1", "backbone=conv4")
    assert explicit.algo.inner_lr == 0.1 and explicit.backbone.name == "conv4"
