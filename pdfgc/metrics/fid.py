"""FID through torchmetrics' ``FrechetInceptionDistance`` with Inception weights from a local file.

No package ships the FID Inception weights (``shared/reference/metrics.md`` §2): the user gives
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity) or pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``; nothing is downloaded. The resize to 299 is fixed to
torch-fidelity's TF1-compatible bilinear (``antialias=False``), the rule of the published FID
implementations; torchmetrics' own default (antialiased) gives other numbers, so the rule is
recorded beside every FID figure (``fid_resize``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from pdfgc.errors import PdfgcError
from pdfgc.metrics.weights import read_user_weights

__all__ = ["RESIZE_RULES", "build_fid", "check_inception_weights", "fid_from_features", "fid_images"]

#: ``antialias`` flag of torchmetrics' Inception -> the name recorded in reports.
RESIZE_RULES = {False: "tf1-bilinear (torch-fidelity)", True: "antialiased-bilinear (torchmetrics default)"}


def check_inception_weights(path: str | os.PathLike | None) -> Path:
    """The weights file, checked: it exists and is a plain tensor state_dict.

    torch-fidelity reads it with ``weights_only=False``; reading it first with
    ``weights_only=True`` refuses a file that would run code, with a one-line error.
    """
    path, state = read_user_weights(path, "FID Inception", "metrics.fid.weights",
                                    "weights-inception-2015-12-05-6726825d.pth, torch-fidelity / pytorch-fid release")
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise PdfgcError(f"{path} is not an InceptionV3 state_dict (expected the FID release, fc with 1008 outputs)")
    return path


def build_fid(weights: str | os.PathLike | None, feature: int = 2048,
              antialias: bool = False) -> FrechetInceptionDistance:
    """A torchmetrics FID (DDP-safe sums) over uint8 images ``(N, 3, H, W)``.

    Args:
        weights: the Inception file (see module doc); loaded strictly by torch-fidelity.
        feature: 64 | 192 | 768 | 2048 (2048 is the standard FID; 64 is cheap, for tests).
        antialias: the resize rule (see :data:`RESIZE_RULES`); keep ``False`` to compare with papers.
    """
    path = check_inception_weights(weights)
    try:
        return FrechetInceptionDistance(feature=int(feature), feature_extractor_weights_path=str(path),
                                        antialias=bool(antialias), reset_real_features=True)
    except RuntimeError as exc:  # strict load_state_dict: wrong architecture
        raise PdfgcError(f"{path} does not fit torch-fidelity's InceptionV3: {str(exc).splitlines()[0]}") from exc


def fid_images(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 RGB (numpy) -> ``(T, 3, H, W)`` uint8, the FID input."""
    x = torch.as_tensor(np.asarray(frames))
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {tuple(x.shape)} {x.dtype}")
    return x.permute(0, 3, 1, 2).contiguous()


class _GivenFeatures(torch.nn.Module):
    """Feature 'extractor' for features computed earlier: ``(N, D, 1, 1)`` -> ``(N, D)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double()


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID of two sets of Inception features ``(N, D)`` / ``(M, D)`` (cached per clip by the
    evaluation), through torchmetrics' accumulation and ``compute``; NaN with < 2 samples a side."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    dim = real.shape[1]
    metric = FrechetInceptionDistance(feature=_GivenFeatures(dim), input_img_size=(dim, 1, 1))
    metric.update(torch.from_numpy(real).reshape(-1, dim, 1, 1), real=True)
    metric.update(torch.from_numpy(fake).reshape(-1, dim, 1, 1), real=False)
    return float(metric.compute())
