"""The optional learned gaze estimator (ETH-XGaze): the release's architecture and key names with
random weights saved in its checkpoint format, the data normalisation against known geometry,
the gaze-direction maths, and the estimator on the astronaut portrait."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdfgc.errors import PdfgcError
from pdfgc.faces.pose import camera_matrix, rotation_matrix
from pdfgc.metrics.learned_gaze import (DISTANCE_NORM, FOCAL_NORM, NORMALIZATION_LANDMARKS, ETHXGaze,
                                        LearnedGazeEstimator, angle_errors_degrees, face_model_mm, gaze_vectors,
                                        head_frame_gaze, load_eth_xgaze, normalize_face)

FLIP_Z = np.diag([1.0, 1.0, -1.0])


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(0)
    return ETHXGaze().eval()


def release_checkpoint(net: ETHXGaze, path, zipfile: bool = True):
    """What ETH-XGaze's trainer saved: the model (inside nn.DataParallel) and training state."""
    state = {"epoch": 25, "model_state": net.state_dict(),
             "optim_state": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
             "schedule_state": {"step_size": 10, "gamma": 0.1, "last_epoch": 24}}
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)
    return path


def test_the_network_has_the_release_keys_and_outputs_pitch_yaw(random_net):
    import torchvision

    keys = set(random_net.state_dict())
    resnet = {f"gaze_network.module.{k}" for k in torchvision.models.resnet50(weights=None).state_dict()}
    assert keys == resnet | {"gaze_fc.0.weight", "gaze_fc.0.bias"}
    assert random_net.state_dict()["gaze_fc.0.weight"].shape == (2, 2048)
    with torch.no_grad():
        assert random_net(torch.randn(2, 3, 224, 224)).shape == (2, 2)


@pytest.mark.parametrize("zipfile", [True, False])
def test_release_checkpoint_loads_by_name(random_net, tmp_path, zipfile):
    path = release_checkpoint(random_net, tmp_path / "epoch_24_ckpt.pth.tar", zipfile)
    loaded = load_eth_xgaze(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), random_net(x))
    # a bare state_dict of a model saved without DataParallel loads too
    bare = {k.replace("gaze_network.module.", "gaze_network."): v for k, v in random_net.state_dict().items()}
    torch.save(bare, tmp_path / "bare.pth")
    with torch.no_grad():
        assert torch.equal(load_eth_xgaze(tmp_path / "bare.pth")(x), random_net(x))


def test_loader_names_the_problem(random_net, tmp_path):
    with pytest.raises(PdfgcError, match="set metrics.gaze.weights"):
        load_eth_xgaze(None)
    with pytest.raises(PdfgcError, match="ETH-XGaze weights not found"):
        load_eth_xgaze(tmp_path / "nope.pth.tar")
    (tmp_path / "garbage.tar").write_bytes(b"not a checkpoint")
    with pytest.raises(PdfgcError, match="cannot read the ETH-XGaze weights"):
        load_eth_xgaze(tmp_path / "garbage.tar")
    state = dict(random_net.state_dict())
    del state["gaze_fc.0.bias"]
    torch.save({"model_state": state}, tmp_path / "missing.tar")
    with pytest.raises(PdfgcError, match="missing key gaze_fc.0.bias"):
        load_eth_xgaze(tmp_path / "missing.tar")
    torch.save({"model_state": {"conv.weight": torch.zeros(1)}}, tmp_path / "other.tar")
    with pytest.raises(PdfgcError, match="not the ETH-XGaze ResNet-50: unknown key conv.weight"):
        load_eth_xgaze(tmp_path / "other.tar")
    torch.save({"epoch": 3}, tmp_path / "no_model.tar")
    with pytest.raises(PdfgcError, match="not an ETH-XGaze checkpoint"):
        load_eth_xgaze(tmp_path / "no_model.tar")


def place_model(yaw: float, pitch: float, roll: float, centre_mm: np.ndarray, side: int = 224):
    """The six model points rotated by the head pose and placed in the camera frame; their pixels."""
    head = FLIP_Z @ rotation_matrix(yaw, pitch, roll) @ FLIP_Z  # head axes -> OpenCV camera axes
    model = face_model_mm()
    placed = model @ head.T + centre_mm
    k = camera_matrix(side)
    pixels = placed[:, :2] / placed[:, 2:] * k[0, 0] + k[:2, 2]
    landmarks = np.full((68, 2), np.nan)
    landmarks[list(NORMALIZATION_LANDMARKS)] = pixels
    return head, placed, landmarks, k


