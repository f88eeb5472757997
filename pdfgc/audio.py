"""The official PD-FGC / PC-AVS mel front-end, reimplemented without ``lws``.

Pipeline (``mel_spectrogram``): mono 16 kHz waveform -> scale to RMS 0.1 -> lws-style STFT
magnitude (window = n_fft = 1280 samples, hop 160) -> Slaney mel (80 bands, 125-7600 Hz) ->
``20*log10(max(1e-5, mel)) - 20`` -> ``clip((dB + 100) / 100, 0, 1)``. The result is a
``(T, 80)`` float32 array, one row per 10 ms hop. See
``shared/reference/official_architecture.md`` section 3 for the facts this follows.

Timing derivation
-----------------
lws in ``perfectrec`` mode prepends ``N_FFT - HOP = 1120`` zeros and pads the end to a
multiple of ``HOP``, so for an input of ``N`` samples there are ``T = ceil(N/160) + 7`` rows and

* mel row ``t`` covers input samples ``[160 t - 1120, 160 t + 160)``; its (symmetric) window
  peaks at sample ``160 t - 480.5``, i.e. row ``t`` is centred on time ``(t - 3) * 10 ms``
  (minus half a sample).
* A video frame spans ``MEL_ROWS_PER_FRAME = 4`` rows (40 ms at 25 fps). A model window is
  ``WINDOW_ROWS = 20`` rows = 5 video frames. Window ``n`` (``mel_windows``) is rows
  ``[4n, 4n + 20)``; it covers samples ``[640 n - 1120, 640 n + 3200)`` and its row centres
  average to ``(4n + 9.5 - 3) * 10 ms = 40 n + 65 ms``.
* The release pairs window ``n`` with video frame ``i = n + 2`` (shown at ``t = 40 i ms``), so
  the window for frame ``i`` is rows ``[4(i-2), 4(i-2) + 20)``, centred at ``40 i - 15 ms``:
  15 ms (under half a frame) before the frame's own time. Column ``c`` (0-based) of that
  window is centred at ``40 i + (c - 11) * 10 ms``, so column 11 is exactly the frame's time;
  an impulse at ``t = i / 25`` s touches rows ``4i .. 4i+7`` = columns 8..15, peaking at 11.
* The release's *inference* instead wrote window ``n`` as output frame ``n`` (audio starting at
  t = 0), so its video ran 2 frames (80 ms) ahead of the sound. ``frame_windows`` uses the
  training indexing for every output frame ``i`` (zero-filled where the rows fall outside the
  audio), which removes that lead and yields one window per video frame.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from pathlib import Path
from typing import Union

import numpy as np
import torch

from pdfgc.errors import PdfgcError

# --- constants (all from the official AudioConfig; see the reference, section 3) ---
SAMPLE_RATE = 16000  # Hz; every waveform is resampled to this before the STFT.
RMS_TARGET = 0.1  # the release scales each utterance to this RMS so loudness does not matter.
N_FFT = 1280  # 80 ms: FFT size and window length (lws uses window = n_fft).
WIN_LENGTH = N_FFT  # the analysis window spans the whole FFT (no zero padding inside a frame).
HOP = 160  # 10 ms hop: 100 mel rows per second, 4 per 25 fps video frame.
PREPAD = N_FFT - HOP  # 1120 zeros lws 'perfectrec' mode prepends so the first samples get full overlap.
N_MELS = 80  # mel bands (the audio encoder's input height).
FMIN = 125.0  # Hz, lowest mel edge (release value): leaves out rumble and mains hum below it.
FMAX = 7600.0  # Hz, highest mel edge: just under Nyquist (8 kHz).
REF_LEVEL_DB = 20.0  # dB subtracted after 20*log10 (the release's reference level).
MIN_LEVEL_DB = -100.0  # dB mapped to 0; (dB - MIN) / -MIN maps [-100, 0] dB onto [0, 1].
AMP_FLOOR = 1e-5  # amplitude floor before the log (-100 dB; minus REF_LEVEL_DB, silence clips to 0).
FPS = 25  # video frame rate the whole model assumes.
MEL_ROWS_PER_FRAME = SAMPLE_RATE // HOP // FPS  # 4 = 16000 / 160 / 25 rows per video frame.
WINDOW_FRAMES = 5  # video frames of audio context per model input.
WINDOW_ROWS = MEL_ROWS_PER_FRAME * WINDOW_FRAMES  # 20 mel rows per audio-encoder input (200 ms).
FRAME_OFFSET = WINDOW_FRAMES // 2  # 2: window n belongs to video frame n + 2 (release indexing).

_OVERLAP = N_FFT // HOP  # 8 frames overlap at every sample.


def _hann_half_sample(n: int) -> np.ndarray:
    """lws's "symmetric" Hann: h[k] = 0.5 (1 - cos(2 pi (2k+1) / (2n))), k = 0..n-1.

    Sampled at half-integer positions, so it is symmetric about (n-1)/2 and never exactly 0
    (it is *not* ``np.hanning``).
    """
    k = np.arange(n, dtype=np.float64)
    return 0.5 * (1.0 - np.cos(2.0 * np.pi * (2.0 * k + 1.0) / (2.0 * n)))


def _analysis_window() -> np.ndarray:
    """lws's perfect-reconstruction analysis window awin[k] = sqrt(h[k] / w[k mod HOP]).

    ``w[j] = sum_q h[HOP q + j]`` is the overlap-add normaliser; with this window used for both
    analysis and synthesis, ``sum over overlapping frames of awin**2`` is exactly 1.
    """
    h = _hann_half_sample(N_FFT)
    w = h.reshape(_OVERLAP, HOP).sum(axis=0)  # w[j] = sum_q h[160 q + j]
    return np.sqrt(h / np.tile(w, _OVERLAP))


ANALYSIS_WINDOW = _analysis_window()  # (1280,) float64, see _analysis_window.
ANALYSIS_WINDOW.setflags(write=False)


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """Slaney-style mel filterbank (80, 641) float32, librosa's defaults as in the release.

    librosa is imported here, not at module import, because it is slow to import.
    """
    import librosa

    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)
    basis = np.ascontiguousarray(basis, dtype=np.float32)
    basis.setflags(write=False)
    return basis


def num_stft_frames(num_samples: int) -> int:
    """Rows of the STFT / mel for ``num_samples`` input samples: ceil(N / 160) + 7."""
    return -(-int(num_samples) // HOP) + _OVERLAP - 1


def num_windows(num_rows: int) -> int:
    """Model windows ``mel_windows`` yields for ``num_rows`` mel rows: T // 4 - 4 (may be <= 0)."""
    return int(num_rows) // MEL_ROWS_PER_FRAME - (WINDOW_FRAMES - 1)


