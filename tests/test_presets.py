"""Every shipped experiment preset composes, passes the static checks and runs the setting
its file name promises (``<algo>_<data>_<W>w<S>s``; the ``quick_<algo>_omniglot`` budget
presets are 5-way 1-shot unless the name says otherwise)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment")
                 .glob("*.yaml"))


def promised_setting(name: str) -> tuple[str, int, int] | None:
    """(algo, ways, shots) the name promises; None for presets without a few-shot setting."""
    m = re.fullmatch(r"(?:quick_)?([a-z0-9]+)_omniglot(?:_(\d+)w(\d+)s)?", name)
    if m is None:
        return None
    algo, ways, shots = m.groups()
    return algo, int(ways or 5), int(shots or 1)


def test_presets_found():
    assert len(PRESETS) >= 40 and "quick_maml_omniglot_20w1s" in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_as_named(cfg_factory, name):
    from metabench import run

    cfg = cfg_factory(f"experiment={name}", "logger=none")
    assert run.check_static(cfg) == []
    promised = promised_setting(name)
    if promised is None:
        return
    algo, ways, shots = promised
    assert (cfg.algo.name, cfg.data.name) == (algo, "omniglot")
    assert (cfg.data.ways, cfg.data.shots) == (ways, shots)
