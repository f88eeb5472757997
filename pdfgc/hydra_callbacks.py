"""Hydra callbacks (``hydra.callbacks`` in a config): small set-up steps Hydra runs itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class MakeDirs(Callback):
    """Create folders before a run or sweep starts (e.g. the folder of an Optuna SQLite study,
    which the sweeper opens before any job has made a folder).

    :param dirs: folders to create (parents included)
    """

    def __init__(self, dirs: list[str]) -> None:
        self.dirs = [Path(d) for d in dirs]

    def _make(self) -> None:
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._make()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._make()
