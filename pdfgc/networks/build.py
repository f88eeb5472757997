"""Build the networks from a config (``configs/networks/<name>.yaml``) with Hydra instantiation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..errors import PdfgcError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "networks"
PARTS = ("appearance", "motion", "audio", "generator")


class Networks(nn.Module):
    """Container of PD-FGC's networks: ``appearance`` (E_app), ``motion`` (E_mot), ``audio``
    (E_aud), ``generator`` (G) and ``discriminator`` (D, or ``None``).

    An ``nn.Module`` so that ``.to()``, ``.eval()`` and ``state_dict()`` cover all of them.
    """

    def __init__(self, appearance: nn.Module, motion: nn.Module, audio: nn.Module,
                 generator: nn.Module, discriminator: nn.Module | None = None):
        super().__init__()
        self.appearance = appearance
        self.motion = motion
        self.audio = audio
        self.generator = generator
        self.discriminator = discriminator


def load_networks_config(name_or_path: Any = "official"):
    """Return the networks config (an OmegaConf ``DictConfig``).

    ``name_or_path`` is a name under ``configs/networks/`` (``"official"``, ``"small"``), a path
    to a yaml file, or an already-loaded mapping / DictConfig (returned as a DictConfig).
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(name_or_path, DictConfig):
        return name_or_path
    if isinstance(name_or_path, Mapping):
        return OmegaConf.create(dict(name_or_path))
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.suffix not in (".yaml", ".yml") and os.sep not in text and "/" not in text:
        path = CONFIG_DIR / f"{text}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
        raise PdfgcError(f"networks config not found: {path} (known names: {', '.join(names) or 'none'})")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig):
        raise PdfgcError(f"networks config is not a mapping: {path}")
    return cfg


def build_networks(cfg: Any = "official", with_discriminator: bool = False) -> Networks:
    """Instantiate the networks described by ``cfg`` (a name, path, mapping or DictConfig).

    ``cfg`` holds ``appearance``, ``motion``, ``audio``, ``generator`` and optionally
    ``discriminator``, each with a Hydra ``_target_``. ``discriminator`` is built only when
    ``with_discriminator`` is true. Weights are randomly initialised.
    """
    from hydra.utils import instantiate

    cfg = load_networks_config(cfg)
    wanted = PARTS + (("discriminator",) if with_discriminator else ())
    missing = [part for part in wanted if cfg.get(part) is None]
    if missing:
        raise PdfgcError(f"networks config has no entry for: {', '.join(missing)}")
    built = {part: instantiate(cfg[part], _convert_="all") for part in wanted}
    return Networks(**built)