def num_video_frames(num_samples: int) -> int:
    """Whole 25 fps video frames in ``num_samples`` of 16 kHz audio: floor(duration * 25)."""
    return int(num_samples) // (SAMPLE_RATE // FPS)


# --- loading ------------------------------------------------------------------------------


def load_audio(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an audio file (or the audio of a video) as mono 16 kHz float32, shape ``(N,)``.

    Files libsndfile reads (wav, flac, ogg, mp3 with libsndfile >= 1.1) go through soundfile;
    channels are averaged and other rates are resampled with librosa (soxr_hq, librosa's
    default; the release used resampy, so resampled inputs may differ slightly). Anything else
    (m4a, aac, mp4, ...) is decoded by imageio-ffmpeg's bundled ffmpeg straight to 16 kHz mono,
    on the file's timeline: sample 0 is t = 0 of the container, the time of video frame 0, even
    if the audio stream starts late (padded with silence) or early (trimmed).

    Raises:
        PdfgcError: missing, unreadable or empty file (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise PdfgcError(f"audio file not found: {path}")
    try:
        import soundfile as sf

        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception:  # not a libsndfile format: let ffmpeg try
        wav = _load_with_ffmpeg(path)
    else:
        wav = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        if sr != SAMPLE_RATE and wav.size:
            import librosa

            wav = librosa.resample(wav, orig_sr=sr, target_sr=SAMPLE_RATE)
    if wav.size == 0:
        raise PdfgcError(f"audio file has no samples: {path}")
    return np.ascontiguousarray(wav, dtype=np.float32)


def _load_with_ffmpeg(path: Path) -> np.ndarray:
    """Decode any ffmpeg-readable file to mono 16 kHz float32 through a pipe."""
    import imageio_ffmpeg

    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path),
        "-vn", "-map", "0:a:0", "-af", "aresample=async=1:first_pts=0",  # pin to t = 0
        "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-",
    ]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = f" ({reason[-1]})" if reason else ""
        raise PdfgcError(f"cannot read audio file: {path}{detail}")
    return np.frombuffer(proc.stdout, dtype="<f4").copy()


