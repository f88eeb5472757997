"""The face_alignment landmark backend offline: face-alignment's own S3FD and 2D-FAN classes with
random weights, saved as the state_dict files face-alignment 1.5 reads from a torch hub folder,
run on astronaut frames with every download path blocked; and what ``landmarks.backend=auto``
picks."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest
import torch

from astronaut_clips import moving_clip
from pdfgc.errors import PdfgcError
from pdfgc.faces.landmarks import FACE_ALIGNMENT_FILES, FaceAlignmentLandmarkDetector, build_landmark_detector
from pdfgc.preprocessing import PreprocessConfig, run
from pdfgc.preprocessing.run import landmark_backend
from pdfgc.synthtalk.speech import synthesize_speech
from pdfgc.video import write_video

pytest.importorskip("face_alignment")


def _rigged_s3fd(faces: bool):
    """S3FD with random trunk weights and constant heads: every detection level says
    "background", except (``faces=True``) the coarsest, whose 512 px anchors (stride 128: a 3 x 3
    grid on a 224 frame) all say "face" with their boxes unchanged. Non-maximum suppression
    keeps 2 of those 9 boxes, so every frame has exactly two faces (of equal size)."""
    from face_alignment.detection.sfd.net_s3fd import s3fd

    net = s3fd()
    with torch.no_grad():
        for name, conv in net.named_children():
            if name.endswith(("mbox_conf", "mbox_loc")):
                conv.weight.zero_()
                conv.bias.zero_()
            if name.endswith("mbox_conf"):
                conv.bias[1 if faces and name.startswith("conv7_2") else 0] = 10.0
    return net


def _hub(folder, faces: bool = True):
    """A torch hub folder with face-alignment's two files (random FAN, rigged S3FD)."""
    from face_alignment.models import FAN

    torch.manual_seed(0)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(FAN(4).state_dict(), checkpoints / FACE_ALIGNMENT_FILES[0])
    torch.save(_rigged_s3fd(faces).state_dict(), checkpoints / FACE_ALIGNMENT_FILES[1])
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    return _hub(tmp_path_factory.mktemp("hub"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every way face-alignment or torch.hub could fetch a file raises."""
    import face_alignment.detection.sfd.sfd_detector as sfd_detector
    import face_alignment.utils as fa_utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:1]}")

    for module, name in ((torch.hub, "download_url_to_file"), (torch.hub, "load_state_dict_from_url"),
                         (fa_utils, "download_url_to_file"), (sfd_detector, "load_state_dict_from_url"),
                         (socket.socket, "connect"), (socket, "create_connection")):
        monkeypatch.setattr(module, name, refuse)


def test_random_weights_in_a_hub_folder_run_on_astronaut_frames(hub):
    detector = build_landmark_detector("face_alignment", weights_dir=str(hub), device="cpu", batch_size=2)
    assert isinstance(detector, FaceAlignmentLandmarkDetector)
    frames, _ = moving_clip([0.0, 0.2], [1.0, 0.9], np.zeros((2, 2)))
    found = detector.detect(frames)
    assert found.landmarks.shape == (2, 68, 2) and found.landmarks.dtype == np.float32
    assert found.face_counts.tolist() == [2, 2] and found.face_counts.dtype == np.int64
    assert np.isfinite(found.landmarks).all()
    # the face kept is one of the two face-alignment itself returns for the frame
    raw, _, boxes = detector._model.get_landmarks_from_batch(torch.from_numpy(frames[:1]).permute(0, 3, 1, 2).float(),
                                                           return_bboxes=True)
    candidates = np.asarray(raw[0], np.float32).reshape(-1, 68, 2)
    assert len(candidates) == 2 == len(boxes[0])
    assert min(np.abs(found.landmarks[0] - c).max() for c in candidates) == 0.0


def test_frames_without_a_face_are_nan_rows(tmp_path):
    detector = build_landmark_detector("face_alignment", weights_dir=str(_hub(tmp_path, faces=False)), device="cpu")
    found = detector.detect(np.zeros((2, 224, 224, 3), np.uint8))
    assert found.face_counts.tolist() == [0, 0] and np.isnan(found.landmarks).all()


def test_missing_and_wrong_weight_files_fail_with_one_line(tmp_path, hub):
    with pytest.raises(PdfgcError, match="face-alignment weights not found") as info:
        build_landmark_detector("face_alignment", weights_dir=str(tmp_path), device="cpu")
    assert FACE_ALIGNMENT_FILES[0] in str(info.value) and "\n" not in str(info.value)
    wrong = tmp_path / "wrong" / "checkpoints"
    wrong.mkdir(parents=True)
    for name in FACE_ALIGNMENT_FILES:  # the detector's weights where the FAN's belong, and the other way round
        (wrong / name).write_bytes((hub / "checkpoints" / FACE_ALIGNMENT_FILES[name == FACE_ALIGNMENT_FILES[0]]).read_bytes())
    with pytest.raises(PdfgcError, match="cannot load the face-alignment weights") as info:
        build_landmark_detector("face_alignment", weights_dir=str(wrong.parent), device="cpu")
    assert "\n" not in str(info.value)


# --- landmarks.backend=auto --------------------------------------------------------------------


def test_auto_picks_face_alignment_where_its_weights_and_a_device_are(hub, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torch's own hub cache: empty
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    caplog.set_level(logging.WARNING, logger="pdfgc.preprocess")
    fa = {"weights_dir": str(hub), "batch_size": 8}
    assert landmark_backend({"backend": "auto", "face_alignment": fa}) == \
        ("face_alignment", {**fa, "device": "cuda"})
    assert caplog.records == []
    # a CPU given explicitly: face_alignment, with a warning about its speed there
    assert landmark_backend({"backend": "auto", "face_alignment": {**fa, "device": "cpu"}})[0] == "face_alignment"
    assert "face_alignment on the CPU runs at about 1.7 frames/s" in caplog.text
    caplog.clear()
    # weights neither in weights_dir nor in torch's cache: dlib, one line saying why
    assert landmark_backend({"backend": "auto", "face_alignment": {}, "dlib": {"upsample": 1}}) == ("dlib", {"upsample": 1})
    (record,) = caplog.records
    assert record.getMessage().startswith("landmarks: dlib, not face_alignment: face-alignment weights not found in "
                                          f"{tmp_path / 'torch' / 'hub' / 'checkpoints'}")
    caplog.clear()
    # weights in torch's own cache are found there
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "hub").symlink_to(hub, target_is_directory=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    assert landmark_backend({"backend": "auto"})[0] == "face_alignment"
    # no GPU and device auto: dlib (about 100 times faster on a CPU), saying so
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert landmark_backend({"backend": "auto", "face_alignment": fa})[0] == "dlib"
    assert "no CUDA device" in caplog.text and "landmarks.backend=face_alignment uses it anyway" in caplog.text


def test_preprocess_runs_with_face_alignment(hub, tmp_path):
    frames, _ = moving_clip(np.zeros(4), np.ones(4), np.zeros((4, 2)))
    clip = write_video(tmp_path / "in" / "bob.mp4", frames, fps=25,
                       audio=synthesize_speech(np.random.default_rng(0), 4).waveform)
    config = PreprocessConfig.from_mapping({
        "input_dir": str(clip), "output_dir": str(tmp_path / "out"), "min_frames": 4, "progress": False,
        "landmarks": {"backend": "face_alignment", "face_alignment": {"weights_dir": str(hub), "device": "cpu"}}})
    # the rigged detector sees two faces in every frame: the clip is rejected for it
    with pytest.raises(PdfgcError, match=r"clip rejected \(several_faces\)"):
        run(config)
