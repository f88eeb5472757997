"""pose_backend=deep3d: Deep3DFaceRecon's network (random weights in its official checkpoint
format; nothing is downloaded), its crop, the conversion of its angles and translation to our
pose labels (known answers), and preprocessing runs with it on the astronaut clips."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from astronaut_clips import moving_clip, template_portrait
from pdfgc.errors import PdfgcError
from pdfgc.faces import build_pose_estimator
from pdfgc.faces.deep3d import (CAMERA_DISTANCE, FOCAL, LM3D_STD, RESCALE, Deep3DPoseEstimator, crop_matrices,
                                fit_crop, pose_from_coefficients)
from pdfgc.faces.deep3d_net import NUM_COEFFICIENTS, ReconNet, load_recon_net
from pdfgc.faces.pose import rotation_matrix
from pdfgc.preprocessing import PreprocessConfig, run
from pdfgc.preprocessing.records import read_jsonl
from pdfgc.synthtalk.speech import synthesize_speech
from pdfgc.video import write_video

ANGLES = (0.1, -0.2, 0.3)          # Deep3DFaceRecon's rotation about x, y, z
TRANSLATION = (0.05, -0.03, 0.4)   # its translation, model units
EXPECTED_ANGLES = (-0.2, -0.1, -0.3)  # our (yaw, pitch, roll) for them


def _official_file(path, net: torch.nn.Module, prefix: str = "") -> None:
    """Save ``net`` as Deep3DFaceRecon's BaseModel.save_networks does: the network's state_dict
    under ``net_recon`` beside the optimizer's and the scheduler's."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.2)
    state = {prefix + k: v for k, v in net.state_dict().items()}
    torch.save({"net_recon": state, "opt_00": optimizer.state_dict(), "sched_00": scheduler.state_dict()}, path)


def _stub(seed: int = 0) -> ReconNet:
    """A random ResNet-50 whose heads output fixed coefficients: zero weights, biases = the
    chosen angles and translation (every other coefficient 0)."""
    torch.manual_seed(seed)
    net = ReconNet()
    with torch.no_grad():
        for layer in net.final_layers:
            layer.weight.zero_()
            layer.bias.zero_()
        net.final_layers[3].bias.copy_(torch.tensor(ANGLES))
        net.final_layers[5].bias.copy_(torch.tensor(TRANSLATION[:2]))
        net.final_layers[6].bias.fill_(TRANSLATION[2])
    return net.eval()


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """(path, network): a randomly initialised R-Net (BN statistics moved off their defaults)
    in the official ``epoch_20.pth`` format."""
    torch.manual_seed(1)
    net = ReconNet()
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("deep3d") / "epoch_20.pth"
    _official_file(path, net, prefix="module.")  # a DDP-saved file: the prefix is stripped
    return path, net.eval()


@pytest.fixture(scope="module")
def stub_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("deep3d_stub") / "epoch_20.pth"
    _official_file(path, _stub())
    return path


# --- the network and its file ------------------------------------------------------------------


def test_the_official_file_format_loads_by_name(random_checkpoint):
    path, net = random_checkpoint
    keys = net.state_dict()
    # Deep3DFaceRecon's names: ResNet-50 trunk under backbone., seven 1x1 heads under final_layers.
    assert "backbone.layer4.2.bn3.running_var" in keys and "backbone.fc.weight" not in keys
    assert [tuple(keys[f"final_layers.{i}.weight"].shape) for i in range(7)] == [
        (80, 2048, 1, 1), (64, 2048, 1, 1), (80, 2048, 1, 1), (3, 2048, 1, 1), (27, 2048, 1, 1), (2, 2048, 1, 1),
        (1, 2048, 1, 1)]
    assert len(keys) == 318 + 14 and NUM_COEFFICIENTS == 257
    loaded = load_recon_net(path)
    assert not loaded.training
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (2, 257)
        torch.testing.assert_close(out, net(x), rtol=0, atol=0)


