"""Real-looking test clips: the scikit-image astronaut portrait (a real face shipped in the
package) moved by known similarity transforms over time.

The portrait is first mapped by the affine that puts its dlib eye and mouth centres exactly on
the release's alignment template (a slight vertical stretch: her eyes-to-mouth distance is
shorter than the template's), so a clip frame's true anchors are ``S_t(template)`` for the
frame's known similarity ``S_t``.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from pdfgc.faces.align import ALIGN_TEMPLATE_224, anchor_points


@functools.lru_cache(maxsize=1)
def template_portrait(size: int = 224) -> np.ndarray:
    """``(size, size, 3)`` uint8: the astronaut with her anchors on ``ALIGN_TEMPLATE_224``."""
    from skimage.data import astronaut

    from pdfgc.faces.landmarks import build_landmark_detector

    image = astronaut()
    found = build_landmark_detector("dlib").detect(image[None])
    assert found.face_counts[0] >= 1, "dlib must find the astronaut's face"
    anchors = anchor_points(found.landmarks[0])
    affine = cv2.getAffineTransform(anchors.astype(np.float32), ALIGN_TEMPLATE_224 * (size / 224))
    return cv2.warpAffine(image, affine, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def similarity(angle: float, scale: float, shift: tuple[float, float], size: int = 224) -> np.ndarray:
    """``(2, 3)`` similarity about the frame centre: rotate by ``angle`` radians (clockwise on
    screen for angle > 0, y pointing down), scale, then translate by ``shift`` pixels."""
    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    centre = np.array([size / 2, size / 2])
    lin = np.array([[c, -s], [s, c]])
    return np.concatenate([lin, (centre - lin @ centre + np.asarray(shift))[:, None]], axis=1)


def moving_clip(angles, scales, shifts, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Frames of the portrait moved by one similarity per frame.

    Returns:
        frames ``(T, size, size, 3)`` uint8 and the true anchors ``(T, 3, 2)`` of each frame.
    """
    portrait = template_portrait(size)
    template = ALIGN_TEMPLATE_224.astype(np.float64) * (size / 224)
    frames, anchors = [], []
    for angle, scale, shift in zip(angles, scales, shifts):
        m = similarity(angle, scale, shift, size)
        frames.append(cv2.warpAffine(portrait, m, (size, size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE))
        anchors.append(template @ m[:, :2].T + m[:, 2])
    return np.stack(frames), np.stack(anchors).astype(np.float32)


