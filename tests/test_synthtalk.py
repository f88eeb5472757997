"""SynthTalk: determinism, ground truth vs. drawing, samples, export round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.synthtalk import SynthTalkDataModule, SynthTalkDataset, paste_eyes, to_image
from pdfgc.synthtalk import render as rd
from pdfgc.synthtalk.clips import draw_factors, render_clip
from pdfgc.synthtalk.speech import energy_envelope
from pdfgc.synthtalk.world import ClipPool, WorldConfig

SIZE = 64


def render_with(seed=0, speaker=0, size=SIZE, **overrides):
    """One frame of ``speaker`` with some factors overridden (a frontal neutral baseline)."""
    f = draw_factors(seed, speaker, 0, 1)
    factors = {"pose": np.zeros((1, 6), np.float32), "gaze": np.zeros((1, 4), np.float32),
               "blink": np.zeros((1, 2), np.float32), "mouth": np.array([[0.1, 0.0]], np.float32),
               "effects": np.zeros_like(f["effects"])}
    factors.update({k: np.asarray(v, np.float32) for k, v in overrides.items()})
    img = rd.render(f["identity"], factors["pose"], factors["gaze"], factors["blink"], factors["mouth"],
                    factors["effects"], size)[0].astype(np.float32)
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


def landmarks_with(size=SIZE, **overrides):
    """The 70 landmarks of the frame ``render_with(**overrides)`` draws, and that frame."""
    img, ident, f = render_with(size=size, **overrides)
    points = rd.landmarks(ident, f["pose"], f["gaze"], f["blink"], f["mouth"], f["effects"], size)[0]
    return points, img, ident


def test_landmarks_lie_on_the_drawn_iris_lips_and_lids():
    size = 224
    points, img, ident = landmarks_with(size=size, gaze=[[0.4, 0.1, 0.4, 0.1]], mouth=[[0.8, 0.0]])
    assert points.shape == (rd.NUM_LANDMARKS, 2) == (70, 2)
    colour = lambda p: img[int(p[1]), int(p[0])]  # noqa: E731  (x, y) pixel centres at +0.5
    for k in (68, 69):  # the iris centres sit on the pupil, which moved right with the gaze
        assert np.linalg.norm(colour(points[k]) - np.asarray(rd.idm.PUPIL) * 255) < 40
    assert points[68, 0] > (points[36, 0] + points[39, 0]) / 2, "gaze right: iris right of the eye centre"
    # Inner lips bracket the dark mouth interior of an open mouth; the outer lips lie on lip colour.
    gap = (points[61:64, 1].mean(), points[65:68, 1].mean())
    mid = points[[62, 66]].mean(0)
    assert gap[1] - gap[0] > 8
    assert np.linalg.norm(colour(mid) - np.asarray(rd.idm.MOUTH_INTERIOR) * 255) < 60
    lip = np.asarray(ident.lip) * 255
    between = (points[51] + points[62]) / 2  # the middle of the upper lip
    assert np.linalg.norm(colour(between) - lip) < 60


def test_landmarks_follow_blink_opening_and_yaw():
    opened, _, _ = landmarks_with(blink=[[0.0, 0.0]])
    shut, _, _ = landmarks_with(blink=[[1.0, 0.0]])
    lid_gap = lambda p, top, bottom: float(np.abs(p[bottom, 1] - p[top, 1]))  # noqa: E731
    assert lid_gap(opened, 37, 41) > 1.0 and lid_gap(shut, 37, 41) < 0.5, "eye A's lids meet when it blinks"
    assert lid_gap(shut, 43, 47) == pytest.approx(lid_gap(opened, 43, 47)), "eye B stays open"
    closed_mouth, _, _ = landmarks_with(mouth=[[0.0, 0.0]])
    open_mouth, _, _ = landmarks_with(mouth=[[1.0, 0.0]])
    assert lid_gap(open_mouth, 62, 66) > lid_gap(closed_mouth, 62, 66) + 3
    left, _, _ = landmarks_with(pose=[[-0.4, 0, 0, 0, 0, 0]])
    right, _, _ = landmarks_with(pose=[[0.4, 0, 0, 0, 0, 0]])
    nose_offset = lambda p: p[30, 0] - p[8, 0]  # noqa: E731  the nose tip relative to the chin
    assert nose_offset(right) > nose_offset(left) + 2, "positive yaw turns the nose to the image right"


def test_the_pool_keeps_landmarks_in_cropped_frame_pixels():
    clip = render_clip(0, 2, 0, 3, SIZE)
    pool = ClipPool.from_clips([clip], SIZE)
    from pdfgc.video import crop_box

    top, left, side = crop_box(SIZE)
    expected = (clip.landmarks - [left, top]) * (SIZE / side)
    assert pool.landmarks.shape == (1, 3, 70, 2)
    assert np.allclose(pool.landmarks[0], expected, atol=1e-4)


def test_the_pool_cache_round_trips_and_a_damaged_file_is_rendered_again(tmp_path, monkeypatch):
    from pdfgc.synthtalk import world

    renders, render = [], world.render_clips
    monkeypatch.setattr(world, "render_clips", lambda *a, **k: renders.append(1) or render(*a, **k))
    cfg = WorldConfig(0, 2, 1, 1, 0.2, SIZE)
    rendered = world.load_or_render_pool(cfg, "test", tmp_path)
    (path,) = tmp_path.glob("synthtalk_test_*.pt")
    cached = world.load_or_render_pool(cfg, "test", tmp_path)  # memory-mapped, not rendered
    assert len(renders) == 1
    for key in ClipPool.ARRAYS:
        assert np.array_equal(getattr(cached, key), getattr(rendered, key)), key
    assert cached.images.flags.writeable  # copy-on-write: an edit stays in this process
    cached.images[0, 0, 0, 0, 0] ^= 255
    assert np.array_equal(world.load_or_render_pool(cfg, "test", tmp_path).images, rendered.images)

    path.write_bytes(path.read_bytes()[:1000])  # damaged (atomic writes never leave a partial file)
    again = world.load_or_render_pool(cfg, "test", tmp_path)
    assert len(renders) == 2 and np.array_equal(again.images, rendered.images)
    assert np.array_equal(world.ClipPool.load(path).images, rendered.images)  # rewritten whole


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


def test_a_wider_opening_shows_more_mouth_interior():
    from pdfgc.synthtalk import identity as idm

    # A light-skinned speaker, so that "interior-coloured" cannot be confused with skin.
    speaker = max(range(10), key=lambda k: float(idm.sample_identity(0, k).skin.sum()))
    counts = []
    for opening in (0.0, 0.3, 0.6, 1.0):
        img, ident, f = render_with(speaker=speaker, mouth=[[opening, 0.0]])
        x0, y0, x1, y1 = rd.mouth_box(ident, f["pose"], SIZE)[0].round().astype(int)
        patch = img[y0:y1, x0:x1]
        counts.append(int((np.linalg.norm(patch - idm.MOUTH_INTERIOR * 255, axis=-1) < 45).sum()))
    assert counts[0] == 0 and counts[1] < counts[2] < counts[3], counts
    assert counts[3] >= 12, "a fully open mouth spans several pixels at 64 px"


def test_emotion_classes_move_brows_and_mouth_corners_as_documented():
    """Measured on the drawing (128 px, closed mouth, full intensity): the brow height (centroid
    of brow-coloured pixels above the eyes) and the mouth seam (darkest row per column near the
    mouth) at the outer fifths of the mouth vs its centre."""
    from pdfgc.synthtalk import motion as mo

    size, speaker = 128, 5  # speaker 5: dark short hair, brows and lips contrast with the skin
    _, ident, f = render_with(speaker=speaker)
    eb = rd.eye_boxes(ident, f["pose"], size)[0]
    x0, x1 = int(eb[0, 0]), int(eb[1, 2])
    centre = rd.project(ident, f["pose"], np.array([[[0.0, ident.mouth_y, 1.0]]]), size)[0, 0]
    unit = ident.unit * size
    eye_row = centre[1] - (ident.mouth_y - ident.eye_y) * unit  # frontal pose: rows are linear in v
    # from well above the highest brow down to just above the upper lashes (lash-dark is brow-like)
    by0, by1 = int(eye_row - (ident.brow_gap + 0.3) * unit), int(eye_row - (ident.eye_top + 0.035) * unit)
    my0, my1 = int(centre[1] - 0.2 * unit), int(centre[1] + 0.2 * unit)
    mx0, mx1 = int(centre[0] - 0.5 * unit), int(centre[0] + 0.5 * unit)
    geometry = {}
    for k, name in enumerate(mo.EMOTIONS):
        img, _, _ = render_with(speaker=speaker, mouth=[[0.0, 0.0]], size=size,
                                effects=mo.emotion_effects(np.array([k]), np.array([1.0])))
        brows = np.linalg.norm(img[by0:by1, x0:x1] - ident.brow * 255, axis=-1) < 45
        brow_y = np.nonzero(brows)[0].mean() + by0
        lum = img[my0:my1, mx0:mx1].mean(-1)
        cols = np.nonzero(lum.min(0) < lum.max(0) - 25)[0]  # columns crossed by the lip seam
        seam = np.argmin(lum, 0).astype(float)
        n = len(cols) // 5
        geometry[name] = (brow_y, seam[cols[:n]].mean() - seam[cols[2 * n:3 * n]].mean(),
                          seam[cols[-n:]].mean() - seam[cols[2 * n:3 * n]].mean())
    n = geometry["neutral"]
    assert geometry["surprised"][0] < n[0] - 1.5  # brows raised (y grows downward)
    assert geometry["fear"][0] < n[0] - 0.5
    assert geometry["angry"][0] > n[0] + 1.0  # brows lowered
    for side in (1, 2):
        assert geometry["happy"][side] < n[side] - 1.5  # corners up
        assert geometry["sad"][side] > n[side] + 1.0  # corners down
    assert geometry["contempt"][2] < geometry["contempt"][1] - 1.0  # one-sided: image-right corner up


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


def test_the_lead_is_the_peak_of_the_cross_correlation():
    from pdfgc.synthtalk.speech import MOUTH_LEAD_S

    lags = range(-3, 4)
    scores = np.zeros(len(lags))
    for speaker in range(6):
        sp = draw_factors(0, speaker, 1, 125)["speech"]
        energy = energy_envelope(sp.waveform, 125)
        o = sp.mouth[:, 0]
        for i, lag in enumerate(lags):
            a, b = (o[: len(o) - lag], energy[lag:]) if lag >= 0 else (o[-lag:], energy[:lag])
            scores[i] += np.corrcoef(a, b)[0, 1]
    assert list(lags)[int(np.argmax(scores))] == round(MOUTH_LEAD_S * 25) == 1


def test_factors_are_independent_across_clips():
    """Clip-level means and per-frame values of different factors are uncorrelated."""
    rows = []
    for speaker in range(40):
        for clip in range(2):
            f = draw_factors(3, speaker, clip, 25)
            rows.append(np.concatenate([f["pose"][:, :3].mean(0), f["gaze"][:, :2].mean(0), f["blink"].max(0)[:1],
                                        f["speech"].mouth.mean(0), [f["emotion"] / 7.0,
                                        f["emotion_intensity"].mean(), f["identity"].eye_x]]))
    x = np.array(rows)
    groups = [[0, 1, 2], [3, 4], [5], [6, 7], [8, 9], [10]]  # pose, gaze, blink, mouth, emotion, identity
    c = np.abs(np.corrcoef(x.T))
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert c[np.ix_(a, b)].max() < 0.45, (a, b)  # 80 clips: |r| > 0.45 has p < 1e-4


@pytest.fixture(scope="module")
def small_module(tmp_path_factory):
    cache = tmp_path_factory.mktemp("st")
    return lambda mode: SynthTalkDataModule(mode=mode, num_speakers=4, heldout_speakers=2, clips_per_speaker=1,
                                            clip_seconds=1.0, batch_size=2, cache_dir=str(cache), render_workers=1)


@pytest.mark.parametrize("mode,keys", [
    ("reconstruction", {"source": (2, 3, 64, 64), "driver": (2, 3, 64, 64), "gt_pose": (2, 6)}),
    ("fine_motion", {"frames": (2, 5, 3, 64, 64), "mels": (2, 5, 1, 80, 20), "pose": (2, 5, 6),
                     "eye_anchor": (2, 3, 64, 64), "eye_open": (2, 2), "eye_gaze": (2, 2), "gt_gaze": (2, 5, 4)}),
    ("emotion", {"frames": (2, 5, 3, 64, 64), "mels": (2, 5, 1, 80, 20), "source": (2, 3, 64, 64),
                 "gt_emotion": (2, 5)}),
    ("landmarks", {"image": (2, 3, 64, 64), "landmarks": (2, 70, 2), "pose": (2, 6), "eyes": (2, 6),
                   "gt_pose": (2, 6)}),
])
def test_samples_have_the_contract_keys_and_shapes(small_module, mode, keys):
    batch = next(iter(small_module(mode).train_dataloader()))
    for key, shape in keys.items():
        assert tuple(batch[key].shape) == shape, key
    lead = (2,) if mode in ("reconstruction", "landmarks") else (2, 5)  # ground truth describes driver / frames
    gt = {"gt_pose": (6,), "gt_gaze": (4,), "gt_blink": (2,), "gt_mouth": (2,), "gt_emotion": (),
          "gt_emotion_intensity": ()}
    for key, tail in gt.items():
        assert tuple(batch[key].shape) == lead + tail, key
    assert batch["gt_emotion"].dtype == torch.int64 and batch["gt_pose"].dtype == torch.float32
    assert isinstance(batch["clip"][0], str)
    images = [v for k, v in batch.items() if k in ("source", "driver", "frames", "image")]
    assert all(v.min() >= -1 and v.max() <= 1 and v.dtype == torch.float32 for v in images)
    assert batch["speaker"].dtype == torch.int64


def test_landmark_samples_carry_the_pose_and_eye_state_of_their_frame(small_module):
    """Stage 0's read-out labels are the frame's truth on the scale real data has: pose as
    pose.npy, openness 1 - closure, iris offsets that grow with the gaze angle."""
    ds = small_module("landmarks").dataset("train", 40)
    samples = [ds[i] for i in range(40)]
    for s in samples:
        assert torch.equal(s["pose"], s["gt_pose"])
        assert torch.allclose(s["eyes"][:2], 1.0 - s["gt_blink"], atol=1e-6)
    gaze = torch.stack([s["gt_gaze"] for s in samples])  # (x0, y0, x1, y1) rad
    iris = torch.stack([s["eyes"][2:] for s in samples])  # (x, y) of eye A, then eye B, eye widths
    for dim in range(4):
        assert np.corrcoef(gaze[:, dim], iris[:, dim])[0, 1] > 0.99, dim


def test_heldout_speakers_are_disjoint_and_samples_reproducible(small_module):
    dm = small_module("reconstruction")
    assert set(dm.pool("train").speakers).isdisjoint(dm.pool("test").speakers)
    ds = dm.dataset("train", 10)
    assert torch.equal(ds[3]["driver"], ds[3]["driver"])
    assert not torch.equal(ds[3]["driver"], ds[4]["driver"])


def test_eye_triplets_from_the_datamodule(small_module):
    dm = small_module("fine_motion")
    ds = dm.dataset("train", 20)
    for i in range(6):
        s = ds[i]
        neg, pos, anc = (((s[k].permute(1, 2, 0) + 1) * 127.5).round().numpy()
                         for k in ("eye_negative", "eye_positive", "eye_anchor"))
        changed = np.abs(anc - neg).max(-1) > 0
        same_as_pos = np.abs(anc - pos).max(-1) == 0
        assert (changed <= same_as_pos).all()  # every changed pixel comes from the positive
        rows = np.nonzero(changed.any(1))[0]
        if len(rows):  # the strip is a horizontal band around the eyes, not the whole face
            assert rows.max() - rows.min() < SIZE // 3
        assert s["eye_open"].shape == (2,) and s["frames"].shape[0] == 5


def test_source_from_speaker_takes_the_source_from_another_clip_of_the_same_speaker(tmp_path):
    """source_from=speaker: the source frame is a frame of another clip of the driver's speaker;
    clip (the default): a frame of the driver's own clip. Anything else is refused."""
    dm = SynthTalkDataModule(num_speakers=2, heldout_speakers=1, clips_per_speaker=2, clip_seconds=1.0,
                             cache_dir=str(tmp_path), render_workers=1)
    pool = dm.pool("train")
    frames = torch.stack([to_image(pool.images[c]) for c in range(len(pool))])  # (C, F, 3, S, S)
    index = {pool.name(c): c for c in range(len(pool))}

    def source_clip(sample) -> int:
        hits = (frames == sample["source"]).flatten(2).all(-1).nonzero()
        assert len(hits), "the source is a frame of the pool"
        return int(hits[0, 0])

    for mode in ("reconstruction", "emotion"):
        for source_from in ("speaker", "clip"):
            ds = SynthTalkDataset(pool, mode, 12, source_from=source_from)
            for i in range(12):
                sample = ds[i]
                c, src = index[sample["clip"]], source_clip(sample)
                assert pool.speakers[src] == pool.speakers[c] == int(sample["speaker"])
                assert (src != c) if source_from == "speaker" else (src == c), (mode, source_from, i)
    with pytest.raises(ValueError, match="source_from"):
        SynthTalkDataset(pool, "reconstruction", 4, source_from="video")


