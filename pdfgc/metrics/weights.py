"""User-given weight files of the metric networks (nothing is downloaded): one check and one
safe reader, so every metric names a missing or wrong file the same way."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from pdfgc.errors import PdfgcError


def read_user_weights(path: str | os.PathLike | None, what: str, option: str,
                      source: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """``(path, state_dict)`` of the ``what`` weights set by the config ``option``.

    Raises :class:`PdfgcError` (one line naming ``option`` / the file and where the file comes
    from, ``source``) when the path is unset, missing, unreadable or not a raw state_dict
    (read ``weights_only`` by :func:`pdfgc.checkpoints.read_state_dict`).
    """
    from pdfgc.checkpoints import read_state_dict

    if not path:
        raise PdfgcError(f"{what} needs weights: set {option}=<path to {source}>")
    path = Path(path)
    if not path.is_file():
        raise PdfgcError(f"{what} weights not found: {path} ({source})")
    return path, read_state_dict(path)
