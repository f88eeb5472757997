"""Disentanglement matrix, control transfer, lip-sync and the report files, on hand-built data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pdfgc.metrics import (
    DisentanglementMetric,
    chance_corrected,
    check_control,
    codes_from_style,
    control_metrics,
    control_transfer,
    disentanglement_matrix,
    group_ids,
    lip_sync_correlation,
    split_by_group,
    write_report,
)
from pdfgc.metrics.disentanglement import r2_per_dim

CLIPS, T = 40, 20
N = CLIPS * T


def _world(seed: int = 0):
    """Factors per frame, grouped by clip; emotion is one class per clip (as in SynthTalk)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"spk{i % 5}/clip{i:03d}" for i in range(CLIPS)], T)
    factors = {
        "mouth": rng.uniform(0, 1, (N, 2)),
        "pose": rng.normal(0, 0.3, (N, 6)),
        "gaze": rng.normal(0, 0.2, (N, 4)),
        "blink": rng.uniform(0, 1, (N, 2)),
        "emotion": np.repeat(np.arange(CLIPS) % 8, T).astype(np.int64),
    }
    return rng, factors, groups


def _lin(rng, f, dim, noise=0.02):
    """A noisy random linear map of ``f`` (N,k) to (N,dim)."""
    return f @ rng.normal(size=(f.shape[1], dim)) + noise * rng.normal(size=(f.shape[0], dim))


def _disentangled_codes(rng, factors):
    return {
        "lip": _lin(rng, factors["mouth"], 500),
        "pose": _lin(rng, factors["pose"], 6),
        "eye": _lin(rng, np.c_[factors["gaze"], factors["blink"]], 6),
        "emotion": _lin(rng, np.eye(8)[factors["emotion"]], 30),
    }


@pytest.fixture(scope="module")
def clean_result():
    rng, factors, groups = _world()
    return disentanglement_matrix(_disentangled_codes(rng, factors), factors, groups, seed=0)


def test_disentangled_codes_give_diagonal_matrix(clean_result):
    r = clean_result
    assert r.codes == ["lip", "pose", "eye", "emotion"]
    assert r.factors == ["mouth", "pose", "gaze", "blink", "emotion"]
    assert np.array(r.matrix).shape == (4, 5)
    for key, v in r.diagonal().items():
        assert v > 0.9, (key, v)
    assert len(r.off_diagonal()) == 4 * 5 - 5
    name, worst = r.max_off_diagonal()
    assert worst < 0.1, (name, worst)
    assert r.emotion_accuracy["emotion"]["emotion"] > 0.95
    assert r.passed(), [str(c) for c in r.check() if not c.passed]


def test_mixed_codes_fail_the_check():
    rng, factors, groups = _world(1)
    codes = _disentangled_codes(rng, factors)
    # The pose code also carries the mouth: a classic leak (head bob with speech).
    codes["pose"] = _lin(rng, np.c_[factors["pose"], factors["mouth"]], 6)
    del codes["lip"]  # the large code adds time, not coverage, here
    r = disentanglement_matrix(codes, factors, groups)
    assert r.value("pose", "mouth") > 0.5
    assert r.max_off_diagonal()[0] == "pose/mouth"
    failed = {c.name for c in r.check() if not c.passed}
    assert "off_diagonal:pose/mouth" in failed
    assert not r.passed()


def test_chance_corrected_emotion_is_zero_for_random_codes():
    rng = np.random.default_rng(3)
    n_clips, t = 80, 25
    groups = np.repeat(np.arange(n_clips), t)
    emotion = rng.integers(0, 8, n_clips * t)  # per frame, so the test side is near uniform
    codes = {c: rng.normal(size=(n_clips * t, d)) for c, d in [("emotion", 30), ("pose", 6)]}
    r = disentanglement_matrix(codes, {"emotion": emotion}, groups)
    for c in codes:
        assert abs(r.emotion_accuracy["emotion"][c] - 1 / 8) < 0.06
        assert r.value(c, "emotion") < 0.07


def test_chance_corrected_formula():
    assert chance_corrected(1 / 8, 8) == 0.0
    assert chance_corrected(0.05, 8) == 0.0  # below chance clips to 0
    assert chance_corrected(1.0, 8) == 1.0
    assert math.isclose(chance_corrected(0.5, 8), (0.5 - 0.125) / 0.875)


