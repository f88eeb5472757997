"""Safe reading of PyTorch weight files (``torch.load(weights_only=True)`` to CPU).

Kept apart from :mod:`pdfgc.checkpoints` (which builds our networks) so that code needing only
a file of weights (preprocessing's pose network, the metrics' networks) does not import the
model code. :func:`read_state_dict` is re-exported as ``pdfgc.checkpoints.read_state_dict``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .errors import PdfgcError

STRIP_PREFIXES = ("module.", "_orig_mod.")  # DDP / DataParallel and torch.compile wrappers


def strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with the wrapper prefixes of :data:`STRIP_PREFIXES` removed from every key."""
    out = {}
    for key, value in state.items():
        for prefix in STRIP_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _load(path: Path) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad file
        text = " ".join(str(exc).split())
        if "unsupported global" in text.lower():
            reason = "it holds objects other than tensors (refused by safe weights_only loading)"
        else:
            # torch wraps every unpickling failure in a long "Weights only load failed" note:
            # keep only what its unpickler said ("Unsupported operand 110": not a PyTorch file)
            detail = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation")[0].strip()
            reason = f"not a readable PyTorch file ({detail[:160] or type(exc).__name__})"
        raise PdfgcError(f"cannot read checkpoint {path}: {reason}") from exc


def read_state_dict(path: str | os.PathLike, entry: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Read one state_dict file safely (``weights_only``, to CPU), prefixes stripped.

    Args:
        path: the file.
        entry: None for a raw state_dict file; else the key of the file's top-level dict that
            holds the state_dict (e.g. ``"net_recon"`` in Deep3DFaceRecon's ``epoch_20.pth``;
            the file's other entries, such as optimizer states, are ignored).
    Returns:
        ``{name: tensor}``.
    Raises:
        PdfgcError: (one line) the file is missing, unreadable, holds non-tensor objects, lacks
            ``entry``, or is not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise PdfgcError(f"checkpoint file not found: {path}")
    state = _load(path)
    where = f"checkpoint {path}"
    if entry is not None:
        if not isinstance(state, Mapping) or entry not in state:
            found = ", ".join(repr(k) for k in list(state)[:5]) if isinstance(state, Mapping) else type(state).__name__
            raise PdfgcError(f"{where} has no {entry!r} entry (found {found or 'nothing'})")
        state, where = state[entry], f"entry {entry!r} of checkpoint {path}"
    if not isinstance(state, Mapping) or not state:
        raise PdfgcError(f"{where} is not a state_dict (got {type(state).__name__})")
    bad = next((k for k, v in state.items() if not isinstance(k, str) or not torch.is_tensor(v)), None)
    if bad is not None:
        hint = (" (a training checkpoint? export raw state_dicts with export_official)"
                if entry is None and bad in ("state_dict", "epoch", "optimizer_states") else "")
        raise PdfgcError(f"{where} is not a raw state_dict: entry {bad!r} is "
                         f"{type(state[bad]).__name__}, not a tensor{hint}")
    return strip_prefix(state)