# --- the front-end ------------------------------------------------------------------------


def normalize_rms(x: np.ndarray, target: float = RMS_TARGET) -> np.ndarray:
    """Scale ``x`` to RMS ``target`` (float64 copy). Silence (RMS 0) returns zeros, never NaN."""
    x = np.asarray(x, dtype=np.float64)
    rms = math.sqrt(float(np.mean(np.square(x)))) if x.size else 0.0
    if not math.isfinite(rms):
        raise PdfgcError("audio contains NaN or infinite samples")
    if rms == 0.0:
        return np.zeros_like(x)
    return x * (target / rms)


def _frames(x: np.ndarray) -> np.ndarray:
    """Strided (no-copy) ``(ceil(N/160) + 7, 1280)`` view of the lws perfectrec frames of ``x``."""
    num_frames = num_stft_frames(x.size)
    padded = np.zeros((num_frames - 1) * HOP + N_FFT, dtype=np.float64)
    padded[PREPAD:PREPAD + x.size] = x
    return np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # row m at 160 m


def stft_magnitude(x: np.ndarray) -> np.ndarray:
    """lws-style (perfectrec) STFT magnitude of a 1-D signal: ``(ceil(N/160) + 7, 641)`` float64.

    Frame m is samples ``[160 m, 160 m + 1280)`` of ``[1120 zeros, x, zeros to a multiple of
    160, then enough zeros to finish the last frame]``, times ``ANALYSIS_WINDOW``, real FFT
    of size 1280 without scaling.
    """
    frames = _frames(np.asarray(x, dtype=np.float64).reshape(-1))
    return np.abs(np.fft.rfft(frames * ANALYSIS_WINDOW, n=N_FFT, axis=1))


@functools.lru_cache(maxsize=1)
def _mel_basis_sparse():
    """(first bin, end bin, CSR (80, hi - lo) float64 basis) over the FFT bins some band uses.

    Each bin feeds at most two bands (~1.2k non-zeros of 48k), so a sparse product is ~40x
    less work than a dense one, and it is single-threaded: small multi-threaded BLAS calls
    stall badly when the CPU is shared (measured 4x slower under load).
    """
    import scipy.sparse

    basis = mel_basis().astype(np.float64)
    used = np.nonzero(basis.any(axis=0))[0]
    lo, hi = int(used[0]), int(used[-1]) + 1
    return lo, hi, scipy.sparse.csr_matrix(basis[:, lo:hi])


_CHUNK = 128  # STFT frames per block in mel_spectrogram: keeps the working set in cache.


