"""preprocess.py / pdfgc.preprocessing: real clips (the astronaut portrait moved by known
similarities, speech-like audio, H.264 + AAC mp4) processed end to end with dlib, read back by
the datamodule; alignment, pose, resume, sharding, rejections and the command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from astronaut_clips import moving_clip, template_portrait
from conftest import compose_train
from datamodules.voxceleb2 import MODES, VoxCeleb2DataModule
from pdfgc import audio as audio_fe
from pdfgc.errors import PdfgcError
from pdfgc.faces import ALIGN_TEMPLATE_224, build_landmark_detector
from pdfgc.faces.align import anchor_points
from pdfgc.preprocessing import REASONS, PreprocessConfig, run
from pdfgc.preprocessing import clip as clip_module
from pdfgc.preprocessing.discover import ClipSource, SplitRule, discover_clips, load_split_rule, select_shard
from pdfgc.preprocessing.quality import QualityLimits, check_faces, fill_gaps, missing_runs
from pdfgc.preprocessing.records import JsonlAppender, read_jsonl
from pdfgc.synthtalk.speech import synthesize_speech
from pdfgc.training import run as train_run
from pdfgc.video import read_frames, write_video

ROOT = Path(__file__).resolve().parents[1]
T = 16  # frames per test clip (0.64 s)
ROLL_DEGREES = np.linspace(-10.0, 10.0, T)


def speech(num_frames: int, seed: int) -> np.ndarray:
    """Speech-like audio for ``num_frames`` frames (SynthTalk's synthesiser)."""
    return synthesize_speech(np.random.default_rng(seed), num_frames).waveform


def write_clip(path: Path, frames: np.ndarray, seed: int = 0, audio: bool = True) -> Path:
    return write_video(path, frames, fps=25, audio=speech(len(frames), seed) if audio else None)


def config(input_dir, output_dir, **overrides) -> PreprocessConfig:
    """A test run: dlib, short clips allowed, no progress bar."""
    options = dict(min_frames=8, progress=False, landmarks={"backend": "dlib", "dlib": {}})
    return PreprocessConfig.from_mapping({"input_dir": str(input_dir) if input_dir else None,
                                          "output_dir": str(output_dir), **options, **overrides})


def entries(root: Path, name: str = "index.jsonl") -> dict[str, dict]:
    return {f"{e['speaker']}/{e['clip']}": e for e in read_jsonl(root / name)}


# The VoxCeleb2-like tree: speaker id00001 (train, 2 clips), id00002 (test, 2 clips).
CLIPS = {
    # rotated 0.25 rad, scaled 0.8, shifted (12, -8) px, constant
    "dev/id00001/vidA/00001.mp4": (np.full(T, 0.25), np.full(T, 0.8), np.tile([12.0, -8.0], (T, 1))),
    # in-plane roll sweeping -10 .. 10 degrees
    "dev/id00001/vidB/00001.mp4": (np.radians(ROLL_DEGREES), np.full(T, 0.9), np.zeros((T, 2))),
    # the portrait as it is (already on the template)
    "test/id00002/vidC/00001.mp4": (np.zeros(T), np.ones(T), np.zeros((T, 2))),
    # drifting: a slow shift of ~10 px and a little rotation
    "test/id00002/vidD/00001.mp4": (np.full(T, -0.1), np.full(T, 0.85),
                                    np.stack([10 * np.sin(np.linspace(0, 2.5, T)), 6 * np.cos(np.linspace(0, 2.5, T))], 1)),
}


@pytest.fixture(scope="module")
def vox_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voxceleb2")
    for seed, (rel, motion) in enumerate(CLIPS.items()):
        frames, _ = moving_clip(*motion)
        write_clip(root / rel, frames, seed)
    return root


@pytest.fixture(scope="module")
def processed(vox_tree, tmp_path_factory):
    """(output root, summary) of one uninterrupted run over the tree."""
    out = tmp_path_factory.mktemp("processed")
    return out, run(config(vox_tree, out))


@pytest.fixture(scope="module")
def dlib_detector():
    return build_landmark_detector("dlib")


# --- end to end ------------------------------------------------------------------------------


def test_voxceleb2_tree_is_processed_into_the_layout(processed, vox_tree):
    out, summary = processed
    assert summary.processed == 4 and summary.rejected == {} and summary.found == 4
    index = entries(out)
    assert sorted(index) == ["id00001/vidA/00001", "id00001/vidB/00001", "id00002/vidC/00001", "id00002/vidD/00001"]
    assert {k: e["split"] for k, e in index.items()} == {
        "id00001/vidA/00001": "train", "id00001/vidB/00001": "train",
        "id00002/vidC/00001": "test", "id00002/vidD/00001": "test"}
    assert read_jsonl(out / "rejected.jsonl") == []
    assert not (out / ".partial").exists()
    for seed, key in enumerate(sorted(index)):
        e = index[key]
        assert e["num_frames"] == T and e["fps"] == 25 and e["duration"] == pytest.approx(T / 25)
        assert e["flags"] == [] and e["quality"]["face_fraction"] == 1.0 and e["quality"]["interpolated_frames"] == 0
        frames = read_frames(out / e["frames_dir"])
        assert frames.shape == (T, 224, 224, 3)
        assert sorted(p.name for p in (out / e["frames_dir"]).iterdir())[:2] == ["0000.jpg", "0001.jpg"]
        wav = audio_fe.load_audio(out / e["audio"])
        assert wav.shape == (T * 640,)
        # The speech survives the AAC round trip: correlation with what was muxed in.
        assert np.corrcoef(wav, speech(T, seed))[0, 1] > 0.9
        mel = np.load(out / e["spectrogram"])
        assert mel.shape == (audio_fe.num_stft_frames(T * 640), 80) and mel.dtype == np.float32
        # the stored audio's own front-end; PCM16 quantisation shows only in the first rows,
        # whose windows hold a few quiet samples
        gap = np.abs(mel - audio_fe.mel_spectrogram(wav))
        assert gap[8:].max() < 5e-3 and gap.mean() < 2e-4  # 0.5 dB at most, 0.02 dB on average
        assert np.load(out / e["pose"]).shape == (T, 6) and np.isfinite(np.load(out / e["pose"])).all()
        assert np.load(out / e["landmarks"]).shape == (T, 68, 2)
        eyes = np.load(out / e["eyes"])
        assert eyes.shape == (T, 6) and np.isfinite(eyes).all()
        assert 0.25 < eyes[:, :2].min() and eyes[:, :2].max() < 0.5  # open (~0.4: the portrait is stretched a little)
        assert np.abs(eyes[:, 2:]).max() < 0.25  # she looks into the camera: iris near the eye centre
        assert e["source"] == str(vox_tree / ("dev" if "id00001" in key else "test") / key.split("/", 1)[0]
                                  / f"{key.split('/', 1)[1]}.mp4")


@pytest.mark.parametrize("key", ["id00001/vidA/00001", "id00002/vidD/00001", "id00002/vidC/00001"])
def test_aligned_eyes_and_mouth_are_within_3px_of_the_template(processed, dlib_detector, key):
    out, _ = processed
    e = entries(out)[key]
    again = dlib_detector.detect(read_frames(out / e["frames_dir"]))
    err = np.linalg.norm(anchor_points(again.landmarks) - ALIGN_TEMPLATE_224, axis=-1)  # (T, 3) px
    assert err.max() < 3.0, f"{key}: max {err.max():.2f} px, mean {err.mean():.2f} px"
    # landmarks.npy is in the aligned frame: it agrees with the re-detection.
    stored = anchor_points(np.load(out / e["landmarks"]))
    assert np.abs(stored - anchor_points(again.landmarks)).max() < 2.0


def test_a_rotated_shifted_input_gives_the_same_aligned_crop(processed):
    out, _ = processed
    index = entries(out)
    plain = read_frames(out / index["id00002/vidC/00001"]["frames_dir"]).astype(np.float32)
    moved = read_frames(out / index["id00001/vidA/00001"]["frames_dir"]).astype(np.float32)
    face = (slice(20, 180), slice(40, 184))  # the face, away from replicated borders
    diff = np.abs(plain[:, face[0], face[1]] - moved[:, face[0], face[1]]).mean()
    assert diff < 6.0, f"mean |difference| {diff:.2f} grey levels"  # two H.264 + JPEG round trips, 0.8x resampling
    lm_plain = np.load(out / index["id00002/vidC/00001"]["landmarks"])
    lm_moved = np.load(out / index["id00001/vidA/00001"]["landmarks"])
    assert np.abs(anchor_points(lm_plain) - anchor_points(lm_moved)).max() < 2.0


def test_pose_follows_the_known_roll(processed):
    out, _ = processed
    pose = np.load(out / entries(out)["id00001/vidB/00001"]["pose"])
    roll = np.degrees(pose[:, 2] - pose[:, 2].mean())
    np.testing.assert_allclose(roll, ROLL_DEGREES - ROLL_DEGREES.mean(), atol=1.5)
    assert np.degrees(np.ptp(pose[:, :2], axis=0)).max() < 4.0  # in-plane: yaw and pitch stay
    # The aligned portrait is frontal and on the template: the labels are near zero.
    still = np.load(out / entries(out)["id00002/vidC/00001"]["pose"])
    assert np.degrees(np.abs(still[:, :3])).max() < 6.0 and np.abs(still[:, 3:5]).max() < 0.03


@pytest.mark.parametrize("mode", MODES)
def test_the_datamodule_reads_the_output_in_every_mode(processed, mode):
    out, _ = processed
    dm = VoxCeleb2DataModule(root=str(out), mode=mode, image_size=64, batch_size=2, num_workers=0,
                             pin_memory=False, val_samples=2)
    dm.setup()
    assert {k: sorted({r.speaker for r in v}) for k, v in dm.splits.items()} == {
        "train": ["id00001"], "val": ["id00002"], "test": ["id00002"]}
    for split in ("train", "val"):
        batch = next(iter(DataLoader(dm.dataset(split, 4), batch_size=2)))
        images = {"reconstruction": batch.get("source"), "landmarks": batch.get("image")}.get(mode, batch.get("frames"))
        assert images.shape[-3:] == (3, 64, 64) and images.dtype == torch.float32
        assert -1.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.1
        if mode == "landmarks":  # landmarks.npy through the crop: the eyes where the template puts them
            points = batch["landmarks"]
            assert points.shape == (2, 70, 2) and torch.isfinite(points[:, :68]).all()
            from pdfgc.faces import ALIGN_TEMPLATE_224
            from pdfgc.video import crop_points
            template = torch.from_numpy(crop_points(np.asarray(ALIGN_TEMPLATE_224[:2], np.float32), (224, 224), 64))
            eyes = torch.stack([points[:, 36:42].mean(1), points[:, 42:48].mean(1)], 1)
            assert (eyes - template).norm(dim=-1).max() < 3.0
        elif mode != "reconstruction":
            assert batch["mels"].shape[-2:] == (80, 20) and batch["mels"].abs().sum() > 0
        if mode == "fine_motion":
            assert batch["pose"].shape == (2, 5, 6) and torch.isfinite(batch["pose"]).all()
            assert batch["eye_open"].shape == (2, 2)


@pytest.mark.parametrize("stage", ["stage0_landmarks", "stage1", "stage2", "stage3"])
def test_the_output_feeds_a_training_step_of_each_stage(processed, stage, tmp_path):
    out, _ = processed
    overrides = [f"data.root={out}", "networks=small", "trainer=cpu", "data.batch_size=2", "data.val_samples=2",
                 "data.pin_memory=false", "~callbacks", "+trainer.fast_dev_run=true"]
    result = train_run(compose_train([f"experiment=voxceleb2/{stage}", *overrides], tmp_path), overrides=overrides)
    assert any(k.startswith("train/") for k in result["metrics"])
    assert all(np.isfinite(v) for v in result["metrics"].values())


# --- resume ----------------------------------------------------------------------------------


def test_a_second_run_skips_every_clip(processed, vox_tree):
    out, _ = processed
    before = (out / "index.jsonl").read_bytes()
    again = run(config(vox_tree, out))
    assert (again.processed, again.skipped_done, again.rejected) == (0, 4, {})
    assert (out / "index.jsonl").read_bytes() == before


def test_a_killed_run_recovers_to_the_same_index(processed, vox_tree, tmp_path, monkeypatch):
    reference, _ = processed
    out = tmp_path / "out"
    written = []
    real_write_wav = clip_module.write_wav

    def killed_on_the_third_clip(path, *args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C / SIGTERM while the third clip is half written
        written.append(path)
        return real_write_wav(path, *args, **kwargs)

    monkeypatch.setattr(clip_module, "write_wav", killed_on_the_third_clip)
    with pytest.raises(KeyboardInterrupt):
        run(config(vox_tree, out))
    monkeypatch.undo()
    assert len(entries(out)) == 2
    assert not list((out / ".partial").rglob("*.jpg"))  # the half-written clip was not published
    # What a hard kill can leave besides: a partial index line, a scratch folder, and a clip
    # folder published just before the kill but not yet indexed.
    with open(out / "index.jsonl", "a") as fh:
        fh.write('{"speaker": "id00002", "clip": "vidC/000')
    (out / ".partial" / "all" / "id00002__vidD__00001" / "frames").mkdir(parents=True)
    (out / ".partial" / "all" / "id00002__vidD__00001" / "frames" / "0000.jpg").write_bytes(b"half")
    stale = out / "id00002" / "vidC" / "00001" / "frames"
    stale.mkdir(parents=True)
    (stale / "9999.jpg").write_bytes(b"stale")

    resumed = run(config(vox_tree, out))
    assert (resumed.processed, resumed.skipped_done) == (2, 2)
    assert entries(out) == entries(reference)  # the same index as the uninterrupted run
    for line in (out / "index.jsonl").read_text().splitlines():
        json.loads(line)  # every line whole
    assert not (out / ".partial").exists()
    assert sorted(p.name for p in stale.iterdir()) == [f"{i:04d}.jpg" for i in range(T)]


def test_appender_cuts_a_partial_line_and_locks(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"b": ')
    with JsonlAppender(path) as log:
        log.append({"c": 3})
        with pytest.raises(PdfgcError, match="another preprocess run"):
            JsonlAppender(path)
    assert read_jsonl(path) == [{"a": 1}, {"c": 3}]


# --- sharding --------------------------------------------------------------------------------


def test_shards_are_disjoint_and_cover_the_list():
    sources = [ClipSource(f"/v/{i}.mp4", f"id{i % 97:05d}", f"v/{i:05d}", "train", True) for i in range(3000)]
    for n in (1, 3, 8):
        shards = [select_shard(sources, i, n) for i in range(n)]
        keys = [{s.key for s in shard} for shard in shards]
        assert sum(map(len, keys)) == len(sources) and set().union(*keys) == {s.key for s in sources}
        assert max(map(len, shards)) < 1.15 * len(sources) / n  # balanced
        # each clip's shard depends on its name only: a reordered list shards alike
        assert [s.key for s in select_shard(sources[::-1], 0, n)] == [s.key for s in shards[0]][::-1]
    with pytest.raises(PdfgcError, match="shard"):
        select_shard(sources, 3, 3)


def test_sharded_runs_merge_into_the_unsharded_index(processed, vox_tree, tmp_path):
    reference, _ = processed
    out = tmp_path / "out"
    first = run(config(vox_tree, out, shard=0, num_shards=2, num_workers=2))  # worker processes too
    assert not (out / "index.jsonl").exists()  # not merged before every shard is finished
    second = run(config(vox_tree, out, shard=1, num_shards=2))
    assert first.processed + second.processed == 4 and first.in_shard + second.in_shard == 4
    shard_keys = [set(entries(out, f"index.shard-000{i}-of-0002.jsonl")) for i in range(2)]
    assert not shard_keys[0] & shard_keys[1]
    assert entries(out) == entries(reference)  # merged by the last shard to finish
    run(config(None, out, merge=True))  # merging again changes nothing
    assert entries(out) == entries(reference)


# --- rejections ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A folder of one good clip, one with a short face gap and one per rejection reason."""
    root = tmp_path_factory.mktemp("messy")
    good, _ = moving_clip(np.zeros(T), np.full(T, 0.9), np.zeros((T, 2)))
    write_clip(root / "good" / "clip.mp4", good, 0)
    gap = good.copy()
    gap[6:8] = 128  # two frames without a face: interpolated
    write_clip(root / "gap" / "clip.mp4", gap, 1)
    long_gap = good.copy()
    long_gap[4:12] = 128  # eight: longer than max_gap_frames
    write_clip(root / "longgap" / "clip.mp4", long_gap, 2)
    write_clip(root / "flat" / "clip.mp4", np.full((T, 224, 224, 3), 90, np.uint8), 3)
    write_clip(root / "mute" / "clip.mp4", good, audio=False)
    write_video(root / "silent" / "clip.mp4", good, fps=25, audio=np.zeros(T * 640, np.float32))
    write_clip(root / "short" / "clip.mp4", good[:5], 4)  # 0.2 s
    portrait = template_portrait()
    write_clip(root / "pair" / "clip.mp4", np.repeat(np.concatenate([portrait, portrait], 1)[None], T, 0), 5)
    data = (root / "good" / "clip.mp4").read_bytes()
    (root / "truncated").mkdir()
    (root / "truncated" / "clip.mp4").write_bytes(data[: int(len(data) * 0.6)])
    (root / "notavideo").mkdir()
    (root / "notavideo" / "clip.mp4").write_bytes(b"this is not an mp4 file" * 100)
    # a frame folder with its audio inside, and one without any audio
    frames_dir = root / "folder" / "clip"
    frames_dir.mkdir(parents=True)
    for i, frame in enumerate(good):
        import cv2

        cv2.imwrite(str(frames_dir / f"{i:06d}.png"), frame[..., ::-1])
    from pdfgc.synthtalk.export import write_wav

    write_wav(frames_dir / "audio.wav", speech(T, 6))
    shutil.copytree(frames_dir, root / "folderless" / "clip", ignore=shutil.ignore_patterns("*.wav"))
    return root


EXPECTED = {"good/clip": None, "gap/clip": None, "folder/clip": None, "longgap/clip": "face_missing",
            "flat/clip": "no_face", "mute/clip": "no_audio", "silent/clip": "silent_audio", "short/clip": "too_short",
            "pair/clip": "several_faces", "truncated/clip": "unreadable", "notavideo/clip": "unreadable",
            "folderless/clip": "no_audio"}


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_out")
    return out, run(config(messy, out))


def test_each_bad_clip_is_rejected_with_its_reason_and_the_rest_processed(messy_run):
    out, summary = messy_run
    rejected = {f"{e['speaker']}/{e['clip']}": e for e in read_jsonl(out / "rejected.jsonl")}
    assert {k: e["reason"] for k, e in rejected.items()} == {k: v for k, v in EXPECTED.items() if v}
    assert all(e["detail"] and e["source"] for e in rejected.values())
    assert "partial file" in rejected["truncated/clip"]["detail"] or "no frames" in rejected["truncated/clip"]["detail"]
    assert "5 frames (0.20 s)" in rejected["short/clip"]["detail"]
    assert set(entries(out)) == {k for k, v in EXPECTED.items() if v is None}
    counts = {}
    for reason in EXPECTED.values():
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    assert summary.rejected == counts and summary.processed == 3
    assert set(summary.rejected) <= set(REASONS)
    assert json.loads((out / "summary.json").read_text())["rejected"] == counts


def test_a_short_face_gap_is_interpolated_and_flagged(messy_run):
    out, _ = messy_run
    e = entries(out)["gap/clip"]
    assert "interpolated_landmarks" in e["flags"]
    assert e["quality"]["interpolated_frames"] == 2 and e["quality"]["longest_gap"] == 2
    assert e["quality"]["face_fraction"] == pytest.approx(14 / 16)
    landmarks, eyes = np.load(out / e["landmarks"]), np.load(out / e["eyes"])
    assert np.isfinite(landmarks).all() and np.isfinite(np.load(out / e["pose"])).all()
    assert np.isnan(eyes[6:8, 2:]).all() and np.isfinite(eyes[:6, 2:]).all()  # no iris where interpolated
    # interpolated frames lie between their neighbours
    good = anchor_points(np.load(out / entries(out)["good/clip"]["landmarks"]))
    assert np.abs(anchor_points(landmarks) - good).max() < 2.0


def test_frame_folders_take_their_audio_from_beside_the_frames(messy_run, messy):
    out, _ = messy_run
    e = entries(out)["folder/clip"]
    assert e["num_frames"] == T and e["source"] == str(messy / "folder" / "clip")
    assert np.corrcoef(audio_fe.load_audio(out / e["audio"]), speech(T, 6))[0, 1] > 0.99


def test_rejected_clips_are_not_retried_unless_asked(messy_run, messy):
    out, _ = messy_run
    again = run(config(messy, out))
    assert (again.processed, again.skipped_done, again.skipped_rejected) == (0, 3, 9)
    retried = run(config(messy, out, retry_rejected=True, max_gap_frames=10, max_missing_fraction=0.6))
    assert retried.processed == 1 and sum(retried.rejected.values()) == 8  # the long gap is now fine
    assert "longgap/clip" in entries(out)


# --- whole-command errors --------------------------------------------------------------------


def test_a_single_bad_input_is_one_error(messy, tmp_path):
    with pytest.raises(PdfgcError, match=r"clip rejected \(no_face\): no face in any of 16 frames"):
        run(config(messy / "flat" / "clip.mp4", tmp_path / "a"))
    with pytest.raises(PdfgcError, match=r"clip rejected \(no_audio\)"):
        run(config(messy / "mute" / "clip.mp4", tmp_path / "b"))
    with pytest.raises(PdfgcError, match="input_dir not found"):
        run(config(tmp_path / "nope", tmp_path / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PdfgcError, match="no videos"):
        run(config(tmp_path / "empty", tmp_path / "d"))
    with pytest.raises(PdfgcError, match="all 2 clips were rejected"):
        run(_only(messy, tmp_path, ["flat", "mute"]))
    with pytest.raises(PdfgcError, match="unknown landmarks.backend"):
        run(config(messy, tmp_path / "f", landmarks={"backend": "mediapipe"}))
    with pytest.raises(PdfgcError, match="face-alignment weights not found"):
        run(config(messy, tmp_path / "g", landmarks={"backend": "face_alignment",
                                                    "face_alignment": {"weights_dir": str(tmp_path), "device": "cpu"}}))
    with pytest.raises(PdfgcError, match="pose_weights"):
        run(config(messy, tmp_path / "h", pose_backend="deep3d"))
    with pytest.raises(PdfgcError, match="checkpoint file not found: /w.pth"):
        run(config(messy, tmp_path / "i", pose_backend="deep3d", pose_weights="/w.pth"))
    with pytest.raises(PdfgcError, match="unknown pose_backend"):
        run(config(messy, tmp_path / "j", pose_backend="mediapipe"))


def _only(messy: Path, tmp_path: Path, names: list[str]) -> PreprocessConfig:
    subset = tmp_path / "subset"
    for name in names:
        shutil.copytree(messy / name, subset / name)
    return config(subset, tmp_path / "subset_out")


def test_cli_missing_input_dir_is_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("PDFGC_DEBUG", None)
    proc = subprocess.run([sys.executable, str(ROOT / "preprocess.py"), f"input_dir={tmp_path / 'nope'}",
                           f"output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: input_dir not found: {tmp_path / 'nope'}"]


def test_hydra_config_without_input_dir_names_it():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pdfgc.preprocessing import run_from_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="preprocess", overrides=["output_dir=/tmp/x"])
    with pytest.raises(PdfgcError, match=r"missing required option\(s\): input_dir=\.\.\."):
        run_from_config(cfg)


def test_config_file_matches_the_dataclasses():
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "preprocess.yaml"))
    keys = set(cfg) - {"defaults", "task_name"}
    assert keys == PreprocessConfig.option_names()
    defaults = PreprocessConfig.from_mapping({"input_dir": "in", "output_dir": "out"})
    for key in keys - {"input_dir", "output_dir", "landmarks"}:
        expected = next(getattr(o, key) for o in (defaults, defaults.clip, defaults.clip.limits) if hasattr(o, key))
        assert cfg[key] == expected, key
    assert cfg["landmarks"]["backend"] == defaults.landmarks["backend"] == "auto"
    assert set(cfg["landmarks"]["dlib"]) <= {"predictor_path", "upsample", "retry_upsampled"}
    assert set(cfg["landmarks"]["face_alignment"]) <= {"weights_dir", "device", "batch_size", "allow_download"}
    with pytest.raises(PdfgcError, match="unknown preprocess option"):
        PreprocessConfig.from_mapping({"input_dir": "in", "output_dir": "out", "min_frame": 3})


# --- pieces ----------------------------------------------------------------------------------


def test_discovery_names_speakers_clips_and_splits(tmp_path):
    for rel in ("alice/talk.mov", "alice/sub/b.mkv", "bob.mp4", "carol/x.mp4", "carol/x.mkv", ".hidden/y.mp4",
                "out/z.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = {s.key: s for s in discover_clips(tmp_path, exclude=tmp_path / "out")}
    assert sorted(found) == ["alice/sub/b", "alice/talk", "bob/bob", "carol/x.mkv", "carol/x.mp4"]
    assert {s.split for s in found.values()} == {"train"}
    listed = tmp_path / "test_speakers.txt"
    listed.write_text("# held out\nbob\n")
    rule = load_split_rule(str(listed), None)
    assert {k: s.split for k, s in ((s.key, s) for s in discover_clips(tmp_path, rule, tmp_path / "out"))}["bob/bob"] == "test"
    assert load_split_rule(["alice"], None).split_of("alice") == "test"
    # test_fraction: the datamodule's hash, per speaker (stable across shards and runs)
    names = [f"id{i:05d}" for i in range(2000)]
    held = [n for n in names if SplitRule(test_fraction=0.1).split_of(n) == "test"]
    assert 150 < len(held) < 250 and held == [n for n in names if SplitRule(test_fraction=0.1).split_of(n) == "test"]
    with pytest.raises(PdfgcError, match="test_speakers file not found"):
        load_split_rule(str(tmp_path / "missing.txt"), None)


def test_discovery_of_the_voxceleb2_download_layout(tmp_path):
    vox = tmp_path / "vox"
    for rel in ("dev/mp4/id00012/abc/00001.mp4", "dev/mp4/id00012/abc/00002.mp4", "test/mp4/id00034/xyz/00001.mp4"):
        (vox / rel).parent.mkdir(parents=True, exist_ok=True)
        (vox / rel).write_bytes(b"")
    splits = lambda path: {s.key: s.split for s in discover_clips(path)}  # noqa: E731
    assert splits(vox) == {"id00012/abc/00001": "train", "id00012/abc/00002": "train", "id00034/xyz/00001": "test"}
    assert splits(vox / "dev") == {"id00012/abc/00001": "train", "id00012/abc/00002": "train"}
    assert splits(vox / "test" / "mp4") == {"id00034/xyz/00001": "test"}
    # a folder that is merely named "test" gives no split
    (tmp_path / "test" / "me").mkdir(parents=True)
    (tmp_path / "test" / "me" / "a.mp4").write_bytes(b"")
    assert splits(tmp_path / "test") == {"me/a": "train"}


def test_gap_filling_and_face_checks():
    assert missing_runs(np.array([1, 0, 0, 1, 0, 1, 1, 0], bool)) == [(1, 3), (4, 5), (7, 8)]
    values = np.array([[0.0], [np.nan], [np.nan], [3.0], [np.nan]])
    np.testing.assert_allclose(fill_gaps(values, np.isfinite(values[:, 0]))[:, 0], [0, 1, 2, 3, 3])
    lm = np.zeros((10, 68, 2), np.float32)
    counts = np.ones(10, int)
    lm[2:4] = np.nan
    track = check_faces(lm, counts, QualityLimits(max_gap_frames=2))
    assert track.interpolated.sum() == 2 and np.isfinite(track.landmarks).all()
    with pytest.raises(Exception, match="face_missing"):
        check_faces(lm, counts, QualityLimits(max_gap_frames=1))
    with pytest.raises(Exception, match="several_faces"):
        check_faces(np.zeros((10, 68, 2), np.float32), np.full(10, 2), QualityLimits())
