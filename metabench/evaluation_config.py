"""The config a checkpoint is evaluated under: the one saved with it, brought up to date with
keys added since, and ``metabench evaluate``'s overrides merged in."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metabench.errors import ConfigError

OMNIGLOT_SOURCE = "metabench.data.omniglot.load_omniglot"


def evaluation_config(saved: dict, settings: DictConfig,
                      data: DictConfig | None = None) -> DictConfig:
    """The checkpoint's config with the evaluate overrides merged in. It was saved resolved,
    so a ``data.<key>`` override that the data source also takes (``split``,
    ``episode_classes``, ...) is passed on to the source; keys newer than the checkpoint get
    their defaults first. ``data`` (``data=NAME``) replaces the dataset altogether, before
    the ``data.<key>`` overrides."""
    cfg = OmegaConf.create(saved)
    if data is not None:
        cfg.data = data
    if "ensemble_top" not in cfg.get("eval", {}):  # checkpoints from before the key
        cfg.eval.ensemble_top = 0
    source = cfg.data.get("source", {})
    if source.get("_target_") == OMNIGLOT_SOURCE and "episode_classes" not in cfg.data:
        cfg.data.episode_classes = source.episode_classes = "random"
    OmegaConf.set_struct(cfg, True)
    try:
        cfg = OmegaConf.merge(cfg, settings)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override: {str(e).splitlines()[0]}") from None
    for key in settings.get("data", {}):
        if key != "source" and key in cfg.data.get("source", {}):
            cfg.data.source[key] = cfg.data[key]
    return cfg
