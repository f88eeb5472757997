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
import pickle
import warnings
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


# File names face-alignment 1.5 looks for in ``<torch hub dir>/checkpoints``: the 2D-FAN and the
# S3FD detector, both plain state_dicts (read with torch.load(weights_only=True)).
FACE_ALIGNMENT_FILES = ("2DFAN4-11f355bf06.pth.tar", "s3fd-619a316812.pth")


def face_alignment_hub(weights_dir: Optional[str] = None) -> Path:
    """The torch hub folder face-alignment's weights are read from: ``weights_dir``, else torch's
    own (``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``)."""
    import torch

    return Path(weights_dir).expanduser() if weights_dir else Path(torch.hub.get_dir())


def face_alignment_unavailable(weights_dir: Optional[str] = None, allow_download: bool = False) -> Optional[str]:
    """Why the face_alignment backend cannot run here (None when it can): the package is not
    installed, or (unless ``allow_download``) weight files are missing from ``<hub>/checkpoints``."""
    if importlib.util.find_spec("face_alignment") is None:
        return "the face-alignment package is not installed (pip install face-alignment)"
    folder = face_alignment_hub(weights_dir) / "checkpoints"
    missing = [f for f in FACE_ALIGNMENT_FILES if not (folder / f).is_file()]
    if not missing or allow_download:
        return None
    return (f"face-alignment weights not found in {folder} ({', '.join(missing)}); give "
            "landmarks.face_alignment.weights_dir=... or landmarks.face_alignment.allow_download=true")


class FaceAlignmentLandmarkDetector:
    """S3FD + 2D-FAN from the ``face-alignment`` package, batched (GPU when ``device`` is one).

    Args:
        weights_dir: a torch hub folder holding ``checkpoints/2DFAN4-11f355bf06.pth.tar`` and
            ``checkpoints/s3fd-619a316812.pth``; None = torch's own hub folder (``$TORCH_HOME``).
        device: ``cpu`` / ``cuda`` / ``cuda:1``.
        batch_size: frames per batched detector call (and faces per FAN call).
        allow_download: let face-alignment fetch missing weights (never in tests).
    Raises:
        PdfgcError: (one line) missing weights (without ``allow_download``), or files that are
            not the networks' state_dicts.
    """

    def __init__(self, weights_dir: Optional[str] = None, device: str = "cpu", batch_size: int = 16,
                 allow_download: bool = False):
        import torch

        hub = face_alignment_hub(weights_dir)
        reason = face_alignment_unavailable(weights_dir, allow_download)
        if reason:
            raise PdfgcError(reason)
        import face_alignment

        detector_file = hub / "checkpoints" / FACE_ALIGNMENT_FILES[1]
        # An explicit detector path: face-alignment then reads it with weights_only=True instead
        # of going through torch.hub's loader.
        detector_kwargs = {"path_to_detector": str(detector_file)} if detector_file.is_file() else {}
        # face-alignment reads (or, if allowed, downloads) the FAN in torch's hub folder; set it,
        # then restore torch's own setting (None: follow $TORCH_HOME), not the path it gave
        previous = getattr(torch.hub, "_hub_dir", None)
        torch.hub.set_dir(str(hub))
        try:
            self._model = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device,
                                                       flip_input=False, compile=False,
                                                       face_detector_kwargs=detector_kwargs,
                                                       max_batch_size=max(1, int(batch_size)))
        except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            detail = " ".join(str(exc).split())[:200]
            raise PdfgcError(f"cannot load the face-alignment weights in {hub / 'checkpoints'}: {detail}") from None
        finally:
            torch.hub._hub_dir = previous
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "No faces were detected." per empty frame
                per_frame, _, boxes = self._model.get_landmarks_from_batch(batch, return_bboxes=True)
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
