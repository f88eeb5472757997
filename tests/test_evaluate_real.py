"""evaluate.py's real-data protocols end to end on a SynthTalk export (small random model, random
SyncNet and Inception files in the official formats), plus the reader and the aggregation."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from pdfgc.checkpoints import export_official
from pdfgc.errors import PdfgcError
from pdfgc.evaluation.processed import EvalClip, cross_pairs, read_test_clips
from pdfgc.evaluation.real_report import aggregate
from pdfgc.networks import build_networks, load_networks_config

WORLD = ["data.num_speakers=3", "data.heldout_speakers=2", "data.clips_per_speaker=1", "data.clip_seconds=0.5",
         "data.render_workers=1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A small random stage-3 export, a random syncnet_v2.model, a BN-calibrated random
    Inception in the FID release's layout and a random ETH-XGaze in its checkpoint format."""
    import torchvision

    from pdfgc.metrics.syncnet import SyncNet

    folder = tmp_path_factory.mktemp("weights")
    cfg = load_networks_config("small")
    export_official(build_networks(cfg), folder / "export")
    (folder / "export" / "networks.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg))))
    torch.manual_seed(0)
    torch.save(SyncNet().state_dict(), folder / "syncnet_v2.model")
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 3, 299, 299) * 2 - 1)
    torch.save(net.state_dict(), folder / "inception.pth")
    from pdfgc.metrics.learned_gaze import ETHXGaze

    torch.save({"epoch": 25, "model_state": ETHXGaze().state_dict()}, folder / "epoch_24_ckpt.pth.tar")
    return folder


def evaluate(weights, out, *extra):
    cmd = [sys.executable, "evaluate.py", f"checkpoint={weights / 'export'}", *WORLD, "synthtalk_report=false",
           "test_set=synthtalk", "test_set.max_frames=7", "test_set.num_pairs=1", "metrics.identity.frame_stride=4",
           f"metrics.syncnet.weights={weights / 'syncnet_v2.model'}",
           f"metrics.fid.weights={weights / 'inception.pth'}", "metrics.fid.feature=64",
           f"metrics.gaze.weights={weights / 'epoch_24_ckpt.pth.tar'}", f"hydra.run.dir={out}", *extra]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