def test_split_is_by_group_and_deterministic(clean_result):
    _, _, groups = _world()
    tr, te = split_by_group(groups, 0.25, seed=0)
    assert set(groups[tr]).isdisjoint(groups[te])
    assert len(tr) + len(te) == N and len(set(groups[te])) == 10
    tr2, te2 = split_by_group(groups, 0.25, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert not np.array_equal(te, split_by_group(groups, 0.25, seed=1)[1])
    assert set(clean_result.train_groups).isdisjoint(clean_result.test_groups)
    assert clean_result.n_train + clean_result.n_test == N
    # A one-frame-per-group case still never puts a group on both sides.
    tr, te = split_by_group(np.array([3, 3, 1, 2, 2, 1, 4]), 0.5, seed=5)
    assert {3, 1, 2, 4} == set(np.array([3, 3, 1, 2, 2, 1, 4])[np.r_[tr, te]])
    assert set(np.array([3, 3, 1, 2, 2, 1, 4])[tr]).isdisjoint(np.array([3, 3, 1, 2, 2, 1, 4])[te])


def test_matrix_is_deterministic():
    rng, factors, groups = _world(2)
    codes = {"pose": _lin(rng, factors["pose"], 6), "eye": rng.normal(size=(N, 6))}
    sub = {k: factors[k] for k in ("pose", "emotion")}
    a = disentanglement_matrix(codes, sub, groups, seed=7)
    b = disentanglement_matrix(codes, sub, groups, seed=7)
    assert a.matrix == b.matrix and a.emotion_accuracy == b.emotion_accuracy


def test_mouth_as_single_column_and_tensors():
    rng, factors, groups = _world(4)
    mouth1 = factors["mouth"][:, :1]
    code = torch.tensor(_lin(rng, mouth1, 512), dtype=torch.float32)
    r = disentanglement_matrix({"lip": code}, {"mouth": torch.tensor(mouth1)}, groups.tolist())
    assert r.value("lip", "mouth") > 0.95


def test_r2_per_dim_known_values():
    t = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    r2 = r2_per_dim(t, t)
    assert r2[0] == 1.0 and math.isnan(r2[1])  # constant target: undefined
    mean_pred = torch.tensor([[1.0], [1.0], [1.0]])
    assert r2_per_dim(mean_pred, t[:, :1])[0] == 0.0


def test_codes_from_style():
    style = torch.arange(2590.0).repeat(3, 1)
    c = codes_from_style(style)
    assert {k: v.shape[1] for k, v in c.items()} == {"lip": 500, "emotion": 30, "eye": 6, "pose": 6}
    assert c["lip"][0, 0] == 2048 and c["pose"][0, -1] == 2589


def test_torchmetrics_wrapper_matches_direct_call():
    rng, factors, groups = _world(5)
    codes = {"pose": _lin(rng, factors["pose"], 6)}
    sub = {"pose": factors["pose"], "emotion": factors["emotion"]}
    metric = DisentanglementMetric(["pose"], ["pose", "emotion"], seed=0)
    gid = group_ids(groups)
    for s in range(0, N, 256):
        metric.update({"pose": torch.tensor(codes["pose"][s:s + 256])},
                      {k: torch.tensor(v[s:s + 256]) for k, v in sub.items()}, gid[s:s + 256])
    got = metric.compute()
    want = disentanglement_matrix(codes, sub, gid, seed=0)
    assert np.allclose(got.matrix, want.matrix, atol=1e-5)


# ------------------------------------------------------------------ report


def test_report_files(tmp_path, clean_result):
    metrics = {"synthtalk/lip_sync_corr": 0.93, "synthtalk": {"lip_sync_lag": 0},
               "synthtalk/fid": float("nan")}
    payload = write_report(tmp_path / "eval", metrics, clean_result)
    data = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert data == payload
    assert data["synthtalk/lip_sync_corr"] == 0.93
    assert data["synthtalk/lip_sync_lag"] == 0
    assert data["synthtalk/fid"] is None  # NaN is not valid JSON
    assert math.isclose(data["synthtalk/probe/pose/pose"], clean_result.value("pose", "pose"))
    assert "synthtalk/probe/accuracy/emotion/emotion" in data
    assert "synthtalk/probe/max_off_diagonal" in data
    d = data["disentanglement"]
    assert d["codes"] == clean_result.codes and d["factors"] == clean_result.factors
    assert np.allclose(d["matrix"], clean_result.matrix)
    for k, v in data.items():
        assert k == "disentanglement" or isinstance(v, (int, float, type(None))), k

    md = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| code \\ factor | mouth | pose | gaze | blink | emotion |" in md
    assert "✅" in md and "`synthtalk/lip_sync_corr`" in md

    from PIL import Image

    png = tmp_path / "eval" / "disentanglement.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 150
    # Nothing temporary left behind.
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == [
        "disentanglement.png", "metrics.json", "metrics.md"]


def test_report_marks_failures(tmp_path):
    rng, factors, groups = _world(1)
    codes = {"pose": _lin(rng, np.c_[factors["pose"], factors["mouth"]], 6)}
    r = disentanglement_matrix(codes, {k: factors[k] for k in ("mouth", "pose")}, groups)
    write_report(tmp_path, {}, r)
    md = (tmp_path / "metrics.md").read_text()
    assert "❌" in md and "off_diagonal:pose/mouth" in md


# ------------------------------------------------------------------ control transfer


def _pairs(seed=0, n=200):
    rng = np.random.default_rng(seed)
    src = {"pose": rng.normal(size=(n, 6)), "gaze": rng.normal(size=(n, 4)),
           "mouth": rng.uniform(size=(n, 2)), "emotion": rng.integers(0, 8, n)}
    drv = {"pose": rng.normal(size=(n, 6)), "gaze": rng.normal(size=(n, 4)),
           "mouth": rng.uniform(size=(n, 2)), "emotion": (src["emotion"] + 1 + rng.integers(0, 7, n)) % 8}
    return rng, src, drv


def test_control_generated_equals_driver():
    rng, src, drv = _pairs()
    gen = {k: (v + 0.01 * rng.normal(size=v.shape)) if v.dtype.kind == "f" else v
           for k, v in drv.items()}
    s = control_transfer(gen, drv, src)
    for f in ("pose", "gaze", "mouth"):
        assert s[f].transfer > 0.99 and s[f].leak < 0.05, (f, s[f])
    assert s["emotion"].transfer == 1.0 and s["emotion"].leak == 0.0
    assert all(check_control(s).values())
    flat = control_metrics(s)
    assert flat["synthtalk/control/pose/transfer"] == s["pose"].transfer
    assert "synthtalk/control/emotion/leak_cc" in flat


def test_control_generated_equals_source():
    _, src, drv = _pairs(1)
    # Emotion readings as logits this time.
    gen = dict(src, emotion=np.eye(8)[src["emotion"]] * 5.0)
    s = control_transfer(gen, drv, src)
    for f in ("pose", "gaze", "mouth"):
        assert s[f].transfer < 0.05 and s[f].leak > 0.99, (f, s[f])
    assert s["emotion"].transfer == 0.0 and s["emotion"].leak == 1.0
    assert not any(check_control(s).values())


def test_control_leak_only_on_differing_pairs_and_ceiling():
    _, src, drv = _pairs(2)
    drv["pose"][:100] = src["pose"][:100]  # half the pairs keep the source pose
    s = control_transfer({"pose": drv["pose"]}, drv, src, driver_readings={"pose": drv["pose"]})
    assert s["pose"].n == 200 and s["pose"].n_leak == 100
    assert s["pose"].leak < 0.05 and s["pose"].ceiling == 1.0
    s = control_transfer({"pose": drv["pose"]}, drv)  # no source: leak undefined
    assert math.isnan(s["pose"].leak) and check_control(s)["pose"]


# ------------------------------------------------------------------ lip sync


@pytest.mark.parametrize("lag", [-3, -1, 0, 2, 3])
def test_lip_sync_recovers_known_lag(lag):
    rng = np.random.default_rng(10)
    audio = np.convolve(rng.uniform(size=140), np.ones(3) / 3, mode="same")[20:120]  # smooth, (100,)
    full = np.convolve(rng.uniform(size=140), np.ones(3) / 3, mode="same")
    full[20:120] = audio
    # generated[t] = audio[t - lag]: the mouth trails the audio by `lag` frames.
    gen = full[20 - lag:120 - lag]
    res = lip_sync_correlation(gen, audio, max_lag=3)
    assert res.best_lag == lag
    assert res.best_corr > 0.99
    if lag == 0:
        assert res.corr > 0.99
    else:
        assert res.corr < res.best_corr


def test_lip_sync_uncorrelated_and_constant():
    rng = np.random.default_rng(11)
    res = lip_sync_correlation(rng.normal(size=500), rng.normal(size=500))
    assert abs(res.corr) < 0.15
    res = lip_sync_correlation(np.ones(50), rng.normal(size=50))
    assert math.isnan(res.corr) and math.isnan(res.best_corr)
    with pytest.raises(ValueError):
        lip_sync_correlation(np.ones(5), np.ones(6))
