"""LSE-D / LSE-C with the ``syncnet_python`` protocol (``SyncNetInstance.evaluate``), exactly.

* audio: 16 kHz mono int16, raw values into ``python_speech_features.mfcc`` (13 coefficients at
  100 Hz, rectangular window, c0 = log energy) -> ``(13, T)``;
* video: 25 fps frames, BGR float 0-255, each whole frame resized to 224 (Wav2Lip's
  ``calculate_scores_LRS.py`` route for aligned face crops; no detector);
* windows: ``W = min(frames, samples // 640) - 5``; window ``i`` = frames ``i..i+4`` and MFCC
  columns ``4i..4i+19``;
* offsets ``-vshift..vshift`` (15): audio embeddings zero-padded by ``vshift`` at both ends,
  distance of video window ``i`` to audio windows ``i-15..i+15``, mean over windows -> ``mdist``
  (31 values); LSE-D = ``min(mdist)``, LSE-C = ``median(mdist) - min(mdist)``,
  AV offset = ``vshift - argmin``; per-video numbers averaged over videos.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from pdfgc.errors import PdfgcError

__all__ = ["LipSyncError", "SyncEmbedder", "SyncScore", "embed_windows", "num_sync_windows", "read_wav_int16",
           "score_clip", "sync_distances", "sync_score", "syncnet_frames", "syncnet_mfcc"]

SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps
WINDOW_FRAMES = 5
WINDOW_MFCC = 20
VSHIFT = 15
SYNCNET_SIDE = 224


class SyncEmbedder(Protocol):
    """What the scoring loop needs from SyncNet (a stub with known answers satisfies it too)."""

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor: ...  # (N,3,5,224,224) -> (N,D)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor: ...  # (N,1,13,20) -> (N,D)


@dataclass(frozen=True)
class SyncScore:
    """One video's result: LSE-D (``min_dist``), LSE-C (``confidence``), AV offset in frames
    (negative = audio late), the 31 mean distances and the number of windows."""

    min_dist: float
    confidence: float
    offset: int
    mean_dists: tuple[float, ...]
    num_windows: int


def read_wav_int16(path: str | os.PathLike) -> np.ndarray:
    """``(N,)`` int16 samples of a 16 kHz wav (mono-mixed), the values SyncNet's MFCC expects."""
    from scipy.io import wavfile

    path = Path(path)
    if not path.is_file():
        raise PdfgcError(f"audio file not found: {path}")
    try:
        rate, data = wavfile.read(path)
    except Exception as exc:
        raise PdfgcError(f"cannot read audio {path}: {exc}") from exc
    if rate != SAMPLE_RATE:
        raise PdfgcError(f"{path} is {rate} Hz; LSE needs 16 kHz audio (the processed-data layout)")
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.dtype.kind == "f":  # float wavs in [-1, 1] -> the int16 scale the MFCC was tuned on
        data = np.clip(data * 32768.0, -32768, 32767)
    return np.asarray(data).astype(np.int16)