def mel_spectrogram(waveform: np.ndarray) -> np.ndarray:
    """Official normalised log-mel of a mono 16 kHz waveform.

    Args:
        waveform: ``(N,)`` samples (any scale; it is RMS-normalised first).
    Returns:
        ``(T, 80)`` float32 in [0, 1], ``T = ceil(N / 160) + 7``; row t covers samples
        ``[160 t - 1120, 160 t + 160)`` (see the module docstring). Computed in float64,
        equal to ``stft_magnitude`` -> mel -> dB to float32 precision.
    """
    x = normalize_rms(np.asarray(waveform).reshape(-1))
    frames = _frames(x)
    lo, hi, basis = _mel_basis_sparse()
    mel = np.empty((frames.shape[0], N_MELS), dtype=np.float64)
    buf = np.empty((_CHUNK, N_FFT), dtype=np.float64)
    for start in range(0, frames.shape[0], _CHUNK):
        stop = min(start + _CHUNK, frames.shape[0])
        block = np.multiply(frames[start:stop], ANALYSIS_WINDOW, out=buf[: stop - start])
        spec = np.fft.rfft(block, n=N_FFT, axis=1)
        mel[start:stop] = (basis @ np.abs(spec[:, lo:hi]).T).T
    db = 20.0 * np.log10(np.maximum(AMP_FLOOR, mel)) - REF_LEVEL_DB
    return np.clip((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB, 0.0, 1.0).astype(np.float32)


# --- windows for the audio encoder ----------------------------------------------------------

AudioLike = Union[str, os.PathLike, np.ndarray, torch.Tensor]


def _as_mel(x: AudioLike) -> np.ndarray:
    """A path, a 1-D waveform or a ``(T, 80)`` mel -> ``(T, 80)`` float32 mel."""
    if isinstance(x, (str, os.PathLike)):
        return mel_spectrogram(load_audio(x))
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 1:
        return mel_spectrogram(x)
    if x.ndim == 2 and x.shape[1] == N_MELS:
        return np.ascontiguousarray(x, dtype=np.float32)
    raise ValueError(f"expected a path, a 1-D waveform or a (T, {N_MELS}) mel, got shape {x.shape}")


def mel_windows(x: AudioLike) -> torch.Tensor:
    """The release's model inputs: ``(N, 1, 80, 20)`` float32, ``N = T // 4 - 4``.

    Window n is mel rows ``[4n, 4n + 20)`` transposed to (mel band, time); it belongs to video
    frame ``n + 2``. ``x`` is an audio path, a 16 kHz waveform ``(S,)`` or a mel ``(T, 80)``.

    Raises:
        PdfgcError: the audio is shorter than one window (T < 20 rows, about 0.13 s).
    """
    mel = _as_mel(x)
    n = num_windows(mel.shape[0])
    if n < 1:
        where = f" ({x})" if isinstance(x, (str, os.PathLike)) else ""
        raise PdfgcError(
            f"audio too short{where}: {mel.shape[0]} mel rows, need at least {WINDOW_ROWS}"
            f" (> {(WINDOW_ROWS - _OVERLAP) * HOP / SAMPLE_RATE:.2f} s)"
        )
    # (T-19, 80, 20) strided view; take every 4th start.
    view = np.lib.stride_tricks.sliding_window_view(mel, WINDOW_ROWS, axis=0)[::MEL_ROWS_PER_FRAME]
    return torch.from_numpy(np.ascontiguousarray(view[:n]))[:, None]


def frame_windows(mel: Union[np.ndarray, torch.Tensor], num_frames: int) -> torch.Tensor:
    """One audio window per video frame, aligned to the frame's time: ``(F, 1, 80, 20)``.

    The window for frame ``i`` (shown at ``t = i / 25`` s) is mel rows ``[4(i-2), 4(i-2) + 20)``,
    with rows outside ``[0, T)`` zero-filled (0 is the value of silence). Its centre is 15 ms
    before ``t``; column 11 is centred exactly on ``t`` (module docstring).

    Args:
        mel: ``(T, 80)`` mel from ``mel_spectrogram`` (numpy or torch).
        num_frames: F, usually ``num_video_frames(num_samples)``.
    """
    if isinstance(mel, torch.Tensor):
        mel = mel.detach().cpu().numpy()
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim != 2 or mel.shape[1] != N_MELS:
        raise ValueError(f"expected a (T, {N_MELS}) mel, got shape {mel.shape}")
    num_frames = int(num_frames)
    if num_frames <= 0:
        return torch.zeros(0, 1, N_MELS, WINDOW_ROWS)
    lead = FRAME_OFFSET * MEL_ROWS_PER_FRAME  # 8 rows of silence before row 0 (frames 0 and 1)
    # Window i starts at padded row 4 i (= mel row 4(i-2)); the last one must fit.
    need = (num_frames - 1) * MEL_ROWS_PER_FRAME + WINDOW_ROWS
    padded = np.zeros((max(need, lead + mel.shape[0]), N_MELS), dtype=np.float32)
    padded[lead:lead + mel.shape[0]] = mel
    view = np.lib.stride_tricks.sliding_window_view(padded, WINDOW_ROWS, axis=0)[::MEL_ROWS_PER_FRAME]
    return torch.from_numpy(np.ascontiguousarray(view[:num_frames]))[:, None]
