"""Frame-quality and identity metrics: CSIM (dlib face descriptor, or ArcFace from the user's
weights), PSNR, SSIM.

CSIM is the cosine similarity of identity descriptors between the source portrait and each
generated frame (PC-AVS / PD-FGC practice). The descriptor is dlib's ResNet
(``dlib_face_recognition_resnet_model_v1.dat``, 128-d), which ships with the
``face-recognition-models`` package and runs offline; the face is found by dlib's HOG detector,
or, for aligned crops too small for it, the whole frame is taken as the face box.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from pdfgc.errors import PdfgcError

__all__ = ["ArcFaceDescriptor", "CosineIdentitySimilarity", "DlibFaceDescriptor", "build_identity_descriptor",
           "cosine_similarity", "face_recognition_model_path", "frame_psnr", "frame_ssim"]


def face_recognition_model_path(name: str) -> Path:
    """A model file shipped in ``face-recognition-models``, beside the 68-point predictor."""
    from pdfgc.faces.landmarks import shipped_dlib_predictor

    path = shipped_dlib_predictor().with_name(name)
    if not path.is_file():
        raise PdfgcError(f"{name} missing from face-recognition-models: {path}")
    return path


class DlibFaceDescriptor:
    """dlib's 128-d face descriptor per frame.

    Args:
        detect: find the face with the HOG detector (largest, then highest score); if no face is
            found, or with ``detect=False``, the whole frame is the face box (aligned crops).
        model_path / shape_predictor_path: files to use instead of the shipped ones.
    """

    name = "dlib-resnet-v1"

    def __init__(self, detect: bool = True, model_path: str | os.PathLike | None = None,
                 shape_predictor_path: str | os.PathLike | None = None) -> None:
        import dlib

        paths = {"model": model_path or face_recognition_model_path("dlib_face_recognition_resnet_model_v1.dat"),
                 "shape predictor": shape_predictor_path or face_recognition_model_path(
                     "shape_predictor_5_face_landmarks.dat")}
        for what, p in paths.items():
            if not Path(p).is_file():
                raise PdfgcError(f"dlib face {what} not found: {p}")
        self._dlib = dlib
        self.detect = detect
        self._detector = dlib.get_frontal_face_detector() if detect else None
        self._shape = dlib.shape_predictor(str(paths["shape predictor"]))
        self._model = dlib.face_recognition_model_v1(str(paths["model"]))

    def face_box(self, frame: np.ndarray):
        """The dlib rectangle of the face in ``frame`` (whole frame when none is detected)."""
        h, w = frame.shape[:2]
        if self._detector is not None:
            boxes, scores, _ = self._detector.run(frame, 1)
            if len(boxes):
                best = max(range(len(boxes)), key=lambda i: (boxes[i].area(), scores[i]))
                return boxes[best]
        return self._dlib.rectangle(0, 0, w - 1, h - 1)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 RGB -> ``(T, 128)`` float32 descriptors."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        out = np.empty((len(frames), 128), np.float32)
        for i, frame in enumerate(frames):
            frame = np.ascontiguousarray(frame)
            shape = self._shape(frame, self.face_box(frame))
            out[i] = np.asarray(self._model.compute_face_descriptor(frame, shape), np.float32)
        return out


class ArcFaceDescriptor:
    """ArcFace (insightface IResNet) 512-d embeddings, from the user's ``backbone.pth``.

    Faces are aligned like insightface does: a similarity from five points (eye centres, nose
    tip, mouth corners, taken from the 68 dlib landmarks) to :data:`ARCFACE_TEMPLATE_112`.
    Frames without a face give NaN rows.
    """

    name = "arcface-iresnet"

    def __init__(self, weights: str | os.PathLike, depth: str = "r100", device: str = "cpu",
                 landmarker=None) -> None:
        from pdfgc.faces import build_landmark_detector
        from pdfgc.metrics.weights import read_user_weights
        from pdfgc.networks.iresnet import IRESNET_LAYERS, IResNet

        if depth not in IRESNET_LAYERS:
            raise PdfgcError(f"unknown ArcFace depth {depth!r} (one of {', '.join(IRESNET_LAYERS)})")
        weights, state = read_user_weights(weights, "ArcFace", "metrics.identity.arcface_weights",
                                           "arcface_torch backbone.pth")
        net = IResNet(depth)
        result = net.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            bad = (result.missing_keys or result.unexpected_keys)[0]
            raise PdfgcError(f"{weights} is not an arcface_torch IResNet-{depth[1:]} state_dict (key {bad})")
        self.net = net.eval().to(device)
        self.device = device
        self.name = f"arcface-iresnet{depth[1:]}"
        self.landmarker = landmarker or build_landmark_detector("dlib")

    @staticmethod
    def five_points(landmarks: np.ndarray) -> np.ndarray:
        """``(..., 68, 2)`` -> ``(..., 5, 2)``: eye A / eye B centres, nose tip, mouth corners."""
        lm = np.asarray(landmarks, np.float32)
        return np.stack([lm[..., 36:42, :].mean(-2), lm[..., 42:48, :].mean(-2), lm[..., 30, :], lm[..., 48, :],
                         lm[..., 54, :]], axis=-2)

    def align(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(T, 112, 112, 3)`` uint8 aligned crops and ``(T,)`` bool "face found"."""
        import cv2

        from pdfgc.networks.iresnet import ARCFACE_TEMPLATE_112

        frames = np.asarray(frames)
        points = self.five_points(self.landmarker.detect(frames).landmarks)
        crops = np.zeros((len(frames), 112, 112, 3), np.uint8)
        found = np.isfinite(points).all(axis=(1, 2))
        for t in np.flatnonzero(found):
            m, _ = cv2.estimateAffinePartial2D(points[t], ARCFACE_TEMPLATE_112)
            if m is None:
                found[t] = False
                continue
            crops[t] = cv2.warpAffine(np.ascontiguousarray(frames[t]), m, (112, 112), borderValue=0)
        return crops, found

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 RGB -> ``(T, 512)`` float32 (NaN rows without a face)."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        crops, found = self.align(frames)
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        out = self.net(x.to(self.device)).float().cpu().numpy()
        out[~found] = np.nan
        return out


