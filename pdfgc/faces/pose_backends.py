"""Pose label backends behind one interface (``pose_backend`` of preprocessing).

* ``landmarks``: solvePnP of the 68 landmarks against a generic 3D face
  (:func:`pdfgc.faces.pose.head_pose`); no weights, CPU.
* ``deep3d``: Deep3DFaceRecon's reconstruction network on Deep3DFaceRecon-style crops of the
  frames (:mod:`pdfgc.faces.deep3d`); needs its checkpoint (``pose_weights``), batched, GPU
  when one is given.

``build_pose_estimator(backend, ...)`` returns a :class:`PoseEstimator`.
"""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np

from pdfgc.errors import PdfgcError
from pdfgc.faces.pose import head_pose

POSE_BACKENDS = ("landmarks", "deep3d")


class PoseEstimator(Protocol):
    """``estimate(frames (T, S, S, 3) uint8, landmarks (T, 68, 2)) -> (T, 6)`` float32 labels
    ``(yaw, pitch, roll, tx, ty, log_scale)`` (docs/design.md, "Faces"), NaN rows where none."""

    def estimate(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray: ...


class LandmarkPoseEstimator:
    """solvePnP on the landmarks (the frames give only their side)."""

    def estimate(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(T, S, S, 3)``, ``(T, 68, 2)`` -> ``(T, 6)`` (:func:`pdfgc.faces.pose.head_pose`)."""
        return head_pose(landmarks, int(np.asarray(frames).shape[1]))


def resolve_device(device: Optional[str]) -> str:
    """``auto`` / None -> ``cuda`` when available, else ``cpu``; anything else as it is."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def build_pose_estimator(backend: str = "landmarks", weights: Optional[str] = None, device: Optional[str] = "auto",
                         batch_size: int = 32) -> PoseEstimator:
    """The pose estimator of ``backend``.

    Args:
        backend: ``landmarks`` | ``deep3d``.
        weights: the Deep3DFaceRecon checkpoint (``deep3d`` only; required there).
        device: ``auto`` (cuda when available) | ``cpu`` | ``cuda`` | ``cuda:N`` (``deep3d``).
        batch_size: crops per forward pass (``deep3d``).
    Raises:
        PdfgcError: unknown backend; ``deep3d`` without weights, or with a missing, unreadable or
            wrong checkpoint (one line naming the file).
    """
    if backend == "landmarks":
        return LandmarkPoseEstimator()
    if backend == "deep3d":
        if not weights:
            raise PdfgcError("pose_backend=deep3d needs pose_weights=<Deep3DFaceRecon checkpoint, e.g. "
                             "checkpoints/face_recon/epoch_20.pth>")
        from pdfgc.faces.deep3d import Deep3DPoseEstimator

        return Deep3DPoseEstimator(str(weights), device=resolve_device(device), batch_size=batch_size)
    raise PdfgcError(f"unknown pose_backend {backend!r} (one of {', '.join(POSE_BACKENDS)})")
