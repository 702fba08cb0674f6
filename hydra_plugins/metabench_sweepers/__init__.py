"""metabench's sweepers, defined where Hydra takes plugins from (it instantiates a sweeper only
from the hydra_plugins package); the logic lives in metabench/sweeps.py."""

from __future__ import annotations

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from metabench.sweeps import CheckedLauncher, CheckedSweep


class MetabenchSweeper(CheckedSweep, BasicSweeper):
    """hydra/sweeper=metabench: the basic sweeper, every job checked before the first starts."""


try:  # Optuna is an extra (metabench[sweeps])
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover
    OptunaSweeper = None

if OptunaSweeper is not None:

    class MetabenchOptunaSweeper(OptunaSweeper):
        """hydra/sweeper=metabench_optuna: Optuna, each batch of trials checked before it is
        launched (a bad fixed override or search space: one line each, exit 2, no trial)."""

        def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
            super().setup(hydra_context=hydra_context, task_function=task_function,
                          config=config)
            impl = self.sweeper
            impl.launcher = CheckedLauncher(impl.launcher, hydra_context.config_loader, config)
