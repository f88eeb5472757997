"""Head pose labels from 68-point landmarks: solvePnP against a generic 3D face template.

Convention (docs/design.md, the same as SynthTalk's ``pdfgc.synthtalk.motion``): head
coordinates x right, y down, z toward the camera; rotation ``R = Rz(roll) Ry(yaw) Rx(pitch)``;
yaw > 0 turns the face toward the image's right (the nose moves right), pitch > 0 raises the
nose in the image (what SynthTalk's renderer draws; docs/design.md), roll > 0 turns the face
clockwise in the image. Translation
(tx, ty): where the template's origin projects, relative to the image centre, in fractions of
the image side (+x right, +y down). log(scale): log of the face's projected size relative to the
aligned-frame template (inter-ocular distance 50/224 of the side), so an aligned frontal frame
gives a pose of about zero.

Camera: pinhole, focal length = image side (a ~53 degree field of view, usual for webcams and
interview footage), principal point at the image centre, no distortion.
"""

from __future__ import annotations

import cv2
import numpy as np


def _template_points() -> np.ndarray:
    """Generic 68-point face in aligned-224 pixel units, (68, 3): x right, y down, z toward the camera.

    Frontal orthographic view = the alignment template (eye centres (87, 59) and (137, 59),
    inner-mouth centre (112, 120)); depths follow average facial proportions (inter-ocular
    distance 50 units ~ 63 mm: nose tip 24 units in front of the inner eye corners, ears 60
    behind). The origin is the point that lands on the aligned frame's centre (112, 112), on the
    eye-corner plane.
    """
    pts = np.zeros((68, 3))
    a = np.pi * np.arange(17) / 16  # jaw line 0-16, from the image-left ear round the chin
    pts[0:17] = np.stack([112 - 58 * np.cos(a), 62 + 98 * np.sin(a), -60 + 58 * np.sin(a)], -1)
    brow = np.array([[66, 48, -4], [74, 43, -1], [83, 41, 1], [92, 42, 2], [100, 45, 2]], float)
    pts[17:22] = brow
    pts[22:27] = brow[::-1] * [-1, 1, 1] + [224, 0, 0]  # mirror about x = 112
    pts[27:31] = [[112, 60, 6], [112, 72, 12], [112, 84, 18], [112, 96, 24]]  # bridge to tip
    pts[31:36] = [[102, 102, 10], [107, 104, 14], [112, 105, 16], [117, 104, 14], [122, 102, 10]]
    eye_a = np.array([[75, 59, -6], [83, 55.5, 1], [91, 55.5, 1], [99, 59, 0], [91, 62.5, 1], [83, 62.5, 1]])
    pts[36:42] = eye_a
    # Eye B is eye A mirrored, in iBUG order (inner corner, upper inner, upper outer, outer
    # corner, lower outer, lower inner).
    pts[42:48] = eye_a[[3, 2, 1, 0, 5, 4]] * [-1, 1, 1] + [224, 0, 0]
    pts[48:60] = [[92, 120, -2], [99, 114, 4], [106, 112, 7], [112, 113, 8], [118, 112, 7], [125, 114, 4],
                  [132, 120, -2], [125, 126, 4], [118, 129, 6], [112, 130, 6], [106, 129, 6], [99, 126, 4]]
    pts[60:68] = [[95, 120, 1], [105, 118, 4], [112, 118.5, 5], [119, 118, 4], [129, 120, 1], [119, 122, 4],
                  [112, 121.5, 5], [105, 122, 4]]
    return pts - [112.0, 112.0, 0.0]


FACE_TEMPLATE_3D = _template_points()
_TEMPLATE_EYE_DISTANCE = 50.0  # units between the template's eye centres
_FLIP_Z = np.diag([1.0, 1.0, -1.0])  # head frame (z toward camera) <-> OpenCV camera frame (z away)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Rz(roll) Ry(yaw) Rx(pitch)`` (3, 3) in head coordinates (the SynthTalk convention)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


def euler_angles(rot: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`rotation_matrix`: (yaw, pitch, roll) in radians, yaw in [-pi/2, pi/2]."""
    yaw = float(np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0)))
    pitch = float(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = float(np.arctan2(rot[1, 0], rot[0, 0]))
    return yaw, pitch, roll


def camera_matrix(image_size: int) -> np.ndarray:
    """Pinhole intrinsics (3, 3): focal length = image side, principal point at the centre."""
    f, c = float(image_size), image_size / 2.0
    return np.array([[f, 0, c], [0, f, c], [0, 0, 1]])


def project_template(pose: np.ndarray, image_size: int) -> np.ndarray:
    """Landmarks ``(68, 2)`` of the template placed with a pose label ``(6,)`` (the inverse of
    :func:`head_pose`, used to test it and to draw poses)."""
    yaw, pitch, roll, tx, ty, log_scale = np.asarray(pose, np.float64)
    # Depth at which the template's eye distance projects to 50/224 of the side, times the scale.
    depth = _TEMPLATE_EYE_DISTANCE * 224.0 / (50.0 * np.exp(log_scale))
    pts = FACE_TEMPLATE_3D @ rotation_matrix(yaw, pitch, roll).T @ _FLIP_Z  # camera frame, origin-relative
    cam = pts + [tx * depth, ty * depth, depth]
    k = camera_matrix(image_size)
    return (cam[:, :2] / cam[:, 2:] * k[0, 0] + k[:2, 2]).astype(np.float32)


def head_pose(landmarks: np.ndarray, image_size: int) -> np.ndarray:
    """Pose labels of each frame from its landmarks.

    Args:
        landmarks: ``(T, 68, 2)`` pixel (x, y) in a square ``image_size`` frame, NaN rows where
            no face.
        image_size: side of the (square) frames the landmarks are in.
    Returns:
        ``(T, 6)`` float32 ``(yaw, pitch, roll, tx, ty, log_scale)``, radians / fractions of the
        side / log ratio (module docstring); NaN rows for NaN landmarks or when solvePnP fails.
    """
    lm = np.asarray(landmarks, np.float64)
    out = np.full((len(lm), 6), np.nan, np.float32)
    object_points = FACE_TEMPLATE_3D @ _FLIP_Z  # OpenCV camera frame: z away from the camera
    k = camera_matrix(image_size)
    frontal_depth = _TEMPLATE_EYE_DISTANCE * 224.0 / 50.0
    rvec = np.zeros((3, 1))
    tvec = np.array([[0.0], [0.0], [frontal_depth]])
    have_guess = False
    for t, points in enumerate(lm):
        if not np.isfinite(points).all():
            continue
        ok, rv, tv = cv2.solvePnP(object_points, points, k, None, rvec.copy(), tvec.copy(),
                                  useExtrinsicGuess=have_guess, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or tv[2, 0] <= 0:
            continue
        rvec, tvec, have_guess = rv, tv, True  # warm start the next frame from this one
        rot_cv, _ = cv2.Rodrigues(rv)
        yaw, pitch, roll = euler_angles(_FLIP_Z @ rot_cv @ _FLIP_Z)
        x, y, z = tv[:, 0]
        out[t] = (yaw, pitch, roll, x / z, y / z, np.log(frontal_depth / z))
    return out