def test_bad_checkpoints_fail_with_one_line(tmp_path, random_checkpoint):
    path, net = random_checkpoint
    cases = {}
    cases["checkpoint file not found"] = tmp_path / "missing.pth"
    (tmp_path / "text.pth").write_text("not a checkpoint")
    cases["not a readable PyTorch file"] = tmp_path / "text.pth"
    torch.save(net.state_dict(), tmp_path / "raw.pth")  # a bare state_dict: not the official format
    cases["has no 'net_recon' entry"] = tmp_path / "raw.pth"
    torch.save({"net_recon": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}}, tmp_path / "keys.pth")
    cases[r"not a Deep3DFaceRecon resnet50 checkpoint: 331 keys missing, 0 unexpected"] = tmp_path / "keys.pth"
    state = dict(net.state_dict())
    state["final_layers.3.weight"] = torch.zeros(4, 2048, 1, 1)
    torch.save({"net_recon": state}, tmp_path / "shape.pth")
    cases[r"'final_layers.3.weight' has shape \(4, 2048, 1, 1\), the network \(3, 2048, 1, 1\)"] = tmp_path / "shape.pth"
    torch.save({"net_recon": {}, "opt": argparse.Namespace(lr=1e-4)}, tmp_path / "objects.pth")  # unsafe to unpickle
    cases["holds objects other than tensors"] = tmp_path / "objects.pth"
    for message, bad in cases.items():
        with pytest.raises(PdfgcError, match=message) as info:
            build_pose_estimator("deep3d", str(bad), device="cpu")
        assert "\n" not in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(PdfgcError, match="needs pose_weights"):
        build_pose_estimator("deep3d", None)
    with pytest.raises(PdfgcError, match="unknown pose_backend"):
        build_pose_estimator("mediapipe")


# --- conversion: known answers --------------------------------------------------------------------


def _deep3d_rotation(a: float, b: float, c: float) -> np.ndarray:
    """Deep3DFaceRecon's rotation (models/bfm.py compute_rotation, before its transpose for
    row vectors): Rz(c) Ry(b) Rx(a) in x right, y up, z toward the camera."""
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_angles_become_our_yaw_pitch_roll_exactly():
    rng = np.random.default_rng(0)
    coefficients = np.zeros((50, 257))
    coefficients[:, 224:227] = rng.uniform(-0.8, 0.8, (50, 3))
    pose = pose_from_coefficients(coefficients, np.ones(50), np.full((50, 2), 112.0), 224)
    flip_y = np.diag([1.0, -1.0, 1.0])
    for (a, b, c), ours in zip(coefficients[:, 224:227], pose.astype(np.float64)):
        # the same head rotation, written in our y-down coordinates
        np.testing.assert_allclose(rotation_matrix(*ours[:3]), flip_y @ _deep3d_rotation(a, b, c) @ flip_y, atol=1e-6)
    # yaw > 0 (ours) moves the nose tip to the image right, in Deep3DFaceRecon's own frame too
    nose = _deep3d_rotation(0.0, 0.3, 0.0) @ [0.0, 0.0, 1.0]
    assert nose[0] > 0 and pose_from_coefficients(np.eye(257)[None, 225] * 0.3, [1.0], [[112, 112]], 224)[0, 0] > 0


def _landmarks_on_lm3d(k: float, centre: tuple[float, float]) -> np.ndarray:
    """``(1, 68, 2)`` landmarks whose five points are the standard face seen frontally
    (orthographic, ``k`` pixels per unit) with its origin at ``centre``."""
    five = np.asarray(centre) + k * LM3D_STD[:, :2] * [1.0, -1.0]  # image y is down
    lm = np.tile(np.asarray(centre, np.float64), (68, 1))
    for idx, point in zip(((36, 39), (42, 45), (30,), (48,), (54,)), five):
        lm[list(idx)] = point
    return lm[None]


def test_crop_fit_recovers_a_known_placement():
    scale, centre = fit_crop(_landmarks_on_lm3d(80.0, (100.0, 90.0)))
    np.testing.assert_allclose(scale, [RESCALE / 80.0])
    np.testing.assert_allclose(centre, [[100.0, 91.0]])  # align_img's crop sits one row lower
    m = crop_matrices(scale, centre)[0]
    np.testing.assert_allclose(m @ [100.0, 91.0, 1.0], [112.0, 112.0])  # the origin lands on the crop centre
    assert np.isnan(fit_crop(np.full((1, 68, 2), np.nan))[0]).all()


