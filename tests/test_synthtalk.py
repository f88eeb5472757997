"""SynthTalk: determinism, ground truth vs. drawing, samples, export round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.synthtalk import SynthTalkDataModule, SynthTalkDataset, paste_eyes
from pdfgc.synthtalk import render as rd
from pdfgc.synthtalk.clips import draw_factors, render_clip
from pdfgc.synthtalk.speech import energy_envelope
from pdfgc.synthtalk.world import ClipPool, WorldConfig

SIZE = 64


def render_with(seed=0, speaker=0, **overrides):
    """One frame of ``speaker`` with some factors overridden (a frontal neutral baseline)."""
    f = draw_factors(seed, speaker, 0, 1)
    factors = {"pose": np.zeros((1, 6), np.float32), "gaze": np.zeros((1, 4), np.float32),
               "blink": np.zeros((1, 2), np.float32), "mouth": np.array([[0.1, 0.0]], np.float32),
               "effects": np.zeros_like(f["effects"])}
    factors.update({k: np.asarray(v, np.float32) for k, v in overrides.items()})
    img = rd.render(f["identity"], factors["pose"], factors["gaze"], factors["blink"], factors["mouth"],
                    factors["effects"], SIZE)[0].astype(np.float32)
    return img, f["identity"], factors


def test_clips_are_deterministic_from_the_seed():
    a, b = render_clip(0, 3, 1, 10, SIZE), render_clip(0, 3, 1, 10, SIZE)
    c = render_clip(1, 3, 1, 10, SIZE)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.waveform, b.waveform)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (10, SIZE, SIZE, 3) and a.frames.dtype == np.uint8
    assert a.waveform.shape == (10 * 640,) and a.mel.shape[1] == 80


def test_a_closed_lid_covers_the_iris_and_an_open_one_shows_it():
    open_img, ident, f = render_with(blink=[[0.0, 0.0]])
    closed_img, _, _ = render_with(blink=[[1.0, 1.0]])
    x0, y0, x1, y1 = rd.eye_boxes(ident, f["pose"], SIZE)[0, 0].round().astype(int)
    iris = np.asarray(ident.iris) * 255

    def iris_pixels(img):
        patch = img[y0:y1, x0:x1]
        return int((np.linalg.norm(patch - iris, axis=-1) < 40).sum())

    assert iris_pixels(open_img) > 2
    assert iris_pixels(closed_img) == 0


def test_positive_yaw_moves_the_face_toward_the_image_right():
    _, ident, f = render_with()
    nose = np.array([[[0.0, ident.nose_y, 1.0]]], np.float32)
    left = rd.project(ident, np.array([[-0.4, 0, 0, 0, 0, 0]], np.float32), nose, SIZE)[0, 0, 0]
    right = rd.project(ident, np.array([[0.4, 0, 0, 0, 0, 0]], np.float32), nose, SIZE)[0, 0, 0]
    assert right > left + 2


def test_gaze_right_moves_the_pupil_right():
    def iris_centroid_x(img, ident, pose):
        x0, y0, x1, y1 = rd.eye_boxes(ident, pose, SIZE)[0, 0].round().astype(int)
        patch = img[y0:y1, x0:x1]
        w = np.linalg.norm(patch - np.asarray(ident.iris) * 255, axis=-1) < 60
        assert w.sum() > 0
        return (w * np.arange(patch.shape[1])).sum() / w.sum()

    left, ident, f = render_with(gaze=[[-0.5, 0, -0.5, 0]])
    right, _, _ = render_with(gaze=[[0.5, 0, 0.5, 0]])
    assert iris_centroid_x(right, ident, f["pose"]) > iris_centroid_x(left, ident, f["pose"]) + 0.5


def test_a_wider_opening_changes_more_of_the_mouth_region():
    closed, ident, f = render_with(mouth=[[0.0, 0.0]])
    half, _, _ = render_with(mouth=[[0.5, 0.0]])
    opened, _, _ = render_with(mouth=[[1.0, 0.0]])
    x0, y0, x1, y1 = rd.mouth_box(ident, f["pose"], SIZE)[0].round().astype(int)
    moved = lambda img: int((np.abs(img - closed).max(-1) > 20).sum())  # noqa: E731
    outside = np.ones(closed.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert 0 < moved(half) < moved(opened)
    assert np.abs(opened - closed).max(-1)[outside].max() < 20, "only the mouth region changes"


def test_emotions_change_the_face():
    neutral, ident, f = render_with()
    from pdfgc.synthtalk import motion as mo

    frames = [render_with(effects=mo.emotion_effects(np.array([k]), np.array([1.0])))[0] for k in range(1, 8)]
    diffs = [np.abs(fr - neutral).mean() for fr in frames]
    assert min(diffs) > 0.2, diffs
    pairwise = [np.abs(frames[i] - frames[j]).mean() for i in range(7) for j in range(i + 1, 7)]
    assert min(pairwise) > 0.05


def test_the_mouth_follows_the_audio_and_leads_it_by_one_frame():
    corr = {0: [], 1: []}
    for speaker in range(4):
        sp = draw_factors(0, speaker, 0, 100)["speech"]
        energy = energy_envelope(sp.waveform, 100)
        for lag in corr:
            corr[lag].append(np.corrcoef(sp.mouth[: 100 - lag, 0], energy[lag:])[0, 1])
    assert np.mean(corr[1]) > 0.7
    assert np.mean(corr[1]) > np.mean(corr[0]), "the opening at frame t matches the sound at t+1"


@pytest.fixture(scope="module")
def small_module(tmp_path_factory):
    cache = tmp_path_factory.mktemp("st")
    return lambda mode: SynthTalkDataModule(mode=mode, num_speakers=4, heldout_speakers=2, clips_per_speaker=1,
                                            clip_seconds=1.0, batch_size=2, cache_dir=str(cache), render_workers=1)


@pytest.mark.parametrize("mode,keys", [
    ("reconstruction", {"source": (2, 3, 64, 64), "driver": (2, 3, 64, 64), "gt_pose": (2, 6)}),
    ("fine_motion", {"frames": (2, 5, 3, 64, 64), "mels": (2, 5, 1, 80, 20), "pose": (2, 5, 6),
                     "eye_anchor": (2, 3, 64, 64), "eye_open": (2, 2), "gt_gaze": (2, 5, 4)}),
    ("emotion", {"frames": (2, 5, 3, 64, 64), "mels": (2, 5, 1, 80, 20), "source": (2, 3, 64, 64),
                 "gt_emotion": (2, 5)}),
])
def test_samples_have_the_contract_keys_and_shapes(small_module, mode, keys):
    batch = next(iter(small_module(mode).train_dataloader()))
    for key, shape in keys.items():
        assert tuple(batch[key].shape) == shape, key
    images = [v for k, v in batch.items() if k in ("source", "driver", "frames")]
    assert all(v.min() >= -1 and v.max() <= 1 and v.dtype == torch.float32 for v in images)
    assert batch["speaker"].dtype == torch.int64


def test_heldout_speakers_are_disjoint_and_samples_reproducible(small_module):
    dm = small_module("reconstruction")
    assert set(dm.pool("train").speakers).isdisjoint(dm.pool("test").speakers)
    ds = dm.dataset("train", 10)
    assert torch.equal(ds[3]["driver"], ds[3]["driver"])
    assert not torch.equal(ds[3]["driver"], ds[4]["driver"])


def test_eye_anchor_is_the_negative_with_the_positives_eye_strip():
    rng = np.random.default_rng(0)
    neg, pos = rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    boxes = np.array([[10.2, 20.5, 30.0, 28.0], [34.0, 21.0, 54.7, 27.9]], np.float32)
    anchor = paste_eyes(neg, pos, boxes)
    inside = np.zeros((64, 64), bool)
    inside[20:28, 10:55] = True
    assert np.array_equal(anchor[inside], pos[inside])
    assert np.array_equal(anchor[~inside], neg[~inside])


def test_processed_export_round_trips(tmp_path):
    from pdfgc.synthtalk.export import export
    import cv2

    world = WorldConfig(seed=0, num_speakers=2, heldout_speakers=1, clips_per_speaker=1, clip_seconds=0.6,
                        image_size=SIZE)
    root = export(tmp_path, world, "train", "processed", progress=False)
    entries = [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]
    assert [e["clip"] for e in entries] == ["s0000_c00", "s0001_c00"]
    clip = render_clip(0, 1, 0, world.num_frames, SIZE)
    e = entries[1]
    frame = cv2.cvtColor(cv2.imread(str(root / e["frames_dir"] / "0003.jpg")), cv2.COLOR_BGR2RGB)
    assert np.abs(frame.astype(float) - clip.frames[3]).mean() < 4  # JPEG quality 95
    assert np.allclose(np.load(root / e["spectrogram"]), clip.mel)
    assert np.allclose(np.load(root / e["pose"]), clip.pose)
    assert e["num_frames"] == world.num_frames == len(list((root / e["frames_dir"]).glob("*.jpg")))
    # a second export resumes: finished clips are not written twice
    export(tmp_path, world, "train", "processed", progress=False)
    assert len((root / "index.jsonl").read_text().splitlines()) == 2


def test_mp4_export_has_audio_of_the_clip_length(tmp_path):
    from pdfgc.synthtalk.export import write_mp4_clip
    from pdfgc.video import probe

    clip = render_clip(0, 0, 0, 25, SIZE)
    info = probe(write_mp4_clip(tmp_path, clip))
    assert info["num_frames"] == 25 and info["has_audio"]
    assert abs(info["audio_duration"] - 1.0) < 0.05
