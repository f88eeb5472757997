"""Gaze, blink, head-pose and landmark metrics on the astronaut portrait with real dlib landmarks:
drawn closed lids, a painted iris moved to the eye corner, known in-plane rotations."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from astronaut_clips import moving_clip, template_portrait
from pdfgc.faces import build_landmark_detector, eye_aspect_ratio, head_pose, iris_positions
from pdfgc.metrics.gaze_blink import BlinkF1, GazeError, blink_events, blink_matches, ear_agreement, gaze_errors
from pdfgc.metrics.landmark_metrics import HeadPoseError, landmark_distances, pose_errors_degrees

EYES = (slice(36, 42), slice(42, 48))


@pytest.fixture(scope="module")
def detector():
    return build_landmark_detector("dlib")


@pytest.fixture(scope="module")
def portrait(detector):
    image = template_portrait(224)
    return image, detector.detect(image[None]).landmarks[0]


def close_eyes(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Skin painted over both eyes and a dark lash line from corner to corner: shut lids."""
    out = image.copy()
    for idx in EYES:
        poly = landmarks[idx]
        centre = poly.mean(0)
        skin = image[int(poly[:, 1].max() + 8), int(centre[0])].tolist()
        cv2.fillPoly(out, [np.round(centre + (poly - centre) * [1.3, 1.5]).astype(np.int32)], skin)
        y = poly[:, 1].mean() + 0.5 * (poly[[4, 5], 1].mean() - poly[:, 1].mean())
        lash = np.array([poly[0], [poly[5, 0], y], [poly[4, 0], y], poly[3]])
        cv2.polylines(out, [np.round(lash).astype(np.int32)], False, (50, 35, 35), 2, cv2.LINE_AA)
    return out


def iris_to_corner(image: np.ndarray, landmarks: np.ndarray, where: float = 0.2) -> np.ndarray:
    """Eye whites painted over each eye and a dark iris disc at ``where`` of the corner axis."""
    out = image.copy()
    for idx in EYES:
        poly = landmarks[idx]
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        out[mask.astype(bool)] = (225, 220, 215)
        centre = poly[0] + where * (poly[3] - poly[0])
        disc = np.zeros_like(mask)
        cv2.circle(disc, tuple(int(v) for v in np.round(centre)), int(round(0.18 * np.linalg.norm(poly[3] - poly[0]))),
                   1, -1)
        out[(disc & mask).astype(bool)] = (40, 30, 30)
    return out


def test_drawn_closed_lids_lower_the_eye_aspect_ratio(portrait, detector):
    image, landmarks = portrait
    open_ear = eye_aspect_ratio(landmarks)
    shut = detector.detect(close_eyes(image, landmarks)[None]).landmarks[0]
    shut_ear = eye_aspect_ratio(shut)
    assert np.all(open_ear > 0.3)
    assert np.all(shut_ear < 0.2) and np.all(shut_ear < 0.5 * open_ear)


def test_blinks_of_a_drawn_clip_are_found_and_scored(portrait, detector):
    image, landmarks = portrait
    shut = close_eyes(image, landmarks)
    closed_at = {4, 5, 6, 11, 12}
    frames = np.stack([shut if t in closed_at else image for t in range(16)])
    ear = eye_aspect_ratio(detector.detect(frames).landmarks)
    assert blink_events(ear) == [(4, 6), (11, 12)]
    f1 = BlinkF1()
    f1.update(ear, ear)
    assert f1.compute().item() == pytest.approx(1.0)
    f1.reset()
    f1.update(np.full_like(ear, 0.35), ear)  # never blinks: every reference blink missed
    assert f1.compute().item() == pytest.approx(0.0) and f1.fn.item() == 2
    agreement = ear_agreement(ear, ear)
    assert agreement["ear_mae"] == 0.0 and agreement["ear_corr"] == pytest.approx(1.0)


def test_blink_event_matching_by_hand():
    ear = np.array([0.3, 0.1, 0.1, 0.3, 0.1, 0.3, np.nan, 0.1, 0.1, 0.1])
    assert blink_events(ear) == [(1, 2), (7, 9)]  # the 1-frame dip at 4 is too short
    assert blink_matches([(1, 2), (20, 21)], [(3, 4), (7, 9)], tolerance=1) == (1, 1, 1)


def test_gaze_error_sees_the_iris_move_and_not_the_head(portrait, detector):
    image, landmarks = portrait
    moved = iris_to_corner(image, landmarks)
    base = iris_positions(image[None], landmarks[None])
    moved_lm = detector.detect(moved[None]).landmarks
    shifted, _ = moving_clip([0.0], [1.0], [(6.0, 4.0)])  # same gaze, head moved
    shifted_lm = detector.detect(shifted).landmarks
    to_corner = gaze_errors(iris_positions(moved[None], moved_lm), base)[0]
    head_only = gaze_errors(iris_positions(shifted, shifted_lm), base)[0]
    assert 0.15 < to_corner < 0.45  # the iris moved from about mid-eye to 0.2 of its width
    assert head_only < 0.05
    metric = GazeError()
    metric.update(np.concatenate([iris_positions(moved[None], moved_lm), np.full((1, 2, 2), np.nan)]),
                  np.concatenate([base, base]))
    assert metric.compute().item() == pytest.approx(to_corner) and metric.count.item() == 1


def test_a_known_rotation_moves_the_pose_by_that_amount(detector):
    angles = [0.0, 0.2, -0.1]
    frames, _ = moving_clip(angles, [1.0, 1.0, 1.1], [(0, 0), (0, 0), (5, 3)])
    pose = head_pose(detector.detect(frames).landmarks, 224)
    reference = np.repeat(pose[:1], 3, axis=0)
    errors = pose_errors_degrees(pose, reference)
    np.testing.assert_allclose(errors[:, 2], np.degrees(np.abs(angles)), atol=0.6)  # roll
    assert np.all(errors[:, :2] < 1.5)  # yaw and pitch barely move for an in-plane rotation
    metric = HeadPoseError()
    metric.update(pose, reference)
    out = metric.compute()
    assert out["roll"].item() == pytest.approx(errors[:, 2].mean())


def test_pose_error_wraps_angles_and_lmd_scales_to_224():
    a = np.zeros((1, 6))
    b = np.zeros((1, 6))
    a[0, 2], b[0, 2] = np.pi - 0.01, -np.pi + 0.01
    assert pose_errors_degrees(a, b)[0, 2] == pytest.approx(np.degrees(0.02))
    lm = np.zeros((2, 68, 2))
    moved = lm.copy()
    moved[:, 48:68, 0] += 2.0  # mouth moved 2 px in a 64 px frame
    d = landmark_distances(moved, lm, image_size=64)
    np.testing.assert_allclose(d["m_lmd"], 2.0 * 224 / 64)
    np.testing.assert_allclose(d["f_lmd"], 2.0 * 224 / 64 * 20 / 68)
