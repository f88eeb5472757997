"""Small helpers for the entry points: callbacks/loggers from config, the config tree."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pdfgc.io import atomic_write_text

log = logging.getLogger(__name__)


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [hydra.utils.instantiate(entry) for entry in group.values()
            if isinstance(entry, DictConfig) and "_target_" in entry]


def instantiate_callbacks(cfg: DictConfig | None) -> list[Any]:
    """Every entry of the ``callbacks`` group that has a ``_target_``."""
    return _instantiate_group(cfg)


def instantiate_loggers(cfg: DictConfig | None) -> list[Any]:
    """Every entry of the ``logger`` group that has a ``_target_``."""
    return _instantiate_group(cfg)


def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the resolved config as a Rich tree (one branch per group) and save it as text."""
    from rich import print as rprint
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    order = ["data", "model", "networks", "callbacks", "logger", "trainer", "paths", "extras"]
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    text = []
    for key in keys:
        value = cfg[key]
        body = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(key).add(Syntax(body, "yaml"))
        text.append(f"{key}:\n{body}")
    rprint(tree)
    if save_to is not None:
        atomic_write_text(save_to, "\n".join(text))