@pytest.mark.parametrize("pose", [(0.0, 0.0, 0.0), (0.3, -0.15, 0.2), (-0.4, 0.2, -0.1)])
def test_normalisation_looks_at_the_face_centre_from_600_mm_with_the_head_level(pose):
    head, placed, landmarks, k = place_model(*pose, centre_mm=np.array([20.0, -10.0, 450.0]))
    frame = np.zeros((224, 224, 3), np.uint8)
    face = normalize_face(frame, landmarks, k)
    assert face is not None and face.patch.shape == (224, 224, 3)
    np.testing.assert_allclose(face.head_rotation, head, atol=1e-4)  # the pose solved back
    centre = 0.5 * (placed[:4].mean(0) + placed[4:].mean(0))
    np.testing.assert_allclose(face.face_centre, centre, atol=1e-3)
    # the face centre lands on the patch centre, and points move as at 600 mm with a 960 px focal
    image_centre = k @ centre
    patch_centre = face.warp @ (image_centre / image_centre[2])
    np.testing.assert_allclose(patch_centre[:2] / patch_centre[2], [112.0, 112.0], atol=1e-3)
    in_norm = (face.rotation @ placed.T).T * [1.0, 1.0, DISTANCE_NORM / np.linalg.norm(centre)]
    expected = in_norm[:, :2] / in_norm[:, 2:] * FOCAL_NORM + 112.0
    warped = face.warp @ np.c_[landmarks[list(NORMALIZATION_LANDMARKS)], np.ones(6)].T
    np.testing.assert_allclose((warped[:2] / warped[2]).T, expected, atol=1e-3)
    # the head's x-axis stays horizontal in the normalised camera: no roll left
    assert abs((face.rotation @ face.head_rotation)[1, 0]) < 1e-9
    assert normalize_face(frame, np.full((68, 2), np.nan), k) is None


def test_gaze_directions_and_angle_errors_by_hand():
    g = gaze_vectors(np.radians([[0.0, 0.0], [0.0, 10.0], [20.0, 0.0]]))
    np.testing.assert_allclose(g[0], [0, 0, -1], atol=1e-12)
    assert g[1, 0] < 0 and g[2, 1] < 0  # yaw > 0: toward the image left; pitch > 0: up
    np.testing.assert_allclose(angle_errors_degrees(g[:1].repeat(2, 0), g[1:]), [10.0, 20.0], atol=1e-9)
    assert np.isnan(angle_errors_degrees(np.full((1, 3), np.nan), g[:1]))[0]


def test_head_frame_gaze_undoes_both_rotations():
    """An eye-in-head gaze seen through any head pose and normalisation comes back the same."""
    rng = np.random.default_rng(0)
    gaze_head = np.array([0.2, -0.1, -1.0]) / np.linalg.norm([0.2, -0.1, -1.0])
    rotations, heads, pitchyaw = [], [], []
    for _ in range(4):
        head = FLIP_Z @ rotation_matrix(*rng.uniform(-0.4, 0.4, 3)) @ FLIP_Z
        norm = FLIP_Z @ rotation_matrix(*rng.uniform(-0.3, 0.3, 3)) @ FLIP_Z
        g = norm @ head @ gaze_head  # what the network sees in the normalised camera
        pitchyaw.append([np.arcsin(-g[1]), np.arctan2(-g[0], -g[2])])
        rotations.append(norm)
        heads.append(head)
    back = head_frame_gaze(np.array(pitchyaw), np.stack(rotations), np.stack(heads))
    np.testing.assert_allclose(back, np.repeat(gaze_head[None], 4, 0), atol=1e-9)


def test_estimator_on_the_astronaut(random_net):
    """Real dlib landmarks: a face patch per frame, unit eye-in-head gazes, zero error to itself,
    NaN where there is no face; a stub network that always looks into the camera gives the
    camera's direction in head axes."""
    from astronaut_clips import moving_clip
    from pdfgc.faces import build_landmark_detector

    frames, _ = moving_clip([0.0, 0.15, -0.1], [1.0, 1.05, 0.95], [(0, 0), (6, -4), (-5, 3)])
    landmarks = build_landmark_detector("dlib").detect(frames).landmarks
    landmarks[2] = np.nan  # pretend frame 2 has no face
    gaze = LearnedGazeEstimator(None, net=random_net, batch_size=2).head_gaze(frames, landmarks)
    assert gaze.shape == (3, 3) and np.isnan(gaze[2]).all()
    np.testing.assert_allclose(np.linalg.norm(gaze[:2], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(angle_errors_degrees(gaze[:2], gaze[:2]), 0.0, atol=1e-3)
    face = normalize_face(frames[0], landmarks[0], camera_matrix(224))
    assert face.patch[80:144, 80:144].std() > 10, "the face fills the patch centre"

    class LooksAtTheCamera(torch.nn.Module):  # (pitch, yaw) = 0 in every normalised patch
        def forward(self, x):
            return torch.zeros(len(x), 2)

    ahead = LearnedGazeEstimator(None, net=LooksAtTheCamera()).head_gaze(frames[:2], landmarks[:2])
    # looking into the normalised camera = looking from the face centre at the real camera; in
    # head axes that is the camera's direction rotated by the head pose of each frame
    for t in range(2):
        f = normalize_face(frames[t], landmarks[t], camera_matrix(224))
        expected = f.head_rotation.T @ (-f.face_centre / np.linalg.norm(f.face_centre))
        np.testing.assert_allclose(ahead[t], expected, atol=1e-5)
    # frame 1 rolls the head about the line of sight (and shifts it a little): the camera's
    # direction in head axes hardly moves, although the patch content is rotated by 8.6 degrees
    assert angle_errors_degrees(ahead[:1], ahead[1:])[0] < 1.0