def test_real_protocols_end_to_end(weights, tmp_path):
    # cross-driven: lip and emotion only here (the landmark figures run in the self protocol);
    # the slow test below drives every factor
    common = [f"data.cache_dir={tmp_path / 'cache'}", f"test_set.cache_dir={tmp_path / 'scores'}"]
    proc = evaluate(weights, tmp_path / "run1", *common, "test_set.factors=[lip,emotion]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "run1"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["real/self/count"] == 2
    assert metrics["real/cross/lip/count"] == 1 and metrics["real/cross/emotion/count"] == 1
    assert "real/cross/pose/count" not in metrics
    for key in ("real/self/ours/psnr", "real/self/ours/ssim", "real/self/ours/lse_d", "real/self/ours/lse_c",
                "real/self/gt/lse_d", "real/self/ours/csim", "real/self/gt/csim", "real/self/ours/fid",
                "real/cross/lip/ours/lse_c", "real/cross/lip/gt/lse_c", "real/cross/lip/static/lse_c",
                "real/cross/emotion/ours/emotion_similarity"):
        assert metrics[key] is not None and math.isfinite(metrics[key]), key
    for key in ("real/self/ours/pose_error", "real/self/ours/gaze_error", "real/self/ours/gaze_angle_error",
                "real/self/ours/m_lmd", "real/self/ours/blink_f1"):
        assert key in metrics, key  # null when no face was found in the random model's output
    assert 0 <= metrics["real/self/ours/ssim"] <= 1 and metrics["real/self/ours/lse_c"] >= 0
    assert "SyncNet" in metrics["real/estimator/lse"] and "iris" in metrics["real/estimator/gaze"]
    assert metrics["real/estimator/gaze_learned"].startswith("ETH-XGaze ResNet-50")
    # the FID resize rule is fixed (torch-fidelity's TF1 bilinear) and recorded beside the figure
    assert metrics["real/estimator/fid"] == "torchmetrics FID, Inception 64-d, resize tf1-bilinear (torch-fidelity)"
    with open(out / "real_clips.csv") as fh:
        rows = list(csv.DictReader(fh))
    self_ours = [float(r["psnr"]) for r in rows if r["protocol"] == "self" and r["role"] == "ours"]
    assert len(self_ours) == 2 and np.mean(self_ours) == pytest.approx(metrics["real/self/ours/psnr"], rel=1e-5)
    assert {r["protocol"] for r in rows} == {"self", "cross/lip", "cross/emotion"}
    # per-frame gaze / pose / EAR / blink series: one row per frame of each self-driven clip (7 frames)
    with open(out / "real_frames.csv") as fh:
        frames = list(csv.DictReader(fh))
    assert list(frames[0])[:4] == ["protocol", "name", "role", "frame"]
    assert {"gaze_error", "gaze_angle_error", "pose_error", "ear", "ear_reference", "blink",
            "blink_reference"} <= set(frames[0])
    self_frames = [r for r in frames if r["protocol"] == "self" and r["role"] == "ours"]
    assert len(self_frames) == 2 * 7 and [int(r["frame"]) for r in self_frames[:7]] == list(range(7))
    # dlib finds the SynthTalk faces of the real clips in most frames (the random model's output: none)
    assert sum(bool(r["ear_reference"]) for r in self_frames) >= 10
    for name in ("real_factors.png", "real_distributions.png", "real_metrics.md", "metrics.md"):
        assert (out / name).stat().st_size > 500, name
    assert "| lse_c |" in (out / "real_metrics.md").read_text()


@pytest.mark.slow
def test_a_rerun_reuses_scored_records(weights, tmp_path):
    common = [f"data.cache_dir={tmp_path / 'cache'}", f"test_set.cache_dir={tmp_path / 'scores'}"]
    proc = evaluate(weights, tmp_path / "run1", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run1" / "metrics.json").read_text())
    for factor in ("pose", "gaze", "blink", "lip", "emotion"):
        assert metrics[f"real/cross/{factor}/count"] == 1
    for key in ("real/cross/pose/ours/pose_error", "real/cross/pose/static/pose_error",
                "real/cross/gaze/ours/gaze_error", "real/cross/gaze/ours/gaze_angle_error",
                "real/cross/blink/ours/blink_f1"):
        assert key in metrics, key
    # the still portrait against the driver: two real SynthTalk faces, so the learned gaze angle is measured
    assert math.isfinite(metrics["real/cross/gaze/static/gaze_angle_error"])
    assert 0 < metrics["real/cross/gaze/static/gaze_angle_error"] < 180
    frames = (tmp_path / "run1" / "real_frames.csv").read_text()
    with open(tmp_path / "run1" / "real_frames.csv") as fh:
        seen = {(r["protocol"], r["role"]) for r in csv.DictReader(fh)}
    assert seen == {("self", "ours"), *((f"cross/{f}", role) for f in ("pose", "gaze", "blink")
                                        for role in ("ours", "static"))}
    # resume: one record deleted -> only it is scored again; the figures do not change
    records = sorted((tmp_path / "scores" / "self").glob("*.json"))
    assert len(records) == 2
    records[0].unlink()
    proc = evaluate(weights, tmp_path / "run2", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reused 6 of 7 scored records" in proc.stderr + proc.stdout
    again = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    for key in ("real/self/ours/psnr", "real/self/ours/lse_d", "real/self/ours/fid", "real/cross/lip/ours/lse_c"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-5), key
    assert (tmp_path / "run2" / "real_frames.csv").read_text() == frames, "reused records keep their frame series"


def test_missing_metric_weights_are_one_line_errors(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from conftest import CONFIG_DIR
    from pdfgc.evaluation.scoring import ClipScorer

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=["checkpoint=x", "test_set=synthtalk",
                                                          f"metrics.syncnet.weights={tmp_path / 'nope.model'}"])
    metrics = OmegaConf.to_container(cfg.metrics, resolve=True)
    with pytest.raises(PdfgcError, match="SyncNet weights not found: .*nope.model"):
        ClipScorer(metrics)
    metrics["syncnet"]["weights"] = None
    metrics["fid"]["weights"] = str(tmp_path / "inception.pth")
    with pytest.raises(PdfgcError, match="FID Inception weights not found"):
        ClipScorer(metrics)
    metrics["fid"]["weights"] = None
    metrics["gaze"]["weights"] = str(tmp_path / "epoch_24_ckpt.pth.tar")
    with pytest.raises(PdfgcError, match="ETH-XGaze weights not found: .*epoch_24_ckpt.pth.tar"):
        ClipScorer(metrics)


def _write_index(root, entries):
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries) + "not json\n")


def test_reader_skips_broken_entries_and_pairs_other_speakers(tmp_path):
    entries = []
    for spk, clip in (("a", "a1"), ("a", "a2"), ("b", "b1"), ("c", "c1")):
        folder = tmp_path / spk / clip
        (folder / "frames").mkdir(parents=True)
        (folder / "audio.wav").write_bytes(b"")
        entries.append({"speaker": spk, "clip": clip, "split": "test", "num_frames": 3,
                        "frames_dir": f"{spk}/{clip}/frames", "audio": f"{spk}/{clip}/audio.wav",
                        "spectrogram": f"{spk}/{clip}/spectrograms.npy"})
    entries.append({"speaker": "d", "clip": "gone", "split": "test", "num_frames": 3, "frames_dir": "d/gone/frames",
                    "audio": "d/gone/audio.wav", "spectrogram": "d/gone/spectrograms.npy"})
    entries.append(dict(entries[0], clip="train1", split="train"))
    _write_index(tmp_path, entries)
    clips = read_test_clips(tmp_path, "test")
    assert [c.clip_id for c in clips] == ["a/a1", "a/a2", "b/b1", "c/c1"]
    pairs = [(s.clip_id, d.clip_id) for s, d in cross_pairs(clips, 10)]
    assert pairs == [("a/a1", "b/b1"), ("a/a2", "b/b1"), ("b/b1", "c/c1"), ("c/c1", "a/a1")]
    assert len(cross_pairs(clips, 2)) == 2
    with pytest.raises(PdfgcError, match="no usable"):
        read_test_clips(tmp_path, "val")
    with pytest.raises(PdfgcError, match="test set not found"):
        read_test_clips(tmp_path / "missing")
    assert isinstance(clips[0], EvalClip)


def test_aggregate_means_ignore_nan_and_blink_f1_sums_counts():
    records = [
        {"protocol": "self", "ours": {"psnr": 20.0, "pose_error": float("nan"), "blink_tp": 1, "blink_fp": 1,
                                      "blink_fn": 0}},
        {"protocol": "self", "ours": {"psnr": 30.0, "pose_error": 4.0, "blink_tp": 1, "blink_fp": 0, "blink_fn": 2},
         "gt": {"lse_c": 7.0}},
    ]
    rng = np.random.default_rng(0)
    feats = {"ours": [rng.standard_normal((5, 3)), rng.standard_normal((5, 3)) + 1],
             "gt": [rng.standard_normal((10, 3))]}
    out = aggregate(records, feats)
    assert out["real/self/ours/psnr"] == 25.0
    assert out["real/self/ours/pose_error"] == 4.0
    assert out["real/self/ours/blink_f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert out["real/self/ours/blinks"] == 4
    assert out["real/self/gt/lse_c"] == 7.0 and out["real/self/count"] == 2
    assert out["real/self/ours/fid"] > 0


def test_frame_series_are_the_per_frame_values_behind_the_clip_figures(tmp_path):
    from types import SimpleNamespace

    from pdfgc.evaluation.real_report import write_frames_csv
    from pdfgc.evaluation.scoring import ClipScorer, FaceMeasures

    t = 8
    lm = np.zeros((t, 68, 2))
    lm[2] = np.nan  # no face in frame 2 of the reference
    ear_ref = np.full((t, 2), 0.3)
    ear_ref[4:7] = 0.1  # the reference blinks in frames 4-6
    ear_ref[2] = np.nan
    iris_ref = np.full((t, 2, 2), 0.5)
    iris_ref[2] = np.nan
    pose_ref = np.zeros((t, 6))
    pose_ref[2] = np.nan
    iris = iris_ref.copy()
    iris[:, :, 0] += 0.1  # both irises 0.1 eye widths to the side in every frame
    iris[2] = 0.5
    pose = np.zeros((t, 6))
    pose[:, 0] = np.radians(3.0)  # 3 degrees of yaw: pose error 1 degree (mean of three angles)
    ear = np.full((t, 2), 0.3)
    ear[5:7] = 0.1  # ours blinks in frames 5-6
    ours = FaceMeasures(np.zeros((t, 68, 2)), ear, iris, pose, 224)
    ref = FaceMeasures(lm, ear_ref, iris_ref, pose_ref, 224)
    scorer = SimpleNamespace(blink={"threshold": 0.2, "min_frames": 2, "tolerance": 2},
                             gaze_angle_errors=ClipScorer.gaze_angle_errors)
    series = ClipScorer.frame_series(scorer, ours, ref)
    np.testing.assert_allclose(series["gaze_error"], [0.1, 0.1, np.nan, 0.1, 0.1, 0.1, 0.1, 0.1], atol=1e-6)
    np.testing.assert_allclose(series["pose_error"], [1, 1, np.nan, 1, 1, 1, 1, 1], atol=1e-5)
    np.testing.assert_array_equal(series["blink_reference"], [0, 0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(series["blink"], [0, 0, 0, 0, 0, 1, 1, 0])
    np.testing.assert_allclose(series["ear"][5], 0.1, atol=1e-6)
    # the clip figures are the means of the frame values
    assert ClipScorer.gaze_error(ours, ref) == pytest.approx(np.nanmean(series["gaze_error"]), rel=1e-5)
    assert ClipScorer.pose_error(ours, ref) == pytest.approx(np.nanmean(series["pose_error"]), rel=1e-5)

    write_frames_csv(tmp_path / "frames.csv", [("self", "a/1", "ours", series), ("cross/gaze", "a/1__b/1", "static",
                                                                                 {"gaze_error": series["gaze_error"][:3]})])
    with open(tmp_path / "frames.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 + 3
    assert rows[2]["gaze_error"] == "" and float(rows[3]["gaze_error"]) == pytest.approx(0.1)
    assert rows[5]["blink"] == "1" and rows[4]["blink"] == "0" and rows[4]["blink_reference"] == "1"
    assert rows[8]["role"] == "static" and rows[8]["ear"] == "" and rows[10]["frame"] == "2"


def test_learned_gaze_figures_are_the_angle_between_eye_in_head_directions():
    from pdfgc.evaluation.scoring import ClipScorer, FaceMeasures

    t = 4
    ahead = np.tile([0.0, 0.0, -1.0], (t, 1))
    turned = np.tile([-np.sin(np.radians(10)), 0.0, -np.cos(np.radians(10))], (t, 1))
    turned[1] = np.nan  # no face in frame 1
    blank = dict(landmarks=np.zeros((t, 68, 2)), ear=np.full((t, 2), 0.3), iris=np.full((t, 2, 2), 0.5),
                 pose=np.zeros((t, 6)), side=224)
    ours, ref = FaceMeasures(**blank, gaze=turned), FaceMeasures(**blank, gaze=ahead)
    figures = ClipScorer.gaze_figures(ours, ref)
    assert figures["gaze_error"] == 0.0 and figures["gaze_angle_error"] == pytest.approx(10.0)
    np.testing.assert_allclose(ClipScorer.gaze_angle_errors(ours, ref), [10, np.nan, 10, 10], atol=1e-9)
    assert "gaze_angle_error" not in ClipScorer.gaze_figures(FaceMeasures(**blank), ref)  # not configured
    still = ours.repeated(3)
    assert still.gaze.shape == (3, 3) and np.allclose(still.gaze, turned[:1])
