"""pdfgc.faces: landmarks (dlib, for real), alignment, head pose, eye measurements."""

from __future__ import annotations

import numpy as np
import pytest

from astronaut_clips import moving_clip, template_portrait
from pdfgc.errors import PdfgcError
from pdfgc.faces import (ALIGN_TEMPLATE_224, build_landmark_detector, clip_alignment, eye_aspect_ratio,
                         head_pose, iris_positions, warp_frames)
from pdfgc.faces.align import anchor_points, fit_similarity, transform_points
from pdfgc.faces.pose import FACE_TEMPLATE_3D, project_template, rotation_matrix


@pytest.fixture(scope="module")
def dlib_detector():
    return build_landmark_detector("dlib")


# --- head pose ---------------------------------------------------------------------------


def test_rotation_convention_is_synthtalks():
    from pdfgc.synthtalk.render import rotation

    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.uniform(-0.8, 0.8, (20, 3)), np.zeros((20, 3))], 1)
    for pose in poses:
        np.testing.assert_allclose(rotation_matrix(*pose[:3]), rotation(pose[None])[0], atol=1e-12)
    front = project_template(np.zeros(6), 224)
    nose, eye_a, eye_b = 30, slice(36, 42), slice(42, 48)
    assert project_template([0.3, 0, 0, 0, 0, 0], 224)[nose, 0] > front[nose, 0] + 5  # yaw > 0: nose right
    assert project_template([0, 0.3, 0, 0, 0, 0], 224)[nose, 1] < front[nose, 1] - 3  # pitch > 0: nose up, as SynthTalk renders
    rolled = project_template([0, 0, 0.3, 0, 0, 0], 224)
    assert rolled[eye_b, 1].mean() > rolled[eye_a, 1].mean() + 5  # roll > 0: clockwise on screen


def test_frontal_template_projects_on_the_alignment_template():
    anchors = anchor_points(project_template(np.zeros(6), 224))
    np.testing.assert_allclose(anchors, ALIGN_TEMPLATE_224, atol=1.0)
    assert FACE_TEMPLATE_3D.shape == (68, 3)


def test_head_pose_recovers_known_3d_rotations():
    rng = np.random.default_rng(1)
    n = 40
    poses = np.stack([rng.uniform(-0.7, 0.7, n), rng.uniform(-0.4, 0.4, n), rng.uniform(-0.4, 0.4, n),
                      rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n), rng.uniform(-0.3, 0.3, n)], 1)
    landmarks = np.stack([project_template(p, 224) for p in poses])
    landmarks += rng.normal(0, 0.3, landmarks.shape).astype(np.float32)  # detector-like noise
    got = head_pose(landmarks, 224)
    assert got.shape == (n, 6) and got.dtype == np.float32
    angle_err = np.degrees(np.abs(got[:, :3] - poses[:, :3]))
    assert angle_err.max() < 2.0, angle_err.max()
    assert np.abs(got[:, 3:5] - poses[:, 3:5]).max() < 0.01
    assert np.abs(got[:, 5] - poses[:, 5]).max() < 0.03


def test_head_pose_nan_rows_and_image_size_invariance():
    pose = np.array([0.2, -0.1, 0.05, 0.03, 0.0, 0.1])
    lm = np.stack([project_template(pose, 224), np.full((68, 2), np.nan, np.float32)])
    got = head_pose(lm, 224)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()
    # The same face in a frame twice as large (landmarks scaled by 2) has the same labels.
    np.testing.assert_allclose(head_pose(lm[:1] * 2, 448), got[:1], atol=1e-3)


# --- landmarks (dlib, real weights from face-recognition-models) ---------------------------


def test_dlib_finds_the_moving_astronaut(dlib_detector):
    t = 8
    angles = np.linspace(-0.2, 0.2, t)
    shifts = np.stack([np.linspace(-10, 10, t), np.linspace(6, -6, t)], 1)
    frames, true_anchors = moving_clip(angles, np.linspace(0.85, 1.0, t), shifts)
    found = dlib_detector.detect(frames)
    assert found.landmarks.shape == (t, 68, 2) and found.landmarks.dtype == np.float32
    np.testing.assert_array_equal(found.face_counts, np.ones(t))
    assert np.abs(anchor_points(found.landmarks) - true_anchors).max() < 2.0


def test_dlib_no_face_and_several_faces(dlib_detector):
    portrait = template_portrait()
    blank = np.full_like(portrait, 128)
    small = portrait[::2, ::2]  # the same face at half size, beside the full one
    pair = np.concatenate([portrait, np.pad(small, ((0, 112), (0, 0), (0, 0)), mode="edge")], 1)
    pair = np.ascontiguousarray(pair[:, :224 + 112])
    found_blank = dlib_detector.detect(blank[None])
    assert found_blank.face_counts[0] == 0 and np.isnan(found_blank.landmarks).all()
    found_pair = dlib_detector.detect(pair[None])
    assert found_pair.face_counts[0] == 2
    # The largest face is reported: its anchors are the full-size portrait's.
    np.testing.assert_allclose(anchor_points(found_pair.landmarks[0]), ALIGN_TEMPLATE_224, atol=2.0)


def test_image_based_roll_follows_the_known_rotation(dlib_detector):
    angles = np.radians([-15.0, -7.5, 0.0, 7.5, 15.0])
    frames, _ = moving_clip(angles, np.full(5, 0.9), np.zeros((5, 2)))
    pose = head_pose(dlib_detector.detect(frames).landmarks, 224)
    roll_change = np.degrees(pose[:, 2] - pose[2, 2])
    np.testing.assert_allclose(roll_change, np.degrees(angles), atol=1.5)
    assert np.degrees(np.abs(pose[:, :2] - pose[2, :2])).max() < 3.0  # in-plane: yaw, pitch unchanged


