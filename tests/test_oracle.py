"""FactorOracle: shapes, a tiny training run on synthetic images, save/load, clip stacking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdfgc.errors import PdfgcError
from pdfgc.metrics.control import control_transfer
from pdfgc.metrics.oracle import (
    FACTOR_DIMS,
    FactorOracle,
    evaluate_oracle,
    load_oracle,
    oracle_arrays_from_clips,
    save_oracle,
    synthtalk_oracle_data,
    train_oracle,
)

S = 32


def _toy_images(n_speakers=6, per_speaker=100, seed=0):
    """Synthetic 32 px images whose pixels depend on the factors, plus a per-speaker nuisance.

    Each factor dimension moves a smooth random pattern's weight; emotion adds a class pattern;
    each speaker has its own background. A stand-in for SynthTalk frames with the same keys.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:S, 0:S] / S

    def smooth_pattern():
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        return blob[None] * rng.normal(size=(3, 1, 1))

    n_dims = sum(FACTOR_DIMS.values())
    bases = np.stack([smooth_pattern() for _ in range(n_dims)])  # (D, 3, S, S)
    emo_pat = np.stack([smooth_pattern() for _ in range(8)])
    out = {k: [] for k in ("images", *FACTOR_DIMS, "emotion", "speaker", "eye_boxes", "mouth_box")}
    eye0, eye1, mouth = np.array([0.2, 0.3, 0.4, 0.45]), np.array([0.6, 0.3, 0.8, 0.45]), np.array([0.3, 0.65, 0.7, 0.85])
    for spk in range(n_speakers):
        # Feature boxes (fractions of the side), moved a little per frame like a head would.
        shift = np.tile(rng.normal(0, 0.02, (per_speaker, 1, 2)), (1, 1, 2))
        out["eye_boxes"].append((np.stack([eye0, eye1])[None] + shift).astype(np.float32))
        out["mouth_box"].append((mouth[None] + shift[:, 0]).astype(np.float32))
        bg = 0.3 * smooth_pattern()
        f = {k: rng.uniform(-1, 1, (per_speaker, d)).astype(np.float32)
             for k, d in FACTOR_DIMS.items()}
        emo = rng.integers(0, 8, per_speaker)
        z = np.concatenate([f[k] for k in FACTOR_DIMS], 1)
        img = np.tanh(np.einsum("nd,dchw->nchw", z, bases) + emo_pat[emo] + bg)
        out["images"].append(img.astype(np.float32))
        for k in FACTOR_DIMS:
            out[k].append(f[k])
        out["emotion"].append(emo)
        out["speaker"].append(np.full(per_speaker, spk))
    return {k: np.concatenate(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def trained():
    data = _toy_images()
    oracle, report = train_oracle(data, steps=200, batch_size=32, lr=3e-3, seed=0, width=8,
                                  hidden=64, patch_width=8, num_threads=1)
    return data, oracle, report


def test_forward_shapes_any_size():
    for size in (16, 32, 64):
        o = FactorOracle(size, width=4, hidden=16).eval()
        out = o(torch.zeros(2, 3, size, size))
        # The default oracle reads eyes and mouth from patches, so it also returns its boxes.
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "pose": (2, 6), "gaze": (2, 4), "blink": (2, 2), "mouth": (2, 2), "emotion": (2, 8), "boxes": (2, 12)}
    with pytest.raises(ValueError):
        FactorOracle(48)


def test_read_accepts_uint8_and_other_sizes():
    o = FactorOracle(32, width=4, hidden=16).eval()
    u8 = np.random.default_rng(0).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    out = o.read(u8)
    assert out["pose"].shape == (3, 6) and out["emotion"].shape == (3, 8)
    f = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(o.read(f)["gaze"], out["gaze"], atol=1e-5)


def test_training_beats_trivial_baseline(trained):
    data, oracle, report = trained
    ev = report["eval"]
    assert oracle.patches and report["config"]["patches"]  # boxes in the data: patch readers
    assert ev["boxes/centre_err_px"] < 2.0
    assert report["eval_speakers"] and set(report["eval_speakers"]).isdisjoint(report["train_speakers"])
    # Trivial baseline: predicting the training mean gives R² <= 0, majority class ~1/8.
    for k in FACTOR_DIMS:
        assert ev[f"{k}/r2"] > 0.4, (k, ev)
    assert np.mean([ev[f"{k}/r2"] for k in FACTOR_DIMS]) > 0.6, ev
    majority = np.bincount(data["emotion"]).max() / len(data["emotion"])
    assert ev["emotion/accuracy"] > majority + 0.3, ev
    assert report["steps"] == 200 and report["seconds"] > 0


def test_trains_without_boxes():
    data = {k: v for k, v in _toy_images(n_speakers=3, per_speaker=40).items()
            if k not in ("eye_boxes", "mouth_box")}
    oracle, report = train_oracle(data, steps=5, batch_size=16, width=4, hidden=16, num_threads=1)
    assert not oracle.patches and "boxes" not in oracle.read(data["images"][:2])
    assert set(report["eval"]) >= {"pose/r2", "emotion/accuracy"}
    with pytest.raises(ValueError, match="eye_boxes"):
        train_oracle(data, steps=1, patches=True)


def test_readings_feed_control_transfer(trained):
    data, oracle, _ = trained
    held = np.isin(data["speaker"], [5])
    readings = oracle.read(torch.from_numpy(data["images"][held]))
    truth = {k: data[k][held] for k in (*FACTOR_DIMS, "emotion")}
    scores = control_transfer(readings, truth)
    assert scores["pose"].transfer > 0.5 and scores["emotion"].transfer > 0.5


def test_save_load_round_trip(tmp_path, trained):
    data, oracle, report = trained
    path = tmp_path / "oracle" / "oracle.pt"
    save_oracle(oracle, path, extra={"eval_pose_r2": report["eval"]["pose/r2"]})
    assert [p.name for p in path.parent.iterdir()] == ["oracle.pt"]  # no temp file left
    loaded = load_oracle(path)
    x = torch.from_numpy(data["images"][:16])
    a, b = oracle.read(x), loaded.read(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert loaded.config == oracle.config and not loaded.training
    assert evaluate_oracle(loaded, {k: v[:50] for k, v in data.items()})["n"] == 50


def test_load_errors(tmp_path):
    with pytest.raises(PdfgcError, match="not found"):
        load_oracle(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PdfgcError, match="cannot read"):
        load_oracle(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(PdfgcError, match="not a pdfgc factor oracle"):
        load_oracle(other)
    bad = tmp_path / "bad.pt"
    o = FactorOracle(16, width=4, hidden=16)
    save_oracle(o, bad)
    payload = torch.load(bad, weights_only=True)
    payload["config"]["width"] = 8  # weights no longer fit the network
    torch.save(payload, bad)
    with pytest.raises(PdfgcError, match="does not match"):
        load_oracle(bad)


def test_arrays_from_clips():
    rng = np.random.default_rng(0)

    def clip(spk, emo, prefix=""):
        f = 6
        c = {"frames": rng.integers(0, 256, (f, 40, 40, 3), dtype=np.uint8), "speaker": spk}
        for k, d in FACTOR_DIMS.items():
            c[prefix + k] = rng.normal(size=(f, d)).astype(np.float32)
        c[prefix + "emotion"] = emo
        return c

    clips = [clip(0, 3), clip(1, 5, prefix="gt_")]
    d = oracle_arrays_from_clips(clips, frame_stride=2, size=32)
    assert d["images"].shape == (6, 32, 32, 3) and d["images"].dtype == np.uint8
    assert d["pose"].shape == (6, 6) and d["emotion"].tolist() == [3, 3, 3, 5, 5, 5]
    assert d["speaker"].tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(d["gaze"][3:], clips[1]["gt_gaze"][::2])
    raw = oracle_arrays_from_clips(clips[:1], crop=False)
    assert np.array_equal(raw["images"], clips[0]["frames"])


def test_synthtalk_oracle_data():
    d = synthtalk_oracle_data(num_speakers=2, frames_per_speaker=3, image_size=32, seed=1)
    assert d["images"].shape == (6, 32, 32, 3) and d["images"].dtype == np.uint8
    assert {k: d[k].shape[1:] for k in FACTOR_DIMS} == {k: (v,) for k, v in FACTOR_DIMS.items()}
    assert d["eye_boxes"].shape == (6, 2, 4) and d["mouth_box"].shape == (6, 4)
    assert 0 <= d["eye_boxes"].min() and d["mouth_box"].max() <= 1  # fractions of the side
    assert d["speaker"].min() >= 100_000  # ids no world split uses
    again = synthtalk_oracle_data(num_speakers=2, frames_per_speaker=3, image_size=32, seed=1)
    assert all(np.array_equal(d[k], again[k]) for k in d)  # deterministic
