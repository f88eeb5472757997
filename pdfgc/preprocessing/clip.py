"""One clip, input to processed layout: decode, detect, align, measure, write.

:func:`process_clip` writes the clip's files (docs/design.md, "Processed-data layout") into a
scratch folder and renames it into place only when every file is written, so a killed run
never leaves half a clip under its final name; it returns the clip's index entry or raises
:class:`~pdfgc.preprocessing.rejection.ClipRejected`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from pdfgc import audio as audio_fe
from pdfgc.errors import PdfgcError
from pdfgc.faces import clip_alignment, eye_aspect_ratio, iris_positions, warp_frames
from pdfgc.faces.align import transform_points
from pdfgc.faces.landmarks import LandmarkDetector
from pdfgc.faces.pose_backends import LandmarkPoseEstimator, PoseEstimator, build_pose_estimator
from pdfgc.preprocessing.discover import ClipSource
from pdfgc.preprocessing.quality import FaceTrack, QualityLimits, check_faces, fill_gaps
from pdfgc.preprocessing.rejection import ClipRejected
from pdfgc.synthtalk.export import write_wav
from pdfgc.video import iter_frames, read_header

FPS = audio_fe.FPS  # every clip is written at the model's 25 fps (videos are resampled)
SAMPLES_PER_FRAME = audio_fe.SAMPLE_RATE // FPS  # 640
# Audio and video lengths of one file differ by encoder padding; beyond this many frames the
# difference is flagged (the clip is cut to the shorter of the two either way).
LENGTH_MISMATCH_FRAMES = 2
UPSCALED_FACTOR = 2.0  # aligned pixels per source pixel above which the clip is flagged "upscaled"


@dataclass(frozen=True)
class ClipSettings:
    """Per-clip options (``configs/preprocess.yaml`` documents each field)."""

    image_size: int = 224
    jpeg_quality: int = 95
    min_frames: int = 25
    max_frames: Optional[int] = 1500
    max_side: Optional[int] = 720
    smooth_sigma: float = 2.0
    min_audio_rms: float = 1e-4
    limits: QualityLimits = field(default_factory=QualityLimits)
    pose_backend: str = "landmarks"
    pose_weights: Optional[str] = None
    pose_device: str = "auto"
    pose_batch_size: int = 32


def build_pose(settings: ClipSettings) -> PoseEstimator:
    """The pose estimator of ``settings`` (``pose_backend``, ``pose_weights``, ``pose_device``,
    ``pose_batch_size``); built before any work so that a bad backend or checkpoint stops the run.

    Raises:
        PdfgcError: unknown backend, ``deep3d`` without weights or with a bad checkpoint.
    """
    return build_pose_estimator(settings.pose_backend, settings.pose_weights, settings.pose_device,
                                settings.pose_batch_size)


# --- decoding ---------------------------------------------------------------------------------


@dataclass
class DecodedClip:
    """Frames and audio of one clip, cut to the same length.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB at 25 fps.
        waveform: ``(T * 640,)`` float32, 16 kHz mono.
        quality: ``source_fps``, ``audio_rms``, ``trimmed_frames`` (video frames dropped).
        flags: ``audio_shorter``, ``video_shorter``, ``max_frames``, ``downscaled``.
    """

    frames: np.ndarray
    waveform: np.ndarray
    quality: dict
    flags: list


def _downscaled(frame: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    h, w = frame.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return frame
    scale = max_side / max(h, w)
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def _read_frames(path: str, settings: ClipSettings) -> tuple[np.ndarray, bool, bool]:
    """All frames (at most ``max_frames``, downscaled to ``max_side``), whether more followed
    and whether they were downscaled."""
    frames, more, shrunk = [], False, False
    try:
        for frame in iter_frames(path, fps=FPS, strict=True):
            if settings.max_frames is not None and len(frames) >= settings.max_frames:
                more = True
                break
            small = _downscaled(frame, settings.max_side)
            shrunk = shrunk or small is not frame
            if frames and small.shape != frames[0].shape:
                raise ClipRejected("unreadable", f"frames differ in size: {path}")
            frames.append(small)
    except PdfgcError as exc:
        raise ClipRejected("unreadable", str(exc)) from None
    if not frames:
        raise ClipRejected("unreadable", f"no frames in: {path}")
    return np.stack(frames), more, shrunk


def decode_clip(source: ClipSource, settings: ClipSettings) -> DecodedClip:
    """Frames (25 fps, frame folders taken as 25 fps) and 16 kHz mono audio of ``source``.

    Raises:
        ClipRejected: ``unreadable``, ``no_audio``, ``too_short``, ``silent_audio``.
    """
    quality: dict = {}
    flags: list = []
    if source.is_video:
        try:
            header = read_header(source.path)
        except PdfgcError as exc:
            raise ClipRejected("unreadable", str(exc)) from None
        if header["width"] is None:
            raise ClipRejected("unreadable", f"no video stream in: {source.path}")
        if not header["has_audio"]:
            raise ClipRejected("no_audio", f"no audio stream in: {source.path}")
        quality["source_fps"] = header["fps"]
        audio_path = source.path
    else:
        if source.audio is None:
            raise ClipRejected("no_audio", f"no audio file in or beside the frame folder: {source.path}")
        quality["source_fps"] = None
        audio_path = source.audio
    frames, cut, shrunk = _read_frames(source.path, settings)
    flags += ["max_frames"] * cut + ["downscaled"] * shrunk
    if len(frames) < settings.min_frames:
        raise ClipRejected("too_short", f"{len(frames)} frames ({len(frames) / FPS:.2f} s), need min_frames="
                                        f"{settings.min_frames}: {source.path}")
    try:
        waveform = audio_fe.load_audio(audio_path)
    except PdfgcError as exc:
        raise ClipRejected("unreadable", str(exc)) from None
    rms = float(np.sqrt(np.mean(np.square(waveform, dtype=np.float64))))
    quality["audio_rms"] = round(rms, 6)
    if not rms >= settings.min_audio_rms:
        raise ClipRejected("silent_audio", f"audio RMS {rms:.2g} below min_audio_rms={settings.min_audio_rms:g}: "
                                           f"{audio_path}")
    # A partial last frame of audio still counts (zero-padded): encoders pad by a few ms.
    audio_frames = -(-len(waveform) // SAMPLES_PER_FRAME)
    if not cut and audio_frames < len(frames) - LENGTH_MISMATCH_FRAMES:
        flags.append("audio_shorter")
    elif audio_frames > len(frames) + LENGTH_MISMATCH_FRAMES:
        flags.append("video_shorter")
    num_frames = min(len(frames), audio_frames)
    quality["trimmed_frames"] = len(frames) - num_frames
    if num_frames < settings.min_frames:
        raise ClipRejected("too_short", f"{num_frames} frames with audio ({num_frames / FPS:.2f} s), need "
                                        f"min_frames={settings.min_frames}: {source.path}")
    wave = np.zeros(num_frames * SAMPLES_PER_FRAME, np.float32)
    used = waveform[:len(wave)]
    wave[:len(used)] = used
    return DecodedClip(frames[:num_frames], wave, quality, flags)


# --- measurements -----------------------------------------------------------------------------


_EYES = (np.arange(36, 42), np.arange(42, 48))  # iBUG eye contours: eye A (image left), eye B


def eye_centres(landmarks: np.ndarray) -> np.ndarray:
    """Each eye's centre (mean of its six points) in the coordinates of
    :func:`pdfgc.faces.iris_positions`: ``(T, 2, 2)`` [eye A, eye B] x [along the eye, down]
    in eye widths from the image-left corner."""
    lm = np.asarray(landmarks, np.float64)
    out = np.empty((len(lm), 2, 2))
    for e, idx in enumerate(_EYES):
        pts = lm[:, idx]
        left, axis = pts[:, 0], pts[:, 3] - pts[:, 0]
        with np.errstate(invalid="ignore", divide="ignore"):
            width = np.linalg.norm(axis, axis=-1)
            u = axis / width[:, None]
            normal = np.stack([-u[:, 1], u[:, 0]], axis=-1)
            rel = pts.mean(1) - left
            out[:, e] = np.stack([(rel * u).sum(-1), (rel * normal).sum(-1)], axis=-1) / width[:, None]
    return out


def eye_state(frames: np.ndarray, landmarks: np.ndarray, reliable: Optional[np.ndarray] = None) -> np.ndarray:
    """``eyes.npy`` rows of aligned frames (docs/design.md, "Eye state").

    Args:
        frames: ``(T, S, S, 3)`` uint8 RGB aligned frames.
        landmarks: ``(T, 68, 2)`` their landmarks.
        reliable: ``(T,)`` bool, False where the landmarks were interpolated: no iris there
            (the iris locator needs the real eye contour).
    Returns:
        ``(T, 6)`` float32 ``[EAR A, EAR B, iris A x, iris A y, iris B x, iris B y]``; iris =
        offset of the iris centre from the eye centre (mean of the eye's six points) in eye
        widths, x along the eye (right), y across it (down); NaN where unavailable.
    """
    ear = eye_aspect_ratio(landmarks)
    iris = iris_positions(frames, landmarks) - eye_centres(landmarks)
    if reliable is not None:
        iris[~np.asarray(reliable, bool)] = np.nan
    return np.concatenate([ear, iris.reshape(len(iris), 4)], axis=1).astype(np.float32)


def pose_labels(frames: np.ndarray, landmarks: np.ndarray, estimator: Optional[PoseEstimator] = None) -> np.ndarray:
    """``(T, 6)`` float32 pose labels of aligned frames ``(T, S, S, 3)`` with landmarks
    ``(T, 68, 2)`` by ``estimator`` (default solvePnP on the landmarks,
    :func:`pdfgc.faces.head_pose`); frames where it failed are interpolated from their
    neighbours (labels must be finite)."""
    pose = (estimator or LandmarkPoseEstimator()).estimate(frames, landmarks)
    ok = np.isfinite(pose).all(axis=1)
    if ok.all() or not ok.any():
        return np.nan_to_num(pose)  # all failed: cannot happen with finite landmarks; stay finite
    return fill_gaps(pose, ok)


@dataclass
class AlignedClip:
    """A clip on the alignment template.

    Attributes:
        frames: ``(T, S, S, 3)`` uint8 RGB.
        landmarks: ``(T, 68, 2)`` float32 in the aligned frames.
        scale: aligned pixels per source pixel of the clip's similarity.
    """

    frames: np.ndarray
    landmarks: np.ndarray
    scale: float


def align_clip(frames: np.ndarray, track: FaceTrack, settings: ClipSettings) -> AlignedClip:
    """Warp ``frames`` (``(T, H, W, 3)`` uint8) onto the ``image_size`` template (one similarity
    per clip + a smoothed per-frame translation, :func:`pdfgc.faces.clip_alignment`)."""
    size = settings.image_size
    matrices = clip_alignment(track.landmarks, size=size, smooth_sigma=settings.smooth_sigma)
    linear = matrices[0, :, :2].astype(np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    return AlignedClip(warp_frames(frames, matrices, size=size), transform_points(track.landmarks, matrices), scale)


# --- writing ----------------------------------------------------------------------------------


def clip_folder(source: ClipSource) -> Path:
    """The clip's folder relative to the output root: ``<speaker>/<clip>``."""
    return Path(source.speaker, *source.clip.split("/"))


def write_frames(folder: Path, frames: np.ndarray, quality: int) -> None:
    """``folder/0000.jpg`` ... from ``(T, H, W, 3)`` uint8 RGB (not atomic: the folder is scratch)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for i, frame in enumerate(frames):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for frame {i}")
        buf.tofile(str(folder / f"{i:04d}.jpg"))


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.asarray(array, np.float32))


def publish(scratch: Path, final: Path) -> None:
    """Move a finished scratch folder onto ``final`` (replacing a folder a killed run left there
    after its rename but before its index line)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)