def test_bad_backend_and_missing_weights(tmp_path):
    with pytest.raises(PdfgcError, match="unknown landmark backend"):
        build_landmark_detector("mediapipe")
    with pytest.raises(PdfgcError, match="predictor not found"):
        build_landmark_detector("dlib", predictor_path=str(tmp_path / "missing.dat"))
    with pytest.raises(PdfgcError, match="face-alignment weights not found"):
        build_landmark_detector("face_alignment", weights_dir=str(tmp_path))


# --- alignment -----------------------------------------------------------------------------


def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale = 0.3, 1.7
    lin = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = fit_similarity(src, src @ lin.T + [4.0, -9.0])
    np.testing.assert_allclose(m, np.concatenate([lin, [[4.0], [-9.0]]], 1), atol=1e-9)


def test_clip_alignment_undoes_drift_exactly_on_known_landmarks():
    base = project_template(np.zeros(6), 224).astype(np.float64)
    t = 30
    drift = np.stack([np.linspace(0, 12, t), 3 * np.sin(np.linspace(0, 2, t))], 1)
    angle, scale = 0.4, 1.6
    lin = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = (base @ lin.T + 40)[None] + drift[:, None]
    landmarks[5] = np.nan  # a frame without a face
    m = clip_alignment(landmarks.astype(np.float32), smooth_sigma=0)
    assert m.shape == (t, 2, 3) and m.dtype == np.float32
    aligned = anchor_points(transform_points(np.nan_to_num(landmarks), m))
    ok = np.arange(t) != 5
    assert aligned[ok].std(axis=0).max() < 1e-2  # the drift is undone exactly: every frame lands alike
    np.testing.assert_allclose(aligned[ok].mean(0), ALIGN_TEMPLATE_224, atol=0.15)  # on the template (the
    # template face's anchors are a similarity of ALIGN_TEMPLATE_224 up to perspective, < 0.15 px)
    # Smoothing follows a linear drift (away from the clip ends) and never adds jitter.
    smooth = clip_alignment(landmarks.astype(np.float32), smooth_sigma=2.0)
    np.testing.assert_allclose(smooth[8:-8, :, 2], m[8:-8, :, 2], atol=0.6)
    with pytest.raises(ValueError, match="no frame with a face"):
        clip_alignment(np.full((3, 68, 2), np.nan, np.float32))


def test_alignment_puts_eyes_and_mouth_within_3px_of_the_template(dlib_detector):
    t = 12
    phase = np.linspace(0, 3, t)
    shifts = np.stack([9 * np.sin(phase), 6 * np.cos(phase)], 1)
    frames, _ = moving_clip(np.full(t, 0.25), np.full(t, 0.8), shifts)
    matrices = clip_alignment(dlib_detector.detect(frames).landmarks)
    aligned = warp_frames(frames, matrices)
    assert aligned.shape == (t, 224, 224, 3) and aligned.dtype == np.uint8
    again = dlib_detector.detect(aligned)
    err = np.linalg.norm(anchor_points(again.landmarks) - ALIGN_TEMPLATE_224, axis=-1)
    assert err.max() < 3.0, err.max()


# --- eyes ----------------------------------------------------------------------------------


def test_eye_aspect_ratio_known_values():
    lm = project_template(np.zeros(6), 224)[None]  # open template eyes: lids 7 apart over a 24 wide eye
    ear = eye_aspect_ratio(lm)
    assert ear.shape == (1, 2) and ear.dtype == np.float32
    closed = lm.copy()
    for idx in (np.arange(36, 42), np.arange(42, 48)):
        closed[0, idx, 1] = closed[0, idx[[0, 3]], 1].mean()  # lids on the corner line
    np.testing.assert_allclose(eye_aspect_ratio(closed), 0.0, atol=1e-6)
    assert 0.2 < ear.min() and ear.max() < 0.4
    assert np.isnan(eye_aspect_ratio(np.full((68, 2), np.nan))).all()


def test_iris_positions_known_answer():
    import cv2

    size = 448  # the template at 2x: eyes 48 px wide
    lm = project_template(np.zeros(6), size)
    truth = np.array([[0.35, 0.05], [0.6, -0.03]])  # (x along the eye, y down) per eye
    frame = np.full((size, size, 3), 220, np.uint8)
    for e, idx in enumerate((np.arange(36, 42), np.arange(42, 48))):
        left, right = lm[idx[0]], lm[idx[3]]
        width = np.linalg.norm(right - left)
        u = (right - left) / width
        centre = left + truth[e, 0] * width * u + truth[e, 1] * width * np.array([-u[1], u[0]])
        cv2.circle(frame, tuple(int(round(v)) for v in centre), 5, (30, 30, 30), -1)
    got = iris_positions(frame[None], lm[None])
    assert got.shape == (1, 2, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], truth, atol=0.04)
    closed = lm.copy()
    closed[[37, 38, 40, 41], 1] = lm[36, 1]
    both = iris_positions(np.stack([frame, frame]), np.stack([closed, np.full((68, 2), np.nan, np.float32)]))
    assert np.isnan(both[0, 0]).all() and np.isfinite(both[0, 1]).all()  # eye A shut, eye B open
    assert np.isnan(both[1]).all()  # no face


def test_iris_of_the_real_portrait_is_near_the_eye_centre(dlib_detector):
    frames, _ = moving_clip([0.0], [1.0], [(0.0, 0.0)])
    iris = iris_positions(frames, dlib_detector.detect(frames).landmarks)
    assert np.isfinite(iris).all()
    assert np.abs(iris[0, :, 0] - 0.5).max() < 0.15  # she looks into the camera
