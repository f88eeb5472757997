"""Eye measurements from 68-point landmarks: aspect ratio (blink) and iris position (gaze).

Eye order everywhere: eye A = points 36-41 (the image-left eye of a frontal face), eye B =
points 42-47. The iris locator is the classic image-based one (darkest blob inside the eye
polygon); it needs no learned weights.
"""

from __future__ import annotations

import cv2
import numpy as np

# Per eye: (corner on the image left, upper lid left, upper lid right, corner on the image
# right, lower lid right, lower lid left), in iBUG order.
_EYE_POINTS = (np.arange(36, 42), np.arange(42, 48))

# Below this aspect ratio the lids cover the iris: no position is reported.
CLOSED_EYE_RATIO = 0.12
# Fraction of the eye's pixels taken as the dark blob (iris + pupil).
_DARK_FRACTION = 0.25


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Eye aspect ratio (Soukupova and Cech 2016): lid opening over eye width.

    ``EAR = (|p1 - p5| + |p2 - p4|) / (2 |p0 - p3|)`` per eye; about 0.25-0.35 open, < 0.1 shut.

    Args:
        landmarks: ``(..., 68, 2)`` pixel (x, y).
    Returns:
        ``(..., 2)`` float32, [eye A (36-41), eye B (42-47)]; NaN where the landmarks are NaN.
    """
    lm = np.asarray(landmarks, np.float64)
    out = []
    for idx in _EYE_POINTS:
        p = lm[..., idx, :]
        dist = lambda i, j: np.linalg.norm(p[..., i, :] - p[..., j, :], axis=-1)  # noqa: E731
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append((dist(1, 5) + dist(2, 4)) / (2.0 * dist(0, 3)))
    return np.stack(out, axis=-1).astype(np.float32)


def _iris_centre(grey: np.ndarray, polygon: np.ndarray) -> np.ndarray | None:
    """Centre (x, y) of the darkest blob inside ``polygon`` (6, 2) of a grey image, or None."""
    h, w = grey.shape
    x0, y0 = np.floor(polygon.min(0)).astype(int) - 1
    x1, y1 = np.ceil(polygon.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 3 or y1 - y0 < 2:
        return None
    patch = grey[y0:y1, x0:x1].astype(np.float32)
    mask = np.zeros(patch.shape, np.uint8)
    cv2.fillPoly(mask, [np.round(polygon - [x0, y0]).astype(np.int32)], 1)
    inside = mask.astype(bool)
    if inside.sum() < 4:
        return None
    values = patch[inside]
    threshold = np.quantile(values, _DARK_FRACTION)
    # Weight pixels by how much darker than the threshold they are: the pupil dominates, the
    # dark lash line at the lid border gets little weight because it is thin.
    weight = np.where(inside, np.clip(threshold - patch, 0, None), 0.0) + np.where(inside & (patch <= threshold), 1e-3, 0.0)
    total = weight.sum()
    if total <= 0:
        return None
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return np.array([(weight * xs).sum() / total, (weight * ys).sum() / total])


def iris_positions(frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Iris centre of each eye in the eye's own frame.

    x: projection of the centre on the corner-to-corner axis (image-left corner -> image-right
    corner), divided by the eye width: 0 at the left corner, 1 at the right, 0.5 centred.
    y: perpendicular offset divided by the eye width, positive = down (toward the lower lid).

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        landmarks: ``(T, 68, 2)`` pixel (x, y) of the same frames, NaN rows where no face.
    Returns:
        ``(T, 2, 2)`` float32 ``[eye A, eye B] x [x, y]``; NaN where there is no face or the
        eye is closed (aspect ratio below ``CLOSED_EYE_RATIO``).
    """
    frames = np.asarray(frames)
    lm = np.asarray(landmarks, np.float64)
    ratio = eye_aspect_ratio(lm)
    out = np.full((len(frames), 2, 2), np.nan, np.float32)
    for t, frame in enumerate(frames):
        if not np.isfinite(lm[t]).all():
            continue
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        for e, idx in enumerate(_EYE_POINTS):
            if not ratio[t, e] >= CLOSED_EYE_RATIO:
                continue
            polygon = lm[t, idx]
            centre = _iris_centre(grey, polygon)
            if centre is None:
                continue
            left, right = polygon[0], polygon[3]
            axis = right - left
            width = float(np.linalg.norm(axis))
            if width < 1e-6:
                continue
            u = axis / width
            normal = np.array([-u[1], u[0]])  # axis turned +90 deg: points down for a level eye
            rel = centre - left
            out[t, e] = (rel @ u / width, rel @ normal / width)
    return out