def process_clip(source: ClipSource, detector: LandmarkDetector, settings: ClipSettings, root: Path,
                 scratch_root: Path, pose_estimator: Optional[PoseEstimator] = None) -> dict:
    """Process one clip into ``root/<speaker>/<clip>/`` and return its index entry.

    Args:
        source: the input clip.
        detector: the landmark backend.
        settings: per-clip options.
        root: the output folder (index paths are relative to it).
        scratch_root: where the clip is assembled before the rename (same file system as ``root``).
        pose_estimator: the pose backend (:func:`build_pose`); None = solvePnP on the landmarks.
    Returns:
        the index entry (docs/design.md "Processed-data layout" + ``quality``, ``source``).
    Raises:
        ClipRejected: the clip cannot be used (the reason says why).
    """
    decoded = decode_clip(source, settings)
    found = detector.detect(decoded.frames)
    track = check_faces(found.landmarks, found.face_counts, settings.limits)
    aligned = align_clip(decoded.frames, track, settings)
    eyes = eye_state(aligned.frames, aligned.landmarks, reliable=~track.interpolated)
    pose = pose_labels(aligned.frames, aligned.landmarks, pose_estimator)
    mel = audio_fe.mel_spectrogram(decoded.waveform)

    rel = clip_folder(source)
    scratch = scratch_root / source.key.replace("/", "__")
    if scratch.exists():
        shutil.rmtree(scratch)
    try:
        write_frames(scratch / "frames", aligned.frames, settings.jpeg_quality)
        write_wav(scratch / "audio.wav", decoded.waveform, audio_fe.SAMPLE_RATE)
        for name, array in (("spectrograms.npy", mel), ("pose.npy", pose), ("landmarks.npy", aligned.landmarks),
                            ("eyes.npy", eyes)):
            _save(scratch / name, array)
        publish(scratch, root / rel)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise

    flags = decoded.flags + track.flags
    if aligned.scale > UPSCALED_FACTOR:
        flags.append("upscaled")
    num_frames = len(aligned.frames)
    return {
        "speaker": source.speaker, "clip": source.clip, "split": source.split, "num_frames": num_frames,
        "fps": FPS, "duration": num_frames / FPS, "frames_dir": str(rel / "frames"), "audio": str(rel / "audio.wav"),
        "spectrogram": str(rel / "spectrograms.npy"), "pose": str(rel / "pose.npy"),
        "landmarks": str(rel / "landmarks.npy"), "eyes": str(rel / "eyes.npy"), "flags": flags,
        "quality": {**decoded.quality, **track.quality, "scale": round(aligned.scale, 4)},
        "source": source.path,
    }