def syncnet_mfcc(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``(13, T)`` float MFCC of int16-scaled samples ``(N,)``, T ~ 100 per second
    (``python_speech_features.mfcc`` defaults, as syncnet_python calls it)."""
    import python_speech_features

    return np.asarray(python_speech_features.mfcc(np.asarray(audio), sample_rate), dtype=np.float32).T


def syncnet_frames(frames: np.ndarray) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 RGB -> ``(3, T, 224, 224)`` float32 BGR in 0-255 (no normalisation)."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {frames.shape}")
    if frames.shape[1:3] != (SYNCNET_SIDE, SYNCNET_SIDE):
        frames = np.stack([cv2.resize(f, (SYNCNET_SIDE, SYNCNET_SIDE)) for f in frames])
    bgr = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1])).float()
    return bgr.permute(3, 0, 1, 2).contiguous()


def num_sync_windows(num_frames: int, num_samples: int) -> int:
    """Windows syncnet_python scores: ``min(frames, samples // 640) - 5`` (0 if shorter)."""
    return max(0, min(int(num_frames), int(num_samples) // SAMPLES_PER_FRAME) - WINDOW_FRAMES)


@torch.no_grad()
def embed_windows(embedder: SyncEmbedder, video: torch.Tensor, mfcc: np.ndarray | torch.Tensor,
                  num_windows: int, batch_size: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of every window: ``(W, D)`` video and ``(W, D)`` audio.

    Args:
        video: ``(3, T, 224, 224)`` from :func:`syncnet_frames`.
        mfcc: ``(13, T_mfcc)`` from :func:`syncnet_mfcc`.
        num_windows: ``W`` from :func:`num_sync_windows`.
    """
    device = next((p.device for p in getattr(embedder, "parameters", lambda: iter(()))()), torch.device("cpu"))
    mfcc = torch.as_tensor(np.asarray(mfcc), dtype=torch.float32)
    lips, auds = [], []
    for start in range(0, num_windows, batch_size):
        idx = range(start, min(num_windows, start + batch_size))
        v = torch.stack([video[:, i:i + WINDOW_FRAMES] for i in idx]).to(device)
        a = torch.stack([mfcc[:, MFCC_PER_FRAME * i:MFCC_PER_FRAME * i + WINDOW_MFCC] for i in idx])
        lips.append(embedder.forward_lip(v).float().cpu())
        auds.append(embedder.forward_aud(a.unsqueeze(1).to(device)).float().cpu())
    if not lips:
        raise PdfgcError(f"clip too short for LSE: needs more than {WINDOW_FRAMES} frames of video and audio")
    return torch.cat(lips), torch.cat(auds)


def sync_distances(video_feat: torch.Tensor, audio_feat: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """``(W, 2 vshift + 1)``: distance of video window ``i`` to audio windows ``i - vshift ..
    i + vshift`` (zero vectors beyond the ends, as ``calc_pdist`` pads)."""
    padded = F.pad(audio_feat, (0, 0, vshift, vshift))
    span = 2 * vshift + 1
    return torch.stack([F.pairwise_distance(video_feat[[i]].expand(span, -1), padded[i:i + span])
                        for i in range(len(video_feat))])


def sync_score(video_feat: torch.Tensor, audio_feat: torch.Tensor, vshift: int = VSHIFT) -> SyncScore:
    """LSE-D, LSE-C and the AV offset of one video from its window embeddings ``(W, D)``."""
    mean_dists = sync_distances(video_feat, audio_feat, vshift).mean(0)
    min_dist, argmin = torch.min(mean_dists, 0)
    # torch.median returns the lower middle value for even counts; 31 offsets is odd as in the original.
    conf = torch.median(mean_dists) - min_dist
    return SyncScore(float(min_dist), float(conf), int(vshift - argmin), tuple(mean_dists.tolist()),
                     len(video_feat))


def score_clip(embedder: SyncEmbedder, frames: np.ndarray, audio: np.ndarray, vshift: int = VSHIFT,
               batch_size: int = 20) -> SyncScore:
    """The whole protocol for one clip: ``frames (T,H,W,3)`` uint8 RGB at 25 fps, ``audio (N,)``
    int16 at 16 kHz."""
    windows = num_sync_windows(len(frames), len(audio))
    if windows < 1:
        raise PdfgcError(f"clip too short for LSE: {len(frames)} frames, {len(audio) / SAMPLE_RATE:.2f} s of audio")
    video_feat, audio_feat = embed_windows(embedder, syncnet_frames(frames), syncnet_mfcc(audio), windows, batch_size)
    return sync_score(video_feat, audio_feat, vshift)


class LipSyncError(Metric):
    """LSE-D / LSE-C averaged over videos (DDP-safe: sums and counts reduced with ``sum``).

    ``update`` takes per-video :class:`SyncScore` (or raw ``(W, D)`` window embeddings);
    ``compute`` -> ``{"lse_d", "lse_c", "abs_offset"}`` (mean |AV offset| in frames).
    """

    full_state_update = False

    def __init__(self, vshift: int = VSHIFT, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vshift = vshift
        for name in ("dist_sum", "conf_sum", "abs_offset_sum", "count"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, score: SyncScore | torch.Tensor, audio_feat: torch.Tensor | None = None) -> None:
        if not isinstance(score, SyncScore):
            score = sync_score(score, audio_feat, self.vshift)
        self.dist_sum += score.min_dist
        self.conf_sum += score.confidence
        self.abs_offset_sum += abs(score.offset)
        self.count += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1)
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        if self.count == 0:
            return {"lse_d": nan, "lse_c": nan, "abs_offset": nan}
        return {"lse_d": self.dist_sum / n, "lse_c": self.conf_sum / n, "abs_offset": self.abs_offset_sum / n}
