"""Optional learned gaze estimator: the ETH-XGaze baseline (Zhang et al., ECCV 2020) from the
user's ``epoch_24_ckpt.pth.tar``, with the data normalisation it was trained on.

Nothing ships its weights (``shared/reference/metrics.md`` §3), so this runs only when
``metrics.gaze.weights`` names the file; the iris proxy (:mod:`.gaze_blink`) always runs.

* **Network**: torchvision's ResNet-50 trunk (global-average-pooled 2048-d feature) and one
  linear layer to (pitch, yaw) in radians. The release trained it inside ``nn.DataParallel``, so
  its ``model_state`` keys are ``gaze_network.module.<ResNet-50 key>`` (the unused ImageNet
  ``fc`` included) and ``gaze_fc.0.weight|bias``; :func:`load_eth_xgaze` loads them by name.
* **Normalisation** (Zhang, Sugano & Bulling, ETRA 2018, the ETH-XGaze setting): head pose from
  six landmarks (eye corners 36, 39, 42, 45 and nose wings 31, 35) by solvePnP against a 3D
  face model; a virtual camera (focal 960 px, 224 x 224) rotated to look at the face centre
  (mean of the eye-corner centre and the nose centre) with the head's x-axis kept horizontal,
  and moved to 600 mm; the frame is warped into that camera. Input: RGB / 255, ImageNet mean/std.
  The 3D points are those of our generic template (:mod:`pdfgc.faces.pose`, 63 mm between the
  eyes), not the release's ``face_model.txt``; the camera is the preprocessing's (focal length
  = image side). Numbers are therefore close to, not identical with, the release's demo.
* **Figure**: the gaze direction is rotated into the head's frame (eye-in-head gaze, what the
  eye code controls) and the error between two clips is the angle between those directions,
  in degrees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from pdfgc.errors import PdfgcError

__all__ = ["ETHXGaze", "LEARNED_GAZE_ESTIMATOR", "LearnedGazeEstimator", "NormalizedFace", "angle_errors_degrees",
           "face_model_mm", "gaze_vectors", "head_frame_gaze", "load_eth_xgaze", "normalize_face"]

LEARNED_GAZE_ESTIMATOR = ("ETH-XGaze ResNet-50 (your epoch_24_ckpt.pth.tar) on ETH-XGaze-normalised 224 face "
                          "patches; angle between eye-in-head gaze directions, degrees")
#: iBUG-68 indices of the landmarks the normalisation places: eye corners, then nose wings.
NORMALIZATION_LANDMARKS = (36, 39, 42, 45, 31, 35)
FOCAL_NORM = 960.0  # px, the normalised camera's focal length
DISTANCE_NORM = 600.0  # mm, the normalised camera's distance to the face centre
PATCH_SIDE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MM_PER_TEMPLATE_UNIT = 63.0 / 50.0  # pdfgc.faces.pose: 50 template units between the eyes ~ 63 mm


class _KeepsParallelKeys(nn.Module):
    """Holds a network under ``.module``, as ``nn.DataParallel`` did when the release was saved."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class ETHXGaze(nn.Module):
    """The ETH-XGaze baseline: ``(N, 3, 224, 224)`` normalised patches -> ``(N, 2)`` (pitch, yaw)."""

    def __init__(self) -> None:
        super().__init__()
        import torchvision

        self.gaze_network = _KeepsParallelKeys(torchvision.models.resnet50(weights=None))
        self.gaze_fc = nn.Sequential(nn.Linear(2048, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.gaze_network.module
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer4(r.layer3(r.layer2(r.layer1(x))))
        return self.gaze_fc(torch.flatten(r.avgpool(x), 1))


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure here is a bad file
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise PdfgcError(f"cannot read the ETH-XGaze weights {path}: {detail}") from None
    state = ckpt.get("model_state", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise PdfgcError(f"{path} is not an ETH-XGaze checkpoint (a dict with 'model_state', or its state_dict)")
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("gaze_network.") and not key.startswith("gaze_network.module."):
            key = "gaze_network.module." + key[len("gaze_network."):]  # saved without DataParallel
        out[key] = value
    return out


def load_eth_xgaze(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> ETHXGaze:
    """:class:`ETHXGaze` in eval mode with the weights of the release's checkpoint at ``path``
    (``torch.load(weights_only=True)``; its ``model_state`` entry, or a bare state_dict), by name,
    strictly. Every problem is a one-line :class:`PdfgcError`."""
    if not path:
        raise PdfgcError("the learned gaze estimator needs weights: set metrics.gaze.weights=<ETH-XGaze "
                         "epoch_24_ckpt.pth.tar>")
    path = Path(path)
    if not path.is_file():
        raise PdfgcError(f"ETH-XGaze weights not found: {path} (epoch_24_ckpt.pth.tar of xucong-zhang/ETH-XGaze)")
    state = _read_checkpoint(path)
    net = ETHXGaze()
    own = net.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        key = (unknown or missing)[0]
        raise PdfgcError(f"{path} is not the ETH-XGaze ResNet-50: {'unknown' if unknown else 'missing'} key {key}")
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise PdfgcError(f"{path}: {name} has shape {tuple(value.shape)}, ETH-XGaze needs {tuple(own[name].shape)}")
    net.load_state_dict(state)
    return net.eval().to(device)


# -- normalisation ----------------------------------------------------------------------------------
def face_model_mm() -> np.ndarray:
    """``(6, 3)`` 3D points (mm) of :data:`NORMALIZATION_LANDMARKS` in OpenCV camera axes of a
    frontal head (x right, y down, z away from the camera), from the generic template."""
    from pdfgc.faces.pose import FACE_TEMPLATE_3D

    return FACE_TEMPLATE_3D[list(NORMALIZATION_LANDMARKS)] * np.array([1.0, 1.0, -1.0]) * _MM_PER_TEMPLATE_UNIT


@dataclass(frozen=True)
class NormalizedFace:
    """One frame in the normalised camera."""

    patch: np.ndarray  # (224, 224, 3) uint8 RGB
    warp: np.ndarray  # (3, 3) image pixels -> patch pixels
    rotation: np.ndarray  # (3, 3) camera axes -> normalised camera axes
    head_rotation: np.ndarray  # (3, 3) head model axes -> camera axes
    face_centre: np.ndarray  # (3,) mm, camera frame


def normalize_face(frame: np.ndarray, landmarks: np.ndarray, camera: np.ndarray) -> Optional[NormalizedFace]:
    """The normalised 224 face patch of ``frame (H, W, 3)`` with its ``(68, 2)`` landmarks under
    the pinhole ``camera (3, 3)``; None without a face or when the pose cannot be solved."""
    import cv2

    points = np.asarray(landmarks, np.float64)[list(NORMALIZATION_LANDMARKS)]
    if not np.isfinite(points).all():
        return None
    model = face_model_mm()
    ok, rvec, tvec = cv2.solvePnP(model, points, camera, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:  # refine the closed-form EPnP pose iteratively from there
        ok, rvec, tvec = cv2.solvePnP(model, points, camera, None, rvec, tvec, True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or tvec[2, 0] <= 0:
        return None
    head_rotation = cv2.Rodrigues(rvec)[0]
    placed = model @ head_rotation.T + tvec[:, 0]
    centre = 0.5 * (placed[:4].mean(0) + placed[4:].mean(0))  # eye-corner centre and nose centre
    distance = float(np.linalg.norm(centre))
    forward = centre / distance
    down = np.cross(forward, head_rotation[:, 0])  # the head's x-axis stays in the patch's x-z plane
    down /= np.linalg.norm(down)
    right = np.cross(down, forward)
    rotation = np.stack([right / np.linalg.norm(right), down, forward])
    camera_norm = np.array([[FOCAL_NORM, 0, PATCH_SIDE / 2], [0, FOCAL_NORM, PATCH_SIDE / 2], [0, 0, 1.0]])
    warp = camera_norm @ np.diag([1.0, 1.0, DISTANCE_NORM / distance]) @ rotation @ np.linalg.inv(camera)
    patch = cv2.warpPerspective(np.ascontiguousarray(frame), warp, (PATCH_SIDE, PATCH_SIDE))
    return NormalizedFace(patch, warp, rotation, head_rotation, centre)


# -- gaze directions ----------------------------------------------------------------------------------
def gaze_vectors(pitchyaw: np.ndarray) -> np.ndarray:
    """``(N, 2)`` (pitch, yaw) radians -> ``(N, 3)`` unit gaze directions in the (normalised)
    camera's axes; (0, 0) looks straight into the camera (``-z``), yaw > 0 toward the image's
    left, pitch > 0 up (the release's drawing convention)."""
    p, y = np.asarray(pitchyaw, np.float64)[:, 0], np.asarray(pitchyaw, np.float64)[:, 1]
    return np.stack([-np.cos(p) * np.sin(y), -np.sin(p), -np.cos(p) * np.cos(y)], axis=1)


def head_frame_gaze(pitchyaw: np.ndarray, rotation: np.ndarray, head_rotation: np.ndarray) -> np.ndarray:
    """``(N, 3)`` gaze directions in the head model's axes: normalised camera -> camera (``R^T``)
    -> head (``H^T``). ``rotation`` / ``head_rotation``: ``(N, 3, 3)``."""
    g = gaze_vectors(pitchyaw)
    return np.einsum("nji,nkj,nk->ni", np.asarray(head_rotation), np.asarray(rotation), g)


def angle_errors_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(T,)`` angles in degrees between two ``(T, 3)`` direction sequences (NaN rows stay NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


class LearnedGazeEstimator:
    """Eye-in-head gaze directions of a clip from the ETH-XGaze network (module doc)."""

    name = "eth-xgaze-resnet50"

    def __init__(self, weights: str | os.PathLike, device: str = "cpu", batch_size: int = 16,
                 net: Optional[nn.Module] = None) -> None:
        self.net = net if net is not None else load_eth_xgaze(weights, device)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def head_gaze(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 RGB frames and their ``(T, 68, 2)`` landmarks -> ``(T, 3)``
        float32 unit gaze directions in head axes (NaN rows without a face). The camera is the
        preprocessing's: focal length = image width, principal point at the centre."""
        from pdfgc.faces.pose import camera_matrix

        frames = np.asarray(frames)
        out = np.full((len(frames), 3), np.nan, np.float32)
        camera = camera_matrix(frames.shape[2]) if frames.shape[1] == frames.shape[2] else np.array(
            [[frames.shape[2], 0, frames.shape[2] / 2], [0, frames.shape[2], frames.shape[1] / 2], [0, 0, 1.0]])
        faces = [(t, normalize_face(frames[t], landmarks[t], camera)) for t in range(len(frames))]
        faces = [(t, f) for t, f in faces if f is not None]
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        for s in range(0, len(faces), self.batch_size):
            chunk = faces[s:s + self.batch_size]
            x = torch.from_numpy(np.stack([f.patch for _, f in chunk])).permute(0, 3, 1, 2).float().div(255.0)
            pitchyaw = self.net(((x - mean) / std).to(self.device)).float().cpu().numpy()
            gaze = head_frame_gaze(pitchyaw, np.stack([f.rotation for _, f in chunk]),
                                   np.stack([f.head_rotation for _, f in chunk]))
            out[[t for t, _ in chunk]] = gaze
        return out
