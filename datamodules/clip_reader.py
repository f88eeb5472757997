"""Reading one processed clip: frames through the official crop, mel windows, pose and eye state.

Everything a sample needs from disk goes through :class:`ClipReader`, which checks the clip
once (frame count, spectrogram length, label lengths) and raises :class:`CorruptClip` with a
one-line reason for anything unusable, so the dataset can skip the clip and go on.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from pdfgc import audio as audio_fe
from pdfgc.video import IMAGE_EXTENSIONS, _natural_key, crop_points, official_crop

EAR_POINTS = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47))  # iBUG-68 eye contours (eye A, eye B)
OPEN_EYE_PERCENTILE = 90  # a clip's "open eye" level: eyes are open most of the time
JPEG_END = b"\xff\xd9"


def gaze_offset(eye_state: np.ndarray) -> np.ndarray:
    """``(..., 6)`` eye state -> ``(..., 2)`` float32: the two irises' mean offset (x, y) in eye
    widths, what the eye code's gaze dims (2, 3) hold; NaN where the iris is unknown."""
    iris = np.asarray(eye_state, np.float32)[..., 2:]
    return np.ascontiguousarray((iris[..., 0:2] + iris[..., 2:4]) / 2)


class CorruptClip(Exception):
    """A clip that cannot be used (missing, truncated or inconsistent files); message = reason."""


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Per-eye aspect ratio ``(F, 2)`` from iBUG-68 landmarks ``(F, 68, 2)``:
    (|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|), ~0.3 open, ~0 closed."""
    out = []
    for p1, p2, p3, p4, p5, p6 in EAR_POINTS:
        pts = landmarks.astype(np.float64)
        vertical = np.linalg.norm(pts[:, p2] - pts[:, p6], axis=-1) + np.linalg.norm(pts[:, p3] - pts[:, p5], axis=-1)
        horizontal = 2.0 * np.linalg.norm(pts[:, p1] - pts[:, p4], axis=-1)
        out.append(vertical / np.maximum(horizontal, 1e-6))
    return np.stack(out, axis=1).astype(np.float32)


def eye_openness(ear: np.ndarray) -> np.ndarray:
    """Per-eye openness in [0, 1] ``(F, 2)``: EAR over the clip's open-eye level (its 90th
    percentile per eye), so eyes of every shape read 1 when open and ~0 when closed."""
    level = np.nanpercentile(ear, OPEN_EYE_PERCENTILE, axis=0, keepdims=True) if np.isfinite(ear).any() \
        else np.full((1, ear.shape[1]), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        opened = ear / level
    return np.clip(np.nan_to_num(opened, nan=1.0), 0.0, 1.0).astype(np.float32)


def mel_windows_at(mel: np.ndarray, frames) -> torch.Tensor:
    """Audio windows ``(N, 1, 80, 20)`` of the given video frames of a ``(T, 80)`` mel: the
    windows of :func:`pdfgc.audio.frame_windows` (rows ``[4(i-2), 4(i-2)+20)``, zero outside),
    computed for these frames only."""
    rows, width = audio_fe.MEL_ROWS_PER_FRAME, audio_fe.WINDOW_ROWS
    out = np.zeros((len(frames), 1, mel.shape[1], width), np.float32)
    for k, i in enumerate(frames):
        lo = rows * (int(i) - audio_fe.FRAME_OFFSET)
        a, b = max(lo, 0), min(lo + width, mel.shape[0])
        if b > a:
            out[k, 0, :, a - lo:b - lo] = mel[a:b].T
    return torch.from_numpy(out)


class ClipReader:
    """Lazy, checked access to one clip of a :class:`datamodules.clip_index.ClipRecord`.

    :param record: the clip's index record
    :param image_size: network input side; frames go through :func:`pdfgc.video.official_crop`
    :param mel_tolerance: largest allowed |spectrogram rows / 4 - frames|, in frames
    """

    def __init__(self, record, image_size: int, mel_tolerance: int = 4) -> None:
        self.record, self.image_size = record, image_size
        folder = Path(record.frames_dir)
        try:
            names = [n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
        except OSError:
            raise CorruptClip(f"frame folder missing: {folder}") from None
        if len(names) != record.num_frames:
            raise CorruptClip(f"frame count mismatch: the index says {record.num_frames}, {folder} holds {len(names)}")
        self.frame_files = [folder / n for n in sorted(names, key=_natural_key)]
        self.mel = self._array(record.spectrogram, "spectrogram")
        if self.mel.ndim == 2 and self.mel.shape[0] == audio_fe.N_MELS and self.mel.shape[1] != audio_fe.N_MELS:
            self.mel = np.ascontiguousarray(self.mel.T)  # some PC-AVS exports store (80, T)
        if self.mel.ndim != 2 or self.mel.shape[1] != audio_fe.N_MELS:
            raise CorruptClip(f"spectrogram of shape {self.mel.shape}, expected (T, 80): {record.spectrogram}")
        covered = self.mel.shape[0] // audio_fe.MEL_ROWS_PER_FRAME
        if abs(covered - self.num_frames) > max(mel_tolerance, 0.02 * self.num_frames):
            raise CorruptClip(f"spectrogram covers {covered} frames, the clip has {self.num_frames}: {record.spectrogram}")
        self.pose = self._labels(record.pose, "pose", 6)
        self.eyes = self._eye_state()

    @property
    def num_frames(self) -> int:
        return self.record.num_frames

    def _array(self, path: str, what: str) -> np.ndarray:
        try:
            return np.asarray(np.load(path), np.float32)
        except (OSError, ValueError, EOFError) as exc:
            raise CorruptClip(f"{what} unreadable ({type(exc).__name__}): {path}") from None

    def _labels(self, path: str | None, what: str, width: int) -> np.ndarray | None:
        if path is None:
            return None
        array = self._array(path, what)
        if array.shape != (self.num_frames, width):
            raise CorruptClip(f"{what} of shape {array.shape}, expected ({self.num_frames}, {width}): {path}")
        return array

    @functools.cached_property
    def landmarks(self) -> np.ndarray | None:
        """``(F, 68, 2)`` landmarks of the stored (aligned) frames, or None without a file; read
        once per reader (landmark samples ask for them every time)."""
        path = self.record.landmarks
        if path is None:
            return None
        landmarks = self._array(path, "landmarks")
        if landmarks.shape != (self.num_frames, 68, 2):
            raise CorruptClip(f"landmarks of shape {landmarks.shape}, expected ({self.num_frames}, 68, 2)")
        return landmarks

    def landmarks_at(self, frames, frame_hw: tuple[int, int]) -> np.ndarray:
        """Landmark targets of ``frames`` in the network input (after the official crop).

        Returns ``(N, 70, 2)`` float32 pixel (x, y): the iBUG 68 points, then the iris centres
        of eye A and eye B from ``eyes.npy`` (NaN where it has none), as SynthTalk's 70 points.
        ``frame_hw`` is the stored frames' ``(H, W)``. Raises :class:`CorruptClip` without a
        landmarks file.
        """
        if self.landmarks is None:
            raise CorruptClip(f"no landmarks.npy for {self.record.clip}")
        frames = np.asarray(frames, int)
        lm = self.landmarks[frames].astype(np.float64)
        iris = np.full((len(lm), 2, 2), np.nan)
        if self.eyes is not None and self.record.eyes is not None:
            offsets = self.eyes[frames, 2:].reshape(-1, 2, 2)
            for e, idx in enumerate((slice(36, 42), slice(42, 48))):
                pts = lm[:, idx]
                axis = pts[:, 3] - pts[:, 0]  # image-left corner -> image-right corner: one eye width
                normal = np.stack([-axis[:, 1], axis[:, 0]], -1)  # the same length, pointing down
                iris[:, e] = pts.mean(1) + offsets[:, e, :1] * axis + offsets[:, e, 1:] * normal
        points = np.concatenate([lm, iris], axis=1)
        return crop_points(points, frame_hw, self.image_size)

    def _eye_state(self) -> np.ndarray | None:
        """``(F, 6)`` = [openness A, openness B, iris A x, y, iris B x, y] (NaN iris when unknown)."""
        record = self.record
        if record.eyes is not None:
            raw = self._labels(record.eyes, "eyes", 6)
            ear, iris = raw[:, :2], raw[:, 2:]
        elif record.landmarks is not None:
            ear, iris = eye_aspect_ratio(self.landmarks), np.full((self.num_frames, 4), np.nan, np.float32)
        else:
            return None
        return np.concatenate([eye_openness(ear), iris], axis=1)

    def image(self, t: int) -> np.ndarray:
        """Frame ``t`` as decoded, ``(H, W, 3)`` uint8 RGB (aligned, before the official crop)."""
        path = self.frame_files[int(t)]
        try:
            data = np.fromfile(str(path), dtype=np.uint8)
        except OSError:
            raise CorruptClip(f"frame unreadable: {path}") from None
        # libjpeg decodes a truncated file with a grey tail instead of failing: check the end marker.
        if path.suffix.lower() in (".jpg", ".jpeg") and not data.tobytes().rstrip(b"\0").endswith(JPEG_END):
            raise CorruptClip(f"truncated JPEG: {path}")
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if bgr is None:
            raise CorruptClip(f"frame not decodable: {path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def images(self, frames) -> torch.Tensor:
        """Frames through the official crop: ``(N, 3, S, S)`` float32 in [-1, 1]."""
        return torch.stack([official_crop(self.image(t), self.image_size) for t in frames])

    def windows(self, frames) -> torch.Tensor:
        """The frames' audio windows ``(N, 1, 80, 20)`` float32."""
        return mel_windows_at(self.mel, frames)