def build_identity_descriptor(backend: str = "dlib", detect: bool = True, arcface_weights: str | None = None,
                              arcface_depth: str = "r100", device: str = "cpu"):
    """The CSIM descriptor: ``dlib`` (shipped, default) or ``arcface`` (needs ``arcface_weights``)."""
    if backend == "dlib":
        return DlibFaceDescriptor(detect=detect)
    if backend == "arcface":
        return ArcFaceDescriptor(arcface_weights, arcface_depth, device)
    raise PdfgcError(f"unknown identity backend {backend!r} (dlib | arcface)")


def cosine_similarity(reference: np.ndarray, descriptors: np.ndarray) -> np.ndarray:
    """``(D,)`` reference vs ``(T, D)`` descriptors -> ``(T,)`` cosine similarities."""
    ref = torch.as_tensor(reference, dtype=torch.float64)
    d = torch.as_tensor(descriptors, dtype=torch.float64)
    return torch.nn.functional.cosine_similarity(d, ref.expand_as(d), dim=1).numpy()


class CosineIdentitySimilarity(Metric):
    """CSIM: mean cosine similarity of frame descriptors to a reference descriptor, over all frames
    (DDP-safe sums). ``update(reference (D,), descriptors (T, D))``; NaN rows are skipped."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, reference: np.ndarray | torch.Tensor, descriptors: np.ndarray | torch.Tensor) -> None:
        sims = torch.as_tensor(cosine_similarity(np.asarray(reference), np.asarray(descriptors)))
        sims = sims[torch.isfinite(sims)]
        self.total += sims.sum()
        self.count += len(sims)

    def compute(self) -> torch.Tensor:
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"), dtype=torch.float64)


def _as_float_images(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(frames))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).double() / 255.0


def frame_psnr(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame PSNR (dB) of uint8 RGB ``(T, H, W, 3)`` pairs, data range 1 after /255."""
    g, t = _as_float_images(generated), _as_float_images(target)
    return np.array([float(peak_signal_noise_ratio(g[i:i + 1], t[i:i + 1], data_range=1.0)) for i in range(len(g))])


def frame_ssim(generated: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame SSIM (Gaussian 11 x 11, sigma 1.5, on RGB) of uint8 ``(T, H, W, 3)`` pairs."""
    g, t = _as_float_images(generated), _as_float_images(target)
    return structural_similarity_index_measure(g, t, data_range=1.0, reduction="none").numpy()
