"""Alignment of a clip to the release's 224 x 224 template (PC-AVS style).

One similarity per clip, fitted to the clip's *averaged* eye and mouth centres, keeps the
head's own rotation and scale changes visible in the aligned frames (they are what the pose
branch learns); a smoothed per-frame translation removes the slow drift of the head in the
shot without adding jitter.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

# (x, y) in a 224 x 224 aligned frame: image-left eye centre (mean of points 36-41),
# image-right eye centre (42-47), inner-mouth centre (60-67).
ALIGN_TEMPLATE_224 = np.array([[87.0, 59.0], [137.0, 59.0], [112.0, 120.0]], np.float32)

_EYE_A = slice(36, 42)
_EYE_B = slice(42, 48)
_INNER_MOUTH = slice(60, 68)


def anchor_points(landmarks: np.ndarray) -> np.ndarray:
    """The three alignment anchors of each face.

    Args:
        landmarks: ``(..., 68, 2)`` pixel (x, y).
    Returns:
        ``(..., 3, 2)`` float32: eye A centre, eye B centre, inner-mouth centre.
    """
    lm = np.asarray(landmarks, np.float32)
    return np.stack([lm[..., _EYE_A, :].mean(-2), lm[..., _EYE_B, :].mean(-2),
                     lm[..., _INNER_MOUTH, :].mean(-2)], axis=-2)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Args:
        src, dst: ``(N, 2)`` corresponding points, N >= 2.
    Returns:
        ``(2, 3)`` float64 matrix M with ``dst ~ M @ [x, y, 1]``.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    # Closed form in complex numbers: d ~ z * s with z = a + ib = scale * exp(i angle).
    denom = float((s ** 2).sum())
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / denom
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / denom
    rot = np.array([[a, -b], [b, a]])
    return np.concatenate([rot, (mu_d - rot @ mu_s)[:, None]], axis=1)


def clip_alignment(landmarks: np.ndarray, size: int = 224, smooth_sigma: float = 2.0) -> np.ndarray:
    """Per-frame alignment matrices of one clip.

    The similarity maps the clip's mean anchors (:func:`anchor_points` averaged over frames
    with a face) onto ``ALIGN_TEMPLATE_224`` (scaled to ``size``). Each frame then gets its own
    translation: the offset of its anchors' centroid from the clip mean, Gaussian-smoothed over
    time (``smooth_sigma`` frames; 0 = no smoothing), is undone. Frames without a face take the
    offset interpolated from their neighbours.

    Args:
        landmarks: ``(T, 68, 2)`` float pixel (x, y), NaN rows where no face.
        size: side of the aligned frames.
        smooth_sigma: temporal smoothing of the translation, in frames.
    Returns:
        ``(T, 2, 3)`` float32 matrices for :func:`warp_frames` (source pixel -> aligned pixel).
    Raises:
        ValueError: no frame has a face.
    """
    anchors = anchor_points(landmarks).astype(np.float64)  # (T, 3, 2)
    valid = np.isfinite(anchors).all(axis=(1, 2))
    if not valid.any():
        raise ValueError("no frame with a face: cannot align the clip")
    template = ALIGN_TEMPLATE_224.astype(np.float64) * (size / 224.0)
    similarity = fit_similarity(anchors[valid].mean(0), template)
    centroid = anchors.mean(1)  # (T, 2)
    offset = np.full_like(centroid, np.nan)
    offset[valid] = centroid[valid] - centroid[valid].mean(0)
    t = np.arange(len(offset))
    for k in range(2):  # fill frames without a face from their neighbours
        offset[:, k] = np.interp(t, t[valid], offset[valid, k])
    if smooth_sigma > 0 and len(offset) > 1:
        offset = gaussian_filter1d(offset, smooth_sigma, axis=0, mode="nearest")
    linear = similarity[:, :2]
    matrices = np.repeat(similarity[None], len(offset), axis=0)
    matrices[:, :, 2] -= offset @ linear.T  # p -> A (p - offset_t) + b
    return matrices.astype(np.float32)


def transform_points(points: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Apply per-frame ``(T, 2, 3)`` matrices to ``(T, N, 2)`` points -> ``(T, N, 2)`` float32."""
    pts = np.asarray(points, np.float64)
    m = np.asarray(matrices, np.float64)
    return (pts @ m[:, :, :2].transpose(0, 2, 1) + m[:, None, :, 2]).astype(np.float32)


def warp_frames(frames: np.ndarray, matrices: np.ndarray, size: int = 224) -> np.ndarray:
    """Warp each frame with its alignment matrix.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        matrices: ``(T, 2, 3)`` from :func:`clip_alignment` (computed for the same ``size``).
        size: output side.
    Returns:
        ``(T, size, size, 3)`` uint8 RGB; outside the source, the border pixels are repeated
        (a black border would be a strong false cue at the frame edge).
    """
    frames = np.asarray(frames)
    if len(frames) != len(matrices):
        raise ValueError(f"{len(frames)} frames but {len(matrices)} matrices")
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, (frame, m) in enumerate(zip(frames, matrices)):
        out[i] = cv2.warpAffine(frame, np.asarray(m, np.float64), (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out
