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
    out = {k: [] for k in ("images", *FACTOR_DIMS, "emotion", "speaker")}
    for spk in range(n_speakers):
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
    oracle, report = train_oracle(data, steps=250, batch_size=32, lr=3e-3, seed=0, width=8,
                                  hidden=64, num_threads=1)
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
    assert report["eval_speakers"] and set(report["eval_speakers"]).isdisjoint(report["train_speakers"])
    # Trivial baseline: predicting the training mean gives R² <= 0, majority class ~1/8.
    for k in FACTOR_DIMS:
        assert ev[f"{k}/r2"] > 0.4, (k, ev)
    assert np.mean([ev[f"{k}/r2"] for k in FACTOR_DIMS]) > 0.6, ev
    majority = np.bincount(data["emotion"]).max() / len(data["emotion"])
    assert ev["emotion/accuracy"] > majority + 0.3, ev
    assert report["steps"] == 250 and report["seconds"] > 0


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
