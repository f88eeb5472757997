"""Head-pose error and landmark distances (M-LMD, F-LMD) between a generated clip and a reference.

Pose comes from the preprocessing estimator (``pdfgc.faces.head_pose``: dlib 68 landmarks,
solvePnP against a generic 3D template); the error is the absolute yaw / pitch / roll
difference in degrees. LMD (Chen et al. 2019) is the mean Euclidean distance between
corresponding landmarks, mouth points 48-67 (M-LMD) or all 68 (F-LMD), in pixels of a
224-pixel frame (distances are rescaled from the evaluated side, so 64 px and 224 px runs compare).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

__all__ = ["POSE_ESTIMATOR", "HeadPoseError", "landmark_distances", "pose_errors_degrees"]

POSE_ESTIMATOR = "solvePnP on dlib 68 landmarks against a generic 3D template (pdfgc.faces.head_pose)"
MOUTH = slice(48, 68)
REFERENCE_SIDE = 224


def pose_errors_degrees(pose_generated: np.ndarray, pose_reference: np.ndarray) -> np.ndarray:
    """``(T, 6)`` pose labels (radians first 3) -> ``(T, 3)`` |yaw|, |pitch|, |roll| differences
    in degrees, wrapped to [0, 180]; NaN rows where either pose is unknown."""
    d = np.asarray(pose_generated, np.float64)[:, :3] - np.asarray(pose_reference, np.float64)[:, :3]
    d = np.abs((d + np.pi) % (2 * np.pi) - np.pi)
    return np.degrees(d)


def landmark_distances(landmarks_generated: np.ndarray, landmarks_reference: np.ndarray,
                       image_size: int) -> dict[str, np.ndarray]:
    """Per-frame ``m_lmd`` and ``f_lmd`` ``(T,)`` of ``(T, 68, 2)`` landmark pairs in a square
    ``image_size`` frame, in 224-frame pixels; NaN where either clip has no face."""
    d = np.linalg.norm(np.asarray(landmarks_generated, np.float64) - np.asarray(landmarks_reference, np.float64),
                       axis=-1) * (REFERENCE_SIDE / float(image_size))
    return {"m_lmd": d[:, MOUTH].mean(axis=1), "f_lmd": d.mean(axis=1)}


class HeadPoseError(Metric):
    """Mean absolute yaw / pitch / roll error (degrees) over all frames (DDP-safe sums);
    ``compute`` -> ``{"yaw", "pitch", "roll", "mean"}``."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pose_generated: np.ndarray, pose_reference: np.ndarray) -> None:
        e = pose_errors_degrees(pose_generated, pose_reference)
        e = e[np.isfinite(e).all(axis=1)]
        self.total += torch.as_tensor(e.sum(axis=0))
        self.count += len(e)

    def compute(self) -> dict[str, torch.Tensor]:
        mean = self.total / self.count if self.count > 0 else torch.full((3,), float("nan"), dtype=torch.float64)
        return {"yaw": mean[0], "pitch": mean[1], "roll": mean[2], "mean": mean.mean()}