def test_lip_steps_keep_their_minimum_gap(small_module):
    ds = small_module("fine_motion").dataset("train", 10)
    rng = np.random.default_rng(0)
    for _ in range(50):
        ts = ds.lip_steps(rng, 25)
        assert len(ts) == 5 and ts.max() < 25 and np.diff(ts).min() >= ds.lip_min_gap


def test_world_clip_api_gives_full_clips():
    world = WorldConfig(seed=0, num_speakers=2, heldout_speakers=1, clips_per_speaker=1, clip_seconds=0.4,
                        image_size=SIZE)
    clips = list(world.clips("test"))
    assert [c.speaker for c in clips] == [2]
    c = clips[0]
    assert c.frames.shape == (10, SIZE, SIZE, 3) and c.eye_boxes.shape == (10, 2, 4)
    assert c.pose.shape == (10, 6) and c.gaze.shape == (10, 4) and c.blink.shape == (10, 2)
    assert c.mouth.shape == (10, 2) and c.emotion_intensity.shape == (10,) and 0 <= c.emotion < 8
    assert np.array_equal(world.render_clip(2, 0).frames, c.frames)
    gt = c.as_dict()
    assert gt["emotion"].shape == (10,) and gt["frames"] is c.frames and gt["mouth_drawn"].shape == (10, 2)


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
    # split=all adds the held-out speakers to the same index, marked as test
    export(tmp_path, world, "all", "processed", progress=False)
    entries = [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]
    assert [e["split"] for e in entries] == ["train", "train", "test"] and entries[2]["clip"] == "s0002_c00"


def test_mp4_export_has_audio_of_the_clip_length(tmp_path):
    from pdfgc.synthtalk.export import write_mp4_clip
    from pdfgc.video import probe

    clip = render_clip(0, 0, 0, 25, SIZE)
    info = probe(write_mp4_clip(tmp_path, clip))
    assert info["num_frames"] == 25 and info["has_audio"]
    assert abs(info["audio_duration"] - 1.0) < 0.05
