"""Face-detection quality of a clip: fill short landmark gaps, measure, reject bad clips.

A clip is kept when the face is found in enough frames; frames without a detection inside
short gaps get landmarks interpolated over time (held from the nearest detection at the clip's
ends), so every output frame has landmarks, a pose and an alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pdfgc.preprocessing.rejection import ClipRejected


@dataclass(frozen=True)
class QualityLimits:
    """Thresholds of :func:`check_faces` (``configs/preprocess.yaml`` documents each).

    Attributes:
        max_gap_frames: longest run of frames without a face that is interpolated.
        max_missing_fraction: largest share of frames without a face.
        max_several_faces_fraction: largest share of frames with more than one face.
    """

    max_gap_frames: int = 5
    max_missing_fraction: float = 0.2
    max_several_faces_fraction: float = 0.5


def missing_runs(valid: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of every run of False in a ``(T,)`` bool mask, in order."""
    valid = np.asarray(valid, bool)
    edges = np.diff(np.concatenate([[1], valid.astype(np.int8), [1]]))
    return list(zip(np.nonzero(edges == -1)[0].tolist(), np.nonzero(edges == 1)[0].tolist()))


def fill_gaps(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Interpolate rows over time where ``valid`` is False.

    Args:
        values: ``(T, ...)`` float, any trailing shape (landmarks ``(T, 68, 2)``, pose ``(T, 6)``).
        valid: ``(T,)`` bool, at least one True.
    Returns:
        ``(T, ...)`` float32: valid rows unchanged, the others linear between the neighbouring
        valid rows (the nearest one before the first / after the last).
    """
    values = np.asarray(values, np.float64)
    valid = np.asarray(valid, bool)
    if not valid.any():
        raise ValueError("fill_gaps needs at least one valid row")
    t = np.arange(len(values))
    flat = values.reshape(len(values), -1)
    filled = np.stack([np.interp(t, t[valid], flat[valid, k]) for k in range(flat.shape[1])], axis=1)
    return filled.reshape(values.shape).astype(np.float32)


@dataclass
class FaceTrack:
    """The landmarks of a kept clip and how they were obtained.

    Attributes:
        landmarks: ``(T, 68, 2)`` float32, finite in every frame (gaps filled).
        interpolated: ``(T,)`` bool, True where the landmarks were interpolated.
        quality: numbers for the index (``face_fraction``, ``several_faces_fraction``,
            ``interpolated_frames``, ``longest_gap``).
        flags: short names of what is worth knowing (``interpolated_landmarks``, ``several_faces``).
    """

    landmarks: np.ndarray
    interpolated: np.ndarray
    quality: dict
    flags: list


def check_faces(landmarks: np.ndarray, face_counts: np.ndarray, limits: QualityLimits) -> FaceTrack:
    """Measure a clip's detections and fill its short gaps.

    Args:
        landmarks: ``(T, 68, 2)`` float pixel (x, y), NaN rows where no face.
        face_counts: ``(T,)`` faces found per frame.
        limits: the thresholds.
    Returns:
        the :class:`FaceTrack`.
    Raises:
        ClipRejected: ``no_face``, ``face_missing`` or ``several_faces``.
    """
    landmarks = np.asarray(landmarks, np.float32)
    counts = np.asarray(face_counts)
    total = len(landmarks)
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    if not valid.any():
        raise ClipRejected("no_face", f"no face in any of {total} frames")
    runs = missing_runs(valid)
    longest = max((stop - start for start, stop in runs), default=0)
    missing = float(1.0 - valid.mean())
    several = float((counts > 1).mean())
    if missing > limits.max_missing_fraction:
        raise ClipRejected("face_missing", f"no face in {int(round(missing * total))} of {total} frames "
                                           f"(more than max_missing_fraction={limits.max_missing_fraction:g})")
    if longest > limits.max_gap_frames:
        raise ClipRejected("face_missing", f"no face in {longest} consecutive frames "
                                           f"(longer than max_gap_frames={limits.max_gap_frames})")
    if several > limits.max_several_faces_fraction:
        raise ClipRejected("several_faces", f"several faces in {int((counts > 1).sum())} of {total} frames "
                                            f"(more than max_several_faces_fraction={limits.max_several_faces_fraction:g})")
    flags = []
    if runs:
        flags.append("interpolated_landmarks")
    if several > 0:
        flags.append("several_faces")
    quality = {"face_fraction": round(float(valid.mean()), 4), "several_faces_fraction": round(several, 4),
               "interpolated_frames": int((~valid).sum()), "longest_gap": int(longest)}
    return FaceTrack(fill_gaps(landmarks, valid) if runs else landmarks, ~valid, quality, flags)
