"""Tests for the lws-free official mel front-end (pdfgc.audio)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pdfgc import audio as A
from pdfgc.errors import PdfgcError

SR = A.SAMPLE_RATE


def _tone(freq: float, seconds: float, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amp * np.sin(2 * np.pi * freq * t)


def _reference_window() -> np.ndarray:
    """awin from the written definition, with explicit loops (independent of the module)."""
    n, hop = 1280, 160
    h = [0.5 * (1 - math.cos(2 * math.pi * (2 * k + 1) / (2 * n))) for k in range(n)]
    w = [sum(h[hop * q + j] for q in range(n // hop)) for j in range(hop)]
    return np.array([math.sqrt(h[k] / w[k % hop]) for k in range(n)])


# --- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 159, 160, 161, 1919, 1920, 1921, 2560, 16000, 16001, 40037])
def test_frame_count_formulas(n):
    x = np.random.default_rng(n).standard_normal(n)
    mel = A.mel_spectrogram(x)
    assert mel.shape == (math.ceil(n / 160) + 7, 80)
    assert mel.shape[0] == A.num_stft_frames(n)
    if mel.shape[0] >= A.WINDOW_ROWS:
        assert A.mel_windows(mel).shape == (mel.shape[0] // 4 - 4, 1, 80, 20)
    else:
        with pytest.raises(PdfgcError, match="too short"):
            A.mel_windows(mel)
    assert A.num_video_frames(n) == math.floor(n / SR * 25)


def test_constants():
    assert (A.SAMPLE_RATE, A.N_FFT, A.HOP, A.PREPAD, A.N_MELS) == (16000, 1280, 160, 1120, 80)
    assert (A.MEL_ROWS_PER_FRAME, A.WINDOW_ROWS, A.FPS) == (4, 20, 25)
    assert A.mel_basis().shape == (80, 641)


def test_window_overlap_add():
    awin = A.ANALYSIS_WINDOW
    np.testing.assert_allclose(awin, _reference_window(), rtol=0, atol=1e-14)
    # The half-sample Hann is not numpy's symmetric hanning.
    h = 0.5 * (1 - np.cos(2 * np.pi * (2 * np.arange(1280) + 1) / 2560))
    assert not np.allclose(h, np.hanning(1280))
    w = h.reshape(8, 160).sum(axis=0)
    # h / w sums to 1 over the 8 frames overlapping any sample, and so does awin**2
    # (perfect reconstruction when awin is used for analysis and synthesis).
    np.testing.assert_allclose((h / np.tile(w, 8)).reshape(8, 160).sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose((awin**2).reshape(8, 160).sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(awin, awin[::-1], atol=1e-15)  # symmetric about 639.5


def test_stft_matches_direct_dft():
    rng = np.random.default_rng(0)
    n = 5000
    x = rng.standard_normal(n)
    mag = A.stft_magnitude(x)
    assert mag.shape == (math.ceil(n / 160) + 7, 641)
    awin = _reference_window()
    k = np.arange(1280)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(641), k) / 1280)
    # First frame (mostly pre-pad), a middle frame, the last frame (mostly end padding).
    for m in (0, 3, 17, mag.shape[0] - 1):
        idx = 160 * m - 1120 + k  # row m covers samples [160 m - 1120, 160 m + 160)
        frame = np.where((idx >= 0) & (idx < n), x[np.clip(idx, 0, n - 1)], 0.0)
        expect = np.abs(dft @ (frame * awin))
        np.testing.assert_allclose(mag[m], expect, rtol=1e-9, atol=1e-9 * expect.max())


def test_stft_matches_real_lws():
    """|STFT| rows 0, 5, 14, 31 from the real lws 1.2.8 (``lws.lws(1280, 160, mode="speech")
    .stft``, built from its sdist) of the signal below; lws itself is not a dependency.
    """
    ref = np.load(Path(__file__).parent / "fixtures" / "lws_1.2.8_stft.npz")
    t = np.arange(int(ref["n"])) / SR
    x = 0.3 * np.sin(2 * np.pi * (200 * t + 3000 * t**2)) + 0.05 * np.sign(np.sin(2 * np.pi * 97 * t))
    mag = A.stft_magnitude(x)
    assert mag.shape[0] == int(ref["num_frames"])
    np.testing.assert_allclose(mag[ref["rows"]], ref["mag"], rtol=0, atol=1e-12 * ref["mag"].max())


# --- known answers ---------------------------------------------------------------------------


def _band_centres() -> np.ndarray:
    import librosa

    return librosa.mel_frequencies(n_mels=82, fmin=125.0, fmax=7600.0)[1:-1]


@pytest.mark.parametrize("band", [5, 30, 60])
def test_tone_lands_in_its_band_at_the_expected_level(band):
    centres = _band_centres()
    bin_hz = SR / 1280  # 12.5 Hz
    b0 = int(round(centres[band] / bin_hz))  # tone exactly on an FFT bin, near the band centre
    freq = b0 * bin_hz
    x = _tone(freq, 1.0, amp=0.3)  # 1 s = whole number of periods, so RMS is exact
    mel = A.mel_spectrogram(x)
    steady = mel[20:-20]  # frames fully inside the tone
    assert np.all(steady.argmax(axis=1) == np.argmin(np.abs(centres - freq)))
    basis = A.mel_basis().astype(np.float64)
    assert basis[band, b0] > 0  # the band's triangle contains f

    # Analytic level: after RMS normalisation the amplitude is 0.1 * sqrt(2). awin is a sine
    # window sin(pi (k + 1/2) / n) / 2, whose DFT at integer bin offsets d is
    # sum(awin) / (1 - 4 d^2), with sum(awin) = 1 / (2 sin(pi / (2 n))).
    amp = 0.1 * math.sqrt(2)
    win_sum = 0.5 / math.sin(math.pi / 2560)
    d = np.arange(-30, 31)
    spectrum = amp / 2 * win_sum / np.abs(1 - 4 * d**2.0)
    mel_amp = float(basis[band, b0 + d] @ spectrum)
    expect = np.clip((20 * math.log10(mel_amp) - 20 + 100) / 100, 0, 1)
    np.testing.assert_allclose(steady[:, band], expect, atol=2e-4)
    assert 0.5 < expect < 1.0  # a sanity range for a loud tone


def test_rms_normalisation_makes_level_irrelevant():
    quiet = A.mel_spectrogram(_tone(440.0, 0.5, 0.01))
    loud = A.mel_spectrogram(_tone(440.0, 0.5, 0.5))
    np.testing.assert_allclose(quiet, loud, atol=1e-5)
    x = A.normalize_rms(_tone(440.0, 0.5, 0.5))
    assert math.isclose(float(np.sqrt(np.mean(x**2))), 0.1, rel_tol=1e-9)


def test_silence_is_zero_without_nan():
    assert np.array_equal(A.normalize_rms(np.zeros(100)), np.zeros(100))
    mel = A.mel_spectrogram(np.zeros(8000, dtype=np.float32))
    assert mel.dtype == np.float32 and not np.isnan(mel).any()
    assert np.all(mel == 0)
    assert torch.all(A.mel_windows(mel) == 0)


def test_values_in_unit_range():
    rng = np.random.default_rng(1)
    x = np.concatenate([1e4 * rng.standard_normal(4000), np.zeros(4000), rng.standard_normal(4000)])
    mel = A.mel_spectrogram(x)
    assert mel.dtype == np.float32 and mel.min() >= 0 and mel.max() <= 1
    assert mel.min() == 0.0 and mel.max() > 0.5  # the silent middle clips to 0


def test_nan_input_is_rejected():
    x = np.ones(4000)
    x[5] = np.nan
    with pytest.raises(PdfgcError, match="NaN"):
        A.mel_spectrogram(x)


# --- windows and timing ---------------------------------------------------------------------


def test_mel_windows_layout():
    rng = np.random.default_rng(2)
    mel = rng.random((103, 80), dtype=np.float32)
    win = A.mel_windows(mel)
    assert win.dtype == torch.float32 and win.shape == (103 // 4 - 4, 1, 80, 20)
    for n in (0, 7, win.shape[0] - 1):
        assert torch.equal(win[n, 0], torch.from_numpy(mel[4 * n:4 * n + 20].T))
    # waveform and tensor inputs give the same as the mel
    wav = rng.standard_normal(9000)
    assert torch.equal(A.mel_windows(wav), A.mel_windows(A.mel_spectrogram(wav)))
    assert torch.equal(A.mel_windows(torch.from_numpy(mel)), win)


def test_frame_windows_match_release_indexing():
    rng = np.random.default_rng(3)
    mel = rng.random((123, 80), dtype=np.float32)
    num_frames = 40  # more frames than the mel covers: the tail is zero-filled
    fw = A.frame_windows(mel, num_frames)
    mw = A.mel_windows(mel)
    assert fw.shape == (num_frames, 1, 80, 20)
    for i in range(2, mw.shape[0] + 2):  # frame i pairs with release window i - 2
        assert torch.equal(fw[i], mw[i - 2])
    # frames 0 and 1 start before the audio: the missing 8 / 4 rows are silence (0)
    assert torch.all(fw[0, 0, :, :8] == 0) and torch.equal(fw[0, 0, :, 8:], torch.from_numpy(mel[:12].T))
    assert torch.all(fw[1, 0, :, :4] == 0) and torch.equal(fw[1, 0, :, 4:], torch.from_numpy(mel[:16].T))
    assert torch.all(fw[-1] == 0)  # rows [4*37, ...) are past T = 123
    assert A.frame_windows(mel, 0).shape == (0, 1, 80, 20)


@pytest.mark.parametrize("t", [1.0, 0.52, 1.013, 1.987])
def test_click_appears_at_the_frame_time(t):
    """A click at t lands in window i = round(25 t) with its peak at column 11 + round((t - i/25)/10 ms).

    Column c of the window for frame i is centred at i/25 + (c - 11) * 10 ms, so a click exactly
    at a frame time peaks at column 11 and touches columns 8..15 (mel rows 4i .. 4i+7).
    """
    n = 3 * SR
    x = np.zeros(n)
    s = int(round(t * SR))
    x[s] = 1.0
    mel = A.mel_spectrogram(x)
    fw = A.frame_windows(mel, A.num_video_frames(n)).numpy()[:, 0]  # (F, 80, 20)
    i = int(round(t * 25))
    energy = fw[i].sum(axis=0)  # per column
    nonzero = np.nonzero(energy)[0]
    first = s // 160 - 4 * (i - 2)  # first row touching sample s is floor(s / 160)
    assert list(nonzero) == list(range(first, first + 8))
    expect_peak = 11 + round((s / SR - i / 25) / 0.01)
    assert int(energy.argmax()) == expect_peak
    if s % 640 == 0:  # exactly on a frame time
        assert list(nonzero) == list(range(8, 16)) and expect_peak == 11


# --- files and errors ------------------------------------------------------------------------


def test_too_short_audio_raises():
    with pytest.raises(PdfgcError, match="too short"):
        A.mel_windows(np.random.default_rng(0).standard_normal(1900))  # 12 + 7 = 19 rows
    assert A.mel_windows(np.random.default_rng(0).standard_normal(1921)).shape[0] == 1


def test_load_audio_resamples_and_downmixes(tmp_path):
    path = tmp_path / "stereo44k.wav"
    left = _tone(1000.0, 0.5, 0.25)  # 0.5 s at 16 k, written at 44.1 k below
    t = np.arange(int(0.5 * 44100)) / 44100
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 1000 * t), 0.2 * np.sin(2 * np.pi * 1000 * t)], 1)
    sf.write(path, stereo, 44100)
    wav = A.load_audio(path)
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert abs(wav.size - left.size) <= 1
    assert math.isclose(float(np.sqrt(np.mean(wav[1000:-1000] ** 2))), 0.3 / math.sqrt(2), rel_tol=0.01)
    # a 16 kHz mono PCM16 file comes back as written (to PCM16 precision)
    path16 = tmp_path / "mono16k.wav"
    sf.write(path16, left, SR, subtype="PCM_16")
    np.testing.assert_allclose(A.load_audio(path16), left, atol=1 / 32768 + 1e-7)
    assert A.mel_windows(path16).shape == (A.num_stft_frames(left.size) // 4 - 4, 1, 80, 20)


def test_load_audio_errors(tmp_path):
    with pytest.raises(PdfgcError, match="not found.*nope.wav"):
        A.load_audio(tmp_path / "nope.wav")
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"this is not audio" * 50)
    with pytest.raises(PdfgcError, match="garbage.mp3"):
        A.load_audio(garbage)
    with pytest.raises(PdfgcError, match="not found"):
        A.mel_windows(str(tmp_path / "missing.wav"))


def test_speed_sanity():
    """Loose bound (50x real time) so a loaded CI machine passes; measured 400-900x on 2 cores."""
    x = np.random.default_rng(0).standard_normal(10 * SR)
    A.mel_spectrogram(x[:SR])  # warm the mel-basis cache
    start = time.perf_counter()
    A.mel_spectrogram(x)
    assert time.perf_counter() - start < 10 / 50
