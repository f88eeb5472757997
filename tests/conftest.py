"""Shared fixtures: Hydra composition of the training config for cheap CPU runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"
os.environ.setdefault("PROJECT_ROOT", str(REPO_ROOT))

# Two cores are shared by everything on this machine; one intra-op thread per test process
# avoids oversubscription (and keeps float results reproducible across runs).
torch.set_num_threads(1)


def compose_train(overrides: list[str], output_dir: Path):
    """The ``train.yaml`` config with ``overrides``, its outputs under ``output_dir``.

    Loggers off, progress bar off, data loading in-process: what every training test wants.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                *overrides,
                f"paths.output_dir={output_dir}",
                "~logger",
                "extras.print_config=false",
                "data.num_workers=0",
                "+trainer.enable_progress_bar=false",
            ],
        )
    return cfg


@pytest.fixture
def train_config(tmp_path):
    """Factory: ``train_config(["experiment=synthtalk/stage1", ...])`` -> composed DictConfig."""

    def make(overrides: list[str], subdir: str = "run"):
        return compose_train(overrides, tmp_path / subdir)

    return make
