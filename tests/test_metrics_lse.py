"""SyncNet v2 and the syncnet_python LSE protocol: network shapes, loader, known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pdfgc.errors import PdfgcError
from pdfgc.metrics.lse import (LipSyncError, embed_windows, num_sync_windows, score_clip, sync_distances, sync_score,
                               syncnet_frames, syncnet_mfcc)
from pdfgc.metrics.syncnet import SyncNet, load_syncnet


@pytest.fixture(scope="module")
def random_syncnet():
    torch.manual_seed(0)
    return SyncNet().eval()


def test_syncnet_has_the_release_keys_and_output_sizes(random_syncnet):
    state = random_syncnet.state_dict()
    assert len(state) == 102
    assert sum(p.numel() for p in random_syncnet.parameters()) == pytest.approx(13.63e6, rel=0.01)
    assert {k.split(".")[0] for k in state} == {"netcnnaud", "netfcaud", "netcnnlip", "netfclip"}
    assert state["netcnnaud.18.weight"].shape == (512, 256, 5, 4)
    assert state["netcnnlip.0.weight"].shape == (96, 3, 5, 7, 7)
    with torch.no_grad():
        assert random_syncnet.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
        assert random_syncnet.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)


@pytest.mark.parametrize("zipfile", [True, False])
def test_syncnet_weights_load_by_name_in_both_file_formats(random_syncnet, tmp_path, zipfile):
    # The release's file predates num_batches_tracked: drop it to check that it is tolerated.
    state = {k: v for k, v in random_syncnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "syncnet_v2.model"
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)
    loaded = load_syncnet(path)
    x = torch.randn(3, 1, 13, 20)
    with torch.no_grad():
        assert torch.equal(loaded.forward_aud(x), random_syncnet.forward_aud(x))


def test_syncnet_loader_names_the_problem(random_syncnet, tmp_path):
    with pytest.raises(PdfgcError, match="not found"):
        load_syncnet(tmp_path / "nope.model")
    with pytest.raises(PdfgcError, match="syncnet_v2.model"):
        load_syncnet(None)
    (tmp_path / "garbage.model").write_bytes(b"not a pickle")
    with pytest.raises(PdfgcError, match="cannot read"):
        load_syncnet(tmp_path / "garbage.model")
    state = random_syncnet.state_dict()
    state["netfcaud.3.weight"] = torch.zeros(10, 512)
    torch.save(state, tmp_path / "bad_shape.model")
    with pytest.raises(PdfgcError, match="netfcaud.3.weight has shape"):
        load_syncnet(tmp_path / "bad_shape.model")
    state = dict(random_syncnet.state_dict(), extra=torch.zeros(1))
    torch.save(state, tmp_path / "extra.model")
    with pytest.raises(PdfgcError, match="unknown key extra"):
        load_syncnet(tmp_path / "extra.model")


def test_mfcc_rate_and_window_count():
    audio = (np.random.default_rng(0).standard_normal(32000) * 3000).astype(np.int16)  # 2 s
    mfcc = syncnet_mfcc(audio)
    assert mfcc.shape == (13, 199)
    # int16 scale matters: c0 is log frame energy, so float [-1, 1] input shifts it by 2 ln(32768) ~ 20.8
    c0_float = syncnet_mfcc(audio.astype(np.float64) / 32768.0)[0]
    assert np.allclose(mfcc[0] - c0_float, 2 * np.log(32768.0), atol=1e-3)
    assert num_sync_windows(50, 32000) == 45
    assert num_sync_windows(60, 32000) == 45  # audio-limited: 32000 // 640 = 50
    assert num_sync_windows(30, 32000) == 25
    assert num_sync_windows(4, 32000) == 0


class RecordingEmbedder:
    """Embeds a video window as its 5 frame indices (written into the pixels) and an audio window
    as its first MFCC row: lets the test see exactly which frames / columns each window got."""

    def forward_lip(self, frames):
        return frames[:, 0, :, 0, 0]  # B (first BGR channel) of pixel (0, 0) of the 5 frames

    def forward_aud(self, mfcc):
        return mfcc[:, 0, 0, :]


def test_windows_take_frames_i_to_i_plus_4_and_mfcc_columns_4i_to_4i_plus_19():
    frames = np.zeros((12, 32, 32, 3), np.uint8)
    frames[..., 2] = np.arange(12)[:, None, None]  # RGB blue = frame index -> BGR channel 0
    audio = (np.random.default_rng(1).standard_normal(12 * 640) * 2000).astype(np.int16)
    video = syncnet_frames(frames)
    assert video.shape == (3, 12, 224, 224) and video.dtype == torch.float32
    mfcc = syncnet_mfcc(audio)
    w = num_sync_windows(12, len(audio))
    v, a = embed_windows(RecordingEmbedder(), video, mfcc, w, batch_size=3)
    assert w == 7 and v.shape == (7, 5) and a.shape == (7, 20)
    assert torch.equal(v, torch.arange(7.0)[:, None] + torch.arange(5.0))
    for i in range(w):
        assert np.allclose(a[i].numpy(), mfcc[0, 4 * i:4 * i + 20])


def test_tiny_case_by_hand():
    video = torch.tensor([[0.0], [1.0]])
    dists = sync_distances(video, video.clone(), vshift=1)
    # padded audio [0, 0, 1, 0]: window 0 sees [0, 0, 1], window 1 sees [0, 1, 0]
    assert torch.allclose(dists, torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]), atol=1e-5)
    s = sync_score(video, video.clone(), vshift=1)
    assert s.offset == 0 and s.num_windows == 2
    assert s.min_dist == pytest.approx(0.0, abs=1e-5)
    assert s.confidence == pytest.approx(0.5, abs=1e-5)  # median of [0.5, 0, 1] minus 0


@pytest.mark.parametrize("delay", [-4, 0, 3, 7])
def test_a_known_audio_delay_is_recovered(delay):
    gen = torch.Generator().manual_seed(5)
    stream = torch.randn(120, 16, generator=gen)
    video = stream[20:80]
    audio = stream[20 - delay:80 - delay]  # audio window i carries video content i - delay
    s = sync_score(video, audio)
    assert s.offset == -delay
    assert s.confidence > 1.0
    shuffled = sync_score(video, audio[torch.randperm(len(audio), generator=gen)])
    assert shuffled.confidence < 0.5 * s.confidence


def test_metric_averages_videos_and_reduces_sums():
    metric = LipSyncError()
    gen = torch.Generator().manual_seed(2)
    scores = []
    for delay in (0, 2):
        stream = torch.randn(80, 8, generator=gen)
        scores.append(sync_score(stream[10:60], stream[10 - delay:60 - delay]))
        metric.update(scores[-1])
    out = metric.compute()
    assert out["lse_d"].item() == pytest.approx(np.mean([s.min_dist for s in scores]))
    assert out["lse_c"].item() == pytest.approx(np.mean([s.confidence for s in scores]))
    assert out["abs_offset"].item() == pytest.approx(1.0)
    assert metric.count.item() == 2


def test_real_network_runs_the_protocol_on_a_tiny_clip(random_syncnet):
    frames = np.random.default_rng(3).integers(0, 255, (8, 48, 48, 3), dtype=np.uint8)
    audio = (np.random.default_rng(4).standard_normal(8 * 640) * 2000).astype(np.int16)
    s = score_clip(random_syncnet, frames, audio)
    assert s.num_windows == 3 and len(s.mean_dists) == 31
    assert s.min_dist == pytest.approx(min(s.mean_dists))
    assert s.confidence >= 0 and -15 <= s.offset <= 15
    with pytest.raises(PdfgcError, match="too short"):
        score_clip(random_syncnet, frames[:5], audio)
