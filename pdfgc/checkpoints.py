"""Read and write the official PD-FGC checkpoint files (the release's raw state_dict format).

The release ships four files, each a raw ``state_dict`` (no prefix, no wrapper dict):
``appearance_model.pth`` (E_app), ``motion_model.pth`` (E_mot), ``audio_model.pth`` (E_aud) and
``generator_model.pth`` (G). :func:`load_official` applies the release's loading rules to them;
:func:`export_official` writes our networks in the same format, so that the official inference
code (and :func:`load_official`) loads them.

Loading rules (as ``lib/model_builder.py`` of the release):

- appearance: keys containing ``fc`` but not ``model`` (the identity classifier ``fc.*``) are
  skipped and stay as initialised; every other model key must be in the file and the file may
  hold no other key.
- motion: only keys present in both the file and the model are copied; file keys containing
  ``mouth_fc``, ``headpose_fc``, ``classifier``, ``to_feature`` or ``to_embed`` are skipped;
  model keys missing from the file keep their initial value (logged as a warning).
- audio: top-level ``fc.*`` and keys containing ``model.layer4_exp``, ``model.attention_exp``,
  ``model.fc_exp`` or ``exp_embed`` are skipped; strict otherwise.
- generator: every model key (mapping MLP, blur kernels and noise buffers included) must be in
  the file; extra file keys are ignored.

A ``module.`` prefix (files saved from a DDP-wrapped model) is stripped. Every problem raises
:class:`pdfgc.errors.PdfgcError` with one line naming the file, the key and both shapes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import PdfgcError
from .io import atomic_path
from .networks.build import Networks, build_networks
from .state_files import read_state_dict  # noqa: F401 - re-exported: pdfgc.checkpoints.read_state_dict
from .state_files import strip_prefix as _strip_prefix

log = logging.getLogger(__name__)

#: Network attribute -> official file name.
OFFICIAL_FILES = {
    "appearance": "appearance_model.pth",
    "motion": "motion_model.pth",
    "audio": "audio_model.pth",
    "generator": "generator_model.pth",
}

#: What :func:`load_official` returns: a :class:`~pdfgc.networks.Networks` container with
#: ``appearance``, ``motion``, ``audio``, ``generator`` (eval mode) and ``discriminator=None``.
OfficialNetworks = Networks

_MOTION_SKIP = ("mouth_fc", "headpose_fc", "classifier", "to_feature", "to_embed")
_AUDIO_SKIP = ("model.layer4_exp", "model.attention_exp", "model.fc_exp", "exp_embed")


def _is_identity_fc(key: str) -> bool:
    # the release's test: "fc" in key and "model" not in key
    return "fc" in key and "model" not in key


def _skip_appearance(key: str) -> bool:
    return _is_identity_fc(key)


def _skip_motion(key: str) -> bool:
    return any(pattern in key for pattern in _MOTION_SKIP)


def _skip_audio(key: str) -> bool:
    return _is_identity_fc(key) or any(pattern in key for pattern in _AUDIO_SKIP)


def _skip_none(key: str) -> bool:
    return False


# per net: (skip rule, how model keys missing from the file are treated, extra file keys allowed)
_RULES: dict[str, tuple[Callable[[str], bool], str, bool]] = {
    "appearance": (_skip_appearance, "error", False),
    "motion": (_skip_motion, "keep", True),
    "audio": (_skip_audio, "error", False),
    "generator": (_skip_none, "error", True),
}


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if hasattr(t, "shape") else type(t).__name__


def load_official_state(module: nn.Module, part: str, path: str | os.PathLike) -> list[str]:
    """Load one official file into ``module`` with the release's rules for ``part``.

    ``part`` is ``"appearance"``, ``"motion"``, ``"audio"`` or ``"generator"``. Returns the
    model keys that kept their initial values (skipped or absent from the file).
    """
    if part not in _RULES:
        raise ValueError(f"unknown network {part!r}; expected one of {sorted(_RULES)}")
    skip, missing_rule, extra_ok = _RULES[part]
    path = Path(path)
    name = path.name
    file_state = read_state_dict(path)
    model_state = module.state_dict()

    kept: list[str] = []
    new_state = {}
    for key, target in model_state.items():
        if skip(key):
            kept.append(key)
            new_state[key] = target
            continue
        if key not in file_state:
            if missing_rule == "error":
                raise PdfgcError(f"{name}: key {key!r} {_shape(target)} is missing from the file ({path})")
            kept.append(key)
            new_state[key] = target
            continue
        value = file_state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise PdfgcError(f"{name}: key {key!r} has shape {_shape(value)} in the file but "
                             f"{_shape(target)} in the model ({path}); wrong networks config?")
        new_state[key] = value

    if not extra_ok:
        extra = [k for k in file_state if k not in model_state and not skip(k)]
        if extra:
            raise PdfgcError(f"{name}: unexpected key {extra[0]!r} {_shape(file_state[extra[0]])} "
                             f"in the file ({len(extra)} unexpected in all; {path})")
    module.load_state_dict(new_state, strict=True)

    if part == "motion":
        absent = [k for k in kept if not skip(k)]
        if absent:
            log.warning("%s: %d of %d model keys not found in the file keep their initial values "
                        "(first: %s)", name, len(absent), len(model_state), absent[0])
    return kept


def load_official(directory: str | os.PathLike, device: str | torch.device = "cpu",
                  networks_cfg: Any = None) -> Networks:
    """Build the networks and load the four official files from ``directory``.

    Args:
        directory: folder holding ``appearance_model.pth``, ``motion_model.pth``,
            ``audio_model.pth`` and ``generator_model.pth``.
        device: where the networks are moved after loading.
        networks_cfg: networks config (name, path, mapping or DictConfig); default the official
            one (``configs/networks/official.yaml``).

    Returns:
        :data:`OfficialNetworks` with ``appearance``, ``motion``, ``audio``, ``generator`` in
        eval mode (``discriminator`` is ``None``).

    Raises:
        PdfgcError: missing directory or file, unreadable file, missing key or wrong shape.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PdfgcError(f"official checkpoint directory not found: {directory}")
    missing = [f for f in OFFICIAL_FILES.values() if not (directory / f).is_file()]
    if missing:
        raise PdfgcError(f"checkpoint file not found: {directory / missing[0]} "
                         f"(need {', '.join(OFFICIAL_FILES.values())})")
    networks = build_networks(networks_cfg if networks_cfg is not None else "official")
    for part, filename in OFFICIAL_FILES.items():
        load_official_state(getattr(networks, part), part, directory / filename)
    return networks.to(device).eval()


def _unwrap(module: nn.Module) -> nn.Module:
    # DDP / DataParallel (.module) and torch.compile (._orig_mod) wrappers
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def export_official(networks: Any, directory: str | os.PathLike) -> dict[str, Path]:
    """Write ``networks``' appearance, motion, audio and generator as the four official files.

    ``networks`` is a :class:`~pdfgc.networks.Networks` or any object with those four
    attributes. Each file is the module's raw CPU state_dict (no prefix), written atomically;
    for the official config its keys and shapes are exactly the release's. Returns
    ``{part: path}``.
    """
    directory = Path(directory)
    written = {}
    for part, filename in OFFICIAL_FILES.items():
        module = getattr(networks, part, None)
        if not isinstance(module, nn.Module):
            raise PdfgcError(f"export_official: networks has no {part} module")
        state = _strip_prefix(_unwrap(module).state_dict())
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
        target = directory / filename
        with atomic_path(target) as tmp:
            torch.save(state, tmp)
        written[part] = target
    return written