def test_stub_network_gives_the_expected_labels(stub_checkpoint):
    k, centre, size = 80.0, (110.0, 92.0), 224
    estimator = build_pose_estimator("deep3d", str(stub_checkpoint), device="cpu", batch_size=2)
    assert isinstance(estimator, Deep3DPoseEstimator)
    frames = np.repeat(template_portrait()[None], 3, axis=0)
    landmarks = np.repeat(_landmarks_on_lm3d(k, centre), 3, axis=0)
    landmarks[1] = np.nan  # no face: a NaN row
    got = estimator.estimate(frames, landmarks)
    assert got.shape == (3, 6) and got.dtype == np.float32
    assert np.isnan(got[1]).all() and np.isfinite(got[[0, 2]]).all()
    s = RESCALE / k
    depth = CAMERA_DISTANCE - TRANSLATION[2]
    x = FOCAL * TRANSLATION[0] / depth / s + centre[0]
    y = -FOCAL * TRANSLATION[1] / depth / s + centre[1] + 1.0
    eye_distance = FOCAL * np.linalg.norm(LM3D_STD[1] - LM3D_STD[0]) / depth / s
    expected = [*EXPECTED_ANGLES, (x - 112) / 224, (y - 112) / 224, np.log(eye_distance / 50.0)]
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[2], got[0], rtol=0, atol=0)
    # A face of the template's size (50 px between the eyes) at the camera's default distance
    # (no translation) has a log scale of about zero: log(1015 / (10 * 102)).
    frontal = np.zeros((1, 257))
    scale, centre = fit_crop(_landmarks_on_lm3d(50.0 / np.linalg.norm(LM3D_STD[1] - LM3D_STD[0]), (112, 112)))
    assert abs(pose_from_coefficients(frontal, scale, centre, size)[0, 5]) < 0.01


# --- preprocessing with it ------------------------------------------------------------------------


T = 12


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("deep3d_clips")
    frames, _ = moving_clip(np.full(T, 0.1), np.full(T, 0.9), np.tile([6.0, -4.0], (T, 1)))
    audio = synthesize_speech(np.random.default_rng(0), T).waveform
    write_video(root / "alice" / "take1.mp4", frames, fps=25, audio=audio)
    return root


def _config(input_dir, output_dir, **overrides) -> PreprocessConfig:
    return PreprocessConfig.from_mapping({"input_dir": str(input_dir), "output_dir": str(output_dir), "min_frames": 8,
                                          "progress": False, "landmarks": {"backend": "dlib", "dlib": {}},
                                          "pose_backend": "deep3d", "pose_device": "cpu", "pose_batch_size": 5,
                                          **overrides})


def test_preprocess_with_the_stub_writes_its_labels(one_clip, stub_checkpoint, tmp_path):
    summary = run(_config(one_clip, tmp_path / "out", pose_weights=str(stub_checkpoint)))
    assert summary.processed == 1
    (entry,) = read_jsonl(tmp_path / "out" / "index.jsonl")
    pose = np.load(tmp_path / "out" / entry["pose"])
    assert pose.shape == (T, 6) and pose.dtype == np.float32 and np.isfinite(pose).all()
    np.testing.assert_array_equal(pose[:, :3], np.tile(np.float32(EXPECTED_ANGLES), (T, 1)))
    # translation: where the model's origin would be for this fixed output, near the aligned
    # face's centre; the scale of a face near the template's size
    assert np.abs(pose[:, 3:5]).max() < 0.15 and np.abs(pose[:, 5]).max() < 0.3


def test_preprocess_with_a_random_network_writes_finite_labels(one_clip, random_checkpoint, tmp_path):
    path, _ = random_checkpoint
    run(_config(one_clip, tmp_path / "out", pose_weights=str(path)))
    (entry,) = read_jsonl(tmp_path / "out" / "index.jsonl")
    pose = np.load(tmp_path / "out" / entry["pose"])
    assert pose.shape == (T, 6) and np.isfinite(pose).all()
    assert np.ptp(pose[:, 0]) > 0  # the frames differ, so does a random network's output


def test_worker_processes_build_their_own_estimator(stub_checkpoint, tmp_path):
    import importlib

    run_module = importlib.import_module("pdfgc.preprocessing.run")
    config = _config(tmp_path, tmp_path / "out", pose_weights=str(stub_checkpoint))
    run_module._init_worker("dlib", {}, config.clip, str(tmp_path / "out"), str(tmp_path / "scratch"), False)
    try:
        assert isinstance(run_module._worker["pose"], Deep3DPoseEstimator)
    finally:
        run_module._worker.clear()


def test_missing_weights_stop_the_run_before_any_work(one_clip, tmp_path):
    with pytest.raises(PdfgcError, match="checkpoint file not found"):
        run(_config(one_clip, tmp_path / "out", pose_weights=str(tmp_path / "nope.pth")))
    assert not (tmp_path / "out").exists()
