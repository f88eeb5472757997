"""68-point landmark detection behind one interface, with two backends.

* ``dlib``: HOG face detector + the 68-point shape predictor shipped in the
  ``face-recognition-models`` package (installs from PyPI, runs offline, CPU).
* ``face_alignment``: S3FD detector + 2D-FAN (``face-alignment`` package), batched on GPU;
  its weights come from its own cache (torch hub) or from ``weights_dir``; it never downloads
  unless ``allow_download=true``.

``build_landmark_detector(backend, **cfg)`` returns a :class:`LandmarkDetector`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from pdfgc.errors import PdfgcError

BACKENDS = ("dlib", "face_alignment")


@dataclass
class FaceDetections:
    """Landmarks of the largest face per frame.

    Attributes:
        landmarks: ``(T, 68, 2)`` float32 pixel (x, y), iBUG-68 order; NaN rows where no face.
        face_counts: ``(T,)`` int64 number of faces found in each frame.
    """

    landmarks: np.ndarray
    face_counts: np.ndarray


class LandmarkDetector(Protocol):
    """Anything with ``detect(frames (T, H, W, 3) uint8 RGB) -> FaceDetections``."""

    def detect(self, frames: np.ndarray) -> FaceDetections: ...


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (T, H, W, 3) uint8 RGB frames, got {frames.dtype} {frames.shape}")
    return frames


def _box_area(box) -> float:
    return float(max(box[2] - box[0], 0) * max(box[3] - box[1], 0))


def shipped_dlib_predictor() -> Path:
    """Path of the 68-point predictor inside the installed ``face-recognition-models`` package.

    Found through the package's location, not by importing it (its ``__init__`` needs
    ``pkg_resources``, which recent setuptools no longer ship).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PdfgcError("the dlib landmark backend needs the face-recognition-models package "
                         "(pip install face-recognition-models), or give predictor_path=...")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"


class DlibLandmarkDetector:
    """dlib HOG detector + 68-point shape predictor (CPU, one frame at a time).

    Args:
        predictor_path: the ``shape_predictor_68_face_landmarks.dat`` file; None = the one
            shipped in ``face-recognition-models``.
        upsample: times the detector upsamples each frame (finds faces down to ~80 / 2**n px).
        retry_upsampled: if no face is found, try once more with one more upsampling (small
            faces in low-resolution frames) instead of paying for it on every frame.
    """

    def __init__(self, predictor_path: Optional[str] = None, upsample: int = 0, retry_upsampled: bool = True):
        try:
            import dlib
        except ImportError:
            raise PdfgcError("the dlib landmark backend needs dlib (pip install dlib-bin)") from None
        path = Path(predictor_path) if predictor_path else shipped_dlib_predictor()
        if not path.is_file():
            raise PdfgcError(f"dlib landmark predictor not found: {path}")
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as exc:
            raise PdfgcError(f"cannot load dlib landmark predictor {path}: {exc}") from None
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = int(upsample)
        self.retry_upsampled = bool(retry_upsampled)

    def detect(self, frames: np.ndarray) -> FaceDetections:
        """``(T, H, W, 3)`` uint8 RGB -> :class:`FaceDetections` (largest face per frame)."""
        frames = _check_frames(frames)
        landmarks = np.full((len(frames), 68, 2), np.nan, np.float32)
        counts = np.zeros(len(frames), np.int64)
        for t, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame)
            boxes = self._detector(frame, self.upsample)
            if len(boxes) == 0 and self.retry_upsampled:
                boxes = self._detector(frame, self.upsample + 1)
            counts[t] = len(boxes)
            if len(boxes) == 0:
                continue
            box = max(boxes, key=lambda b: _box_area((b.left(), b.top(), b.right(), b.bottom())))
            shape = self._predictor(frame, box)
            landmarks[t] = [(p.x, p.y) for p in shape.parts()]
        return FaceDetections(landmarks, counts)


# File names face-alignment 1.5 looks for in ``<torch hub dir>/checkpoints``.
FACE_ALIGNMENT_FILES = ("2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth")


class FaceAlignmentLandmarkDetector:
    """S3FD + 2D-FAN from the ``face-alignment`` package, batched (GPU when ``device`` is one).

    Args:
        weights_dir: a torch hub folder holding ``checkpoints/2DFAN4-11f355bf06.pth.tar`` and
            ``checkpoints/s3fd-619a316812.pth``; None = torch's own hub folder (``$TORCH_HOME``).
        device: ``cpu`` / ``cuda`` / ``cuda:1``.
        batch_size: frames per batched call.
        allow_download: let face-alignment fetch missing weights (never in tests).
    """

    def __init__(self, weights_dir: Optional[str] = None, device: str = "cpu", batch_size: int = 16,
                 allow_download: bool = False):
        import torch

        hub = Path(weights_dir) if weights_dir else Path(torch.hub.get_dir())
        missing = [f for f in FACE_ALIGNMENT_FILES if not (hub / "checkpoints" / f).is_file()]
        if missing and not allow_download:
            raise PdfgcError(f"face-alignment weights not found in {hub / 'checkpoints'} ({', '.join(missing)}); "
                             "give landmarks.weights_dir=... or landmarks.allow_download=true")
        import face_alignment

        previous = torch.hub.get_dir()
        torch.hub.set_dir(str(hub))  # face-alignment reads its files from the hub folder
        try:
            self._model = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device,
                                                       flip_input=False, compile=False)
        finally:
            torch.hub.set_dir(previous)
        self.device = device
        self.batch_size = int(batch_size)

    def detect(self, frames: np.ndarray) -> FaceDetections:
        """``(T, H, W, 3)`` uint8 RGB -> :class:`FaceDetections` (largest face per frame)."""
        import torch

        frames = _check_frames(frames)
        landmarks = np.full((len(frames), 68, 2), np.nan, np.float32)
        counts = np.zeros(len(frames), np.int64)
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start:start + self.batch_size]
            batch = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).to(self.device).float()
            results = self._model.get_landmarks_from_batch(batch, return_bboxes=True)
            per_frame, _, boxes = results
            for i, (points, frame_boxes) in enumerate(zip(per_frame, boxes)):
                points = np.asarray(points, np.float32).reshape(-1, 68, 2) if points is not None and len(points) else None
                if points is None or not len(points):
                    continue
                counts[start + i] = len(points)
                areas = [_box_area(b) for b in frame_boxes] if frame_boxes is not None and len(frame_boxes) == len(points) \
                    else [float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])) for p in points]
                landmarks[start + i] = points[int(np.argmax(areas))]
        return FaceDetections(landmarks, counts)


def build_landmark_detector(backend: str = "dlib", **cfg) -> LandmarkDetector:
    """The landmark detector of ``backend`` (``dlib`` | ``face_alignment``) with its options
    (see :class:`DlibLandmarkDetector`, :class:`FaceAlignmentLandmarkDetector`)."""
    if backend == "dlib":
        return DlibLandmarkDetector(**cfg)
    if backend == "face_alignment":
        return FaceAlignmentLandmarkDetector(**cfg)
    raise PdfgcError(f"unknown landmark backend {backend!r} (one of {', '.join(BACKENDS)})")
