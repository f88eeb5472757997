"""VoxCeleb2DataModule: SynthTalk's export read back, stages fed, corrupt data, splits, DDP, PC-AVS."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules import resumable
from datamodules.clip_index import SCANNED_INDEX_NAME, ClipRecord, PackedRecords, load_index, split_speakers
from datamodules.clip_reader import ClipReader, eye_aspect_ratio, gaze_offset, mel_windows_at
from datamodules.synthtalk import SynthTalkDataset
from datamodules.voxceleb2 import MODES, VoxCeleb2DataModule, VoxCeleb2Dataset
from pdfgc import audio as audio_fe
from pdfgc.errors import PdfgcError
from pdfgc.losses.masks import EYE_STRIP, box_to_pixels
from pdfgc.synthtalk.export import export
from pdfgc.synthtalk.world import WorldConfig, load_or_render_pool
from pdfgc.training import run

from conftest import compose_train

WORLD = WorldConfig(seed=0, num_speakers=4, heldout_speakers=2, clips_per_speaker=1, clip_seconds=1.0, image_size=64)
IRIS_TOLERANCE_PX = 1.5  # iris from eyes.npy (offsets in eye widths, an approximation of the drawn iris): measured max 0.78 px, median 0.18
JPEG_MEAN_TOLERANCE = 0.03  # mean |difference| in [-1, 1]: quality-95 JPEG at 64 px measures ~0.015 (2 grey levels)


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Path:
    """A tiny SynthTalk world (4 train + 2 held-out speakers, one 1 s clip each) on disk."""
    return export(tmp_path_factory.mktemp("synthtalk_export"), WORLD, "all", "processed", progress=False)


@pytest.fixture(scope="session")
def train_pool():
    return load_or_render_pool(WORLD, "train", None)


def datamodule(root, mode="reconstruction", **kwargs) -> VoxCeleb2DataModule:
    options = dict(image_size=WORLD.image_size, batch_size=2, num_workers=0, pin_memory=False, val_samples=2)
    dm = VoxCeleb2DataModule(root=str(root), mode=mode, **{**options, **kwargs})
    dm.setup()
    return dm


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---- SynthTalk's export read back (issue 3) ------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_export_read_back_gives_synthtalks_own_samples(mode, exported, train_pool):
    ours = datamodule(exported, mode).dataset("train", 12)
    theirs = SynthTalkDataset(train_pool, mode, 12, seed=0)
    for i in range(12):
        a, b = ours[i], theirs[i]
        b_keys = {k for k in b if not k.startswith("gt_")}
        assert set(a) == b_keys, f"sample keys differ: {set(a) ^ b_keys}"
        assert a["clip"] == b["clip"] and int(a["speaker"]) == int(b["speaker"])
        for key in b_keys - {"clip"}:
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        images = {"reconstruction": ("source", "driver"), "fine_motion": ("frames",),
                  "emotion": ("frames", "source"), "landmarks": ("image",)}[mode]
        for key in images:  # the same frames, through a JPEG round trip
            diff = (a[key] - b[key]).abs()
            assert diff.mean() < JPEG_MEAN_TOLERANCE, f"{key}: mean |diff| {diff.mean():.4f}"
        if mode == "landmarks":  # landmarks.npy through the official crop land where SynthTalk's pool has them
            assert torch.allclose(a["landmarks"][:68], b["landmarks"][:68], atol=1e-4)
            # the irises come back from eyes.npy's offsets (in eye widths from the eye's mean point)
            iris_error = (a["landmarks"][68:] - b["landmarks"][68:]).norm(dim=-1)
            assert iris_error.max() < IRIS_TOLERANCE_PX, f"iris {iris_error.max():.2f} px off"
            # the labels of stage 0's read-outs: pose.npy, and eyes.npy as openness + iris offsets
            assert torch.equal(a["pose"], b["pose"]) and torch.isfinite(a["pose"]).all()
            assert torch.allclose(a["eyes"], b["eyes"], atol=1e-5), (a["eyes"], b["eyes"])
        elif mode != "reconstruction":
            assert torch.equal(a["mels"], b["mels"]), "mel windows equal SynthTalk's frame_windows"
        if mode in ("landmarks", "fine_motion", "emotion"):  # the clip's emotion label comes back from index.jsonl
            assert int(a["emotion"]) == int(b["emotion"]) >= 0
        if mode == "fine_motion":
            assert torch.equal(a["pose"], b["pose"]), "pose labels equal"
            # eyes.npy's iris offsets (the positive may differ: the eye-state scores differ slightly)
            assert torch.isfinite(a["eye_gaze"]).all() and a["eye_gaze"].abs().max() < 0.35
            top, bottom, left, right = box_to_pixels(EYE_STRIP, WORLD.image_size, WORLD.image_size)
            assert torch.equal(a["eye_anchor"][:, top:bottom, left:right], a["eye_positive"][:, top:bottom, left:right])
            assert torch.equal(a["eye_anchor"][:, bottom:], a["eye_negative"][:, bottom:]), "the rest is the negative"


def test_clips_without_an_emotion_label_give_minus_one(exported, tmp_path):
    root = copy_tree(exported, tmp_path / "unlabelled")
    index = root / "index.jsonl"
    lines = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    index.write_text("".join(json.dumps({k: v for k, v in e.items() if k != "emotion"}) + "\n" for e in lines))
    for mode in ("landmarks", "fine_motion", "emotion"):
        sample = datamodule(root, mode).dataset("train", 2)[0]
        assert sample["emotion"].dtype == torch.int64 and int(sample["emotion"]) == -1


def test_landmark_samples_without_pose_or_eye_files_give_nan_labels(exported, tmp_path):
    root = copy_tree(exported, tmp_path / "no_labels")
    index = root / "index.jsonl"
    lines = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    drop = {"pose", "eyes"}
    index.write_text("".join(json.dumps({k: v for k, v in e.items() if k not in drop}) + "\n" for e in lines))
    sample = datamodule(root, "landmarks").dataset("train", 2)[0]
    assert sample["pose"].shape == (6,) and torch.isnan(sample["pose"]).all()
    # without eyes.npy the openness comes from the landmarks' eye aspect ratio; the iris is unknown
    assert torch.isfinite(sample["eyes"][:2]).all() and torch.isnan(sample["eyes"][2:]).all()


def test_gaze_offset_is_the_mean_of_the_two_irises():
    rows = np.array([[1.0, 1.0, 0.1, -0.2, 0.3, 0.0], [0.5, 0.5, np.nan, np.nan, np.nan, np.nan]], np.float32)
    np.testing.assert_allclose(gaze_offset(rows)[0], [0.2, -0.1], atol=1e-7)
    assert np.isnan(gaze_offset(rows)[1]).all() and gaze_offset(rows[0]).shape == (2,)


def test_exported_eye_state_reads_back_as_synthtalk_openness(exported, train_pool):
    dm = datamodule(exported, "fine_motion")
    for c, record in enumerate(dm.splits["train"]):
        eyes = ClipReader(record, WORLD.image_size).eyes
        gt = np.load(record.eyes.replace("eyes.npy", "gt.npz"))
        np.testing.assert_allclose(eyes[:, :2], 1.0 - gt["blink"], atol=1e-5)  # open level 0.3 -> 1
        assert np.all(np.abs(eyes[:, 2:]) < 0.35) and np.ptp(eyes[:, 2:]) > 0.05, "iris offsets in eye widths"


def with_eye_files(exported: Path, dst: Path, blink=range(10, 13)) -> Path:
    """The export with known eye states: every train clip open (EAR 0.3) but for a blink of eye A
    at frames ``blink``; clip 0 gives it as landmarks.npy (no eyes.npy), the others as eyes.npy."""
    root = copy_tree(exported, dst)
    eye = np.array([[0, 0], [0.33, -0.15], [0.66, -0.15], [1, 0], [0.66, 0.15], [0.33, 0.15]], np.float32)
    lines = []
    for n, entry in enumerate(json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()):
        F = entry["num_frames"]
        ear = np.full((F, 2), 0.3, np.float32)
        ear[list(blink), 0] = 0.0
        if n == 0:
            landmarks = np.zeros((F, 68, 2), np.float32)
            landmarks[:, 36:42], landmarks[:, 42:48] = eye * 20, eye * 20 + 40
            landmarks[list(blink), 36:42, 1] = 0.0  # eye A closed
            path = Path(entry["pose"]).with_name("landmarks.npy")
            np.save(root / path, landmarks)
            entry.update(eyes=None, landmarks=str(path))
        else:
            np.save(root / entry["eyes"], np.concatenate([ear, np.full((F, 4), np.nan, np.float32)], 1))
        lines.append(json.dumps(entry) + "\n")
    (root / "index.jsonl").write_text("".join(lines))
    return root


def test_eye_triplets_pair_a_blink_with_open_eyes(exported, tmp_path):
    root = with_eye_files(exported, tmp_path / "data")
    dm = datamodule(root, "fine_motion", eye_blink_prob=1.0)
    ds = dm.dataset("train", 4)
    for c in range(4):
        reader = ds.reader(c)
        assert np.array_equal(reader.eyes[:, 0] < 0.5, np.isin(np.arange(25), range(10, 13))), "openness of eye A"
        for seed in range(10):
            pos, neg = ds.eye_frames(np.random.default_rng(seed), reader)
            assert 2 <= abs(pos - neg) <= 10
            assert sorted([pos in range(10, 13), neg in range(10, 13)]) == [False, True], (pos, neg)
    sample = ds[0]
    assert sample["eye_open"].shape == (2,) and set(sample["eye_open"].round().tolist()) <= {0.0, 1.0}


def test_eye_aspect_ratio_of_a_known_eye():
    eye = np.array([[0, 0], [0.33, -0.15], [0.66, -0.15], [1, 0], [0.66, 0.15], [0.33, 0.15]], np.float32)
    landmarks = np.zeros((2, 68, 2), np.float32)
    landmarks[:, 36:42] = eye * 20
    landmarks[:, 42:48] = eye * 20 + 40
    landmarks[1, 42:48, 1] = 40  # eye B closed in frame 1
    ear = eye_aspect_ratio(landmarks)
    np.testing.assert_allclose(ear, [[0.3, 0.3], [0.3, 0.0]], atol=1e-5)


def test_mel_windows_at_equal_the_front_end_windows():
    mel = np.random.default_rng(0).random((107, 80), dtype=np.float32)
    frames = [0, 1, 2, 13, 24, 26]
    expected = audio_fe.frame_windows(mel, 27)[frames]
    assert torch.equal(mel_windows_at(mel, frames), expected)


# ---- training steps --------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", ["voxceleb2/stage0_landmarks", "voxceleb2/stage1", "voxceleb2/stage2",
                                        "voxceleb2/stage3",
                                        pytest.param("voxceleb2/all", marks=pytest.mark.slow)])
def test_every_voxceleb2_experiment_runs_a_fast_dev_run_step(experiment, exported, tmp_path):
    overrides = [f"data.root={exported}", "networks=small", "trainer=cpu", "data.batch_size=2",
                 "data.val_samples=2", "data.pin_memory=false", "~callbacks", "trainer.log_every_n_steps=1",
                 "+trainer.fast_dev_run=true"]
    cfg = compose_train([f"experiment={experiment}", *overrides], tmp_path)
    assert cfg.networks.image_size == 64 and cfg.data.image_size == 64
    result = run(cfg, overrides=overrides)
    stages = result["stages"].values() if cfg.get("stages") else [result]
    for stage in stages:
        assert any(k.startswith("train/") for k in stage["metrics"])
        assert all(np.isfinite(v) for v in stage["metrics"].values())


def test_voxceleb2_experiments_are_official_gpu_sized(tmp_path):
    for stage in ("stage1", "stage2", "stage3"):
        cfg = compose_train([f"experiment=voxceleb2/{stage}", "data.root=/data"], tmp_path)
        assert cfg.networks.image_size == 224 and cfg.data.image_size == 224
        assert cfg.data.batch_size == 32 and cfg.trainer.accelerator == "gpu"
        assert cfg.model.optimizer.lr == 1.0e-4


def test_missing_data_root_is_a_one_line_error(tmp_path):
    cfg = compose_train(["experiment=voxceleb2/stage1", "networks=small", "trainer=cpu", "~callbacks"], tmp_path)
    with pytest.raises(PdfgcError, match="data.root is required"):
        run(cfg)
    with pytest.raises(PdfgcError, match="not found"):
        load_index(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PdfgcError, match="index.jsonl"):
        load_index(tmp_path / "empty")


# ---- corrupt data ------------------------------------------------------------------------------


def corrupt(root: Path) -> dict[str, str]:
    """Break three of the four training clips in three ways; returns clip -> expected reason."""
    records = {r.clip: r for r in load_index(root)}
    for jpg in Path(records["s0000_c00"].frames_dir).glob("*.jpg"):
        jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    Path(records["s0001_c00"].spectrogram).unlink()
    sorted(Path(records["s0002_c00"].frames_dir).glob("*.jpg"))[-1].unlink()
    return {"s0000_c00": "truncated JPEG", "s0001_c00": "spectrogram unreadable",
            "s0002_c00": "frame count mismatch"}


def test_corrupt_clips_are_skipped_logged_and_counted(exported, tmp_path, caplog):
    root = copy_tree(exported, tmp_path / "data")
    reasons = corrupt(root)
    dm = datamodule(root, "emotion", samples_per_epoch=40)
    loader = dm.train_dataloader()
    with caplog.at_level(logging.INFO, logger="datamodules.voxceleb2"):
        clips = [c for batch in loader for c in batch["clip"]]
    assert len(clips) == 40 and set(clips) == {"s0003_c00"}, "only the intact clip is sampled"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings  # one per bad clip
    for clip, reason in reasons.items():
        assert any(clip in w and reason in w for w in warnings), (clip, reason)
    skipped = int(dm.datasets["train"].skipped)
    assert skipped >= 3 and any(f"{skipped} in all" in r.getMessage() for r in caplog.records)


def test_skip_counts_reach_the_main_process_from_workers(exported, tmp_path):
    root = copy_tree(exported, tmp_path / "data")
    corrupt(root)
    dm = datamodule(root, "reconstruction", num_workers=2, persistent_workers=False, samples_per_epoch=16)
    batches = list(dm.train_dataloader())
    assert len(batches) == 8 and all(set(b["clip"]) == {"s0003_c00"} for b in batches)
    assert int(dm.datasets["train"].skipped) >= 3


def test_no_usable_clip_is_a_one_line_error(exported, tmp_path):
    root = copy_tree(exported, tmp_path / "data")
    lines = [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]
    (root / "index.jsonl").write_text("".join(json.dumps({**e, "pose": None}) + "\n" for e in lines))
    with pytest.raises(PdfgcError, match="no usable training clips"):
        datamodule(root, "fine_motion")
    for record in load_index(root):
        shutil.rmtree(record.frames_dir)
    dm = datamodule(root, "reconstruction")
    with pytest.raises(PdfgcError, match="4 of 4 clips are unusable"):
        dm.dataset("train", 4)[0]


# ---- splits and DDP ----------------------------------------------------------------------------


def records_of(speakers, split="train") -> list[ClipRecord]:
    return [ClipRecord(s, f"{s}_{k}", split, 50, "f", "m") for s in speakers for k in range(2)]


def test_splits_are_speaker_disjoint(exported):
    for records in (records_of([f"id{i:05d}" for i in range(100)]),  # no test split: held out by hash
                    records_of([f"id{i:05d}" for i in range(90)]) + records_of([f"t{i}" for i in range(10)], "test")):
        split = split_speakers(records)
        train, val, test = (set(split[k]) for k in ("train", "val", "test"))
        assert train and val and test
        assert not (train & val or train & test or val & test)
        assert train | val | test == {r.speaker for r in records}
    assert {"t0", "t5"} <= set(split["val"]) | set(split["test"])
    dm = datamodule(exported)
    assert {r.speaker for r in dm.splits["train"]} == {"0000", "0001", "0002", "0003"}
    val, test = ({r.speaker for r in dm.splits[k]} for k in ("val", "test"))
    assert val and test and not val & test and val | test == {"0004", "0005"}
    assert dm.dataset("val", 4)[0]["clip"] in {r.clip for r in dm.splits["val"]}


def test_ddp_ranks_see_disjoint_samples_and_resume_on_their_own_share(exported, monkeypatch):
    dm = datamodule(exported, samples_per_epoch=24)
    seen, firsts = {}, {}
    for rank in (0, 1):
        monkeypatch.setattr(resumable, "_rank_world", lambda rank=rank: (rank, 2))
        loader = dm.train_dataloader()
        seen[rank] = list(loader.offset_sampler.__iter__())
        batch = next(iter(DataLoader(loader.dataset, batch_size=2, sampler=seen[rank][:2])))
        firsts[rank] = batch["driver"]
        loader.load_state_dict({"batches": 3})
        next(iter(loader))
        assert next(iter(loader.offset_sampler)) == 3 * 2 * 2 + rank, "resumes after 3 batches of every rank"
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(24))
    assert seen[0][:2] == [0, 2] and seen[1][:2] == [1, 3]
    assert not torch.equal(firsts[0], firsts[1]), "the ranks' first batches differ"


def test_packed_records_give_back_every_record(exported):
    import pickle

    records = load_index(exported)
    packed = pickle.loads(pickle.dumps(PackedRecords(records)))  # as a spawned worker receives it
    assert len(packed) == len(records) == 6 and list(packed) == records and packed[-1] == records[-1]
    with pytest.raises(IndexError):
        packed[6]


# ---- PC-AVS layout --------------------------------------------------------------------------------


def pcavs_tree(exported: Path, dst: Path) -> Path:
    """The export rewritten as PC-AVS keeps it: dev|test/<speaker>/<clip>/{:06d}.jpg + spectrograms.npy,
    no index (one spectrogram stored (80, T)); pose.npy kept beside, no eye files."""
    for record in load_index(exported):
        split = "test" if record.split == "test" else "dev"
        clip_dir = dst / split / record.speaker / record.clip
        clip_dir.mkdir(parents=True)
        for i, jpg in enumerate(sorted(Path(record.frames_dir).glob("*.jpg"))):
            shutil.copy(jpg, clip_dir / f"{i:06d}.jpg")
        mel = np.load(record.spectrogram)
        np.save(clip_dir / "spectrograms.npy", mel.T if record.speaker == "0001" else mel)
        shutil.copy(record.pose, clip_dir / "pose.npy")
    return dst


def test_pcavs_layout_is_scanned_cached_and_read_like_the_index(exported, tmp_path, caplog):
    root = pcavs_tree(exported, tmp_path / "pcavs")
    scanned = datamodule(root, "emotion")
    assert (root / SCANNED_INDEX_NAME).exists(), "the scan is cached in a writable root"
    assert [r.clip for r in scanned.splits["train"]] == [f"s000{i}_c00" for i in range(4)]
    assert {r.speaker for r in scanned.splits["val"] + scanned.splits["test"]} == {"0004", "0005"}
    indexed = datamodule(exported, "emotion")
    for i in range(8):
        a, b = scanned.dataset("train", 8)[i], indexed.dataset("train", 8)[i]
        assert a["clip"] == b["clip"] and torch.equal(a["frames"], b["frames"]) and torch.equal(a["mels"], b["mels"])
    with caplog.at_level(logging.INFO):
        again = datamodule(root, "fine_motion")  # from the cached scan; no eye files: documented fallback
    sample = again.dataset("train", 4)[0]
    assert "eye_open" not in sample and sample["eye_anchor"].shape == (3, 64, 64)
    assert any("no eyes.npy or landmarks.npy" in r.getMessage() for r in caplog.records)


def test_pcavs_scan_works_on_a_read_only_root(exported, tmp_path, monkeypatch):
    from datamodules import clip_index

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(clip_index, "atomic_write_text", refuse)  # root runs the tests: chmod would not stop it
    root = pcavs_tree(exported, tmp_path / "pcavs")
    assert len(load_index(root)) == 6 and not (root / SCANNED_INDEX_NAME).exists()
