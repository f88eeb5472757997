"""Head pose labels from Deep3DFaceRecon (``pose_backend=deep3d``): crop, network, conversion.

Each aligned frame is cropped as Deep3DFaceRecon's ``util/preprocess.py`` ``align_img`` does
(five landmarks fitted to its standard 3D face with an orthographic least-squares fit, ``POS``;
the image scaled so that the face measures 102 px per model unit and a 224 crop centred on
where the model's origin lands), the network (:mod:`pdfgc.faces.deep3d_net`) regresses its 257
coefficients, and the rotation and translation among them become our pose labels.

Conversion (docs/preprocessing.md, "Pose backend", derives it):

* Deep3DFaceRecon rotates the face model by ``Rz(c) Ry(b) Rx(a)`` in coordinates x right,
  **y up**, z toward the camera (``models/bfm.py`` ``compute_rotation``). Ours
  (:mod:`pdfgc.faces.pose`) are x right, y down, z toward the camera with ``Rz(roll) Ry(yaw)
  Rx(pitch)``. Flipping y conjugates the rotation: ``F Rz(c) Ry(b) Rx(a) F = Rz(-c) Ry(b)
  Rx(-a)``, so ``yaw = b``, ``pitch = -a``, ``roll = -c``, exactly.
* Its camera: focal length 1015 px on the 224 crop, principal point (112, 112), the model's
  origin at depth ``10 - t_z`` (units: decimetres). The origin projects to the crop pixel
  ``(112 + 1015 t_x / d, 112 - 1015 t_y / d)``, which the crop's scale and centre map back into
  the aligned frame: ``(tx, ty)`` is that point relative to the frame centre in fractions of
  the side. The model's origin is the centroid of its mean face, not the landmark template's
  origin, so these (tx, ty) differ from the landmark backend's by a near-constant offset.
* ``log_scale``: the model's inter-ocular distance (0.621 units between the standard eye
  centres) projected at the origin's depth, in aligned pixels, over the template's ``50 / 224``
  of the side: zero for a face of the template's size, as with the landmark backend.
"""

from __future__ import annotations

import numpy as np

from pdfgc.faces.align import warp_frames

# Five standard landmarks of Deep3DFaceRecon's face model (BFM/similarity_Lm3D_all.mat reduced
# by util/load_mats.py load_lm3d): image-left eye centre, image-right eye centre, nose tip,
# mouth corners 48 and 54; x right, y up, z toward the camera, decimetres.
LM3D_STD = np.array([[-0.31148657, 0.29036078, 0.13377953],
                     [0.30979887, 0.28972036, 0.13179526],
                     [0.0032535, -0.04617932, 0.55244243],
                     [-0.25216928, -0.38133916, 0.22405732],
                     [0.2484662, -0.38128236, 0.22235769]])
RESCALE = 102.0          # crop pixels per model unit of the orthographic fit (align_img rescale_factor)
CROP = 224               # the network's input side
FOCAL = 1015.0           # its camera (models/facerecon_model.py: focal, center, camera_d)
CAMERA_DISTANCE = 10.0
MODEL_EYE_DISTANCE = float(np.linalg.norm(LM3D_STD[1] - LM3D_STD[0]))  # 0.621 units
TEMPLATE_EYE_FRACTION = 50.0 / 224.0  # the alignment template's inter-ocular distance / side
# align_img flips y as H - 1 - y but un-flips the crop centre as h0 - t_y: its crop sits one
# source row lower than the fit says. Kept, so that the crops are the ones it was trained on.
_ROW_OFFSET = 1.0
# Design matrix of the orthographic fit x_img = R . X + t over the five standard points.
_POS_PINV = np.linalg.pinv(np.concatenate([LM3D_STD, np.ones((5, 1))], axis=1))  # (4, 5)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Deep3DFaceRecon's five points of 68-point landmarks (``util/preprocess.py`` extract_5p).

    Args:
        landmarks: ``(T, 68, 2)`` pixel (x, y), iBUG-68 order.
    Returns:
        ``(T, 5, 2)`` float64: eye A centre (mean of corners 36, 39), eye B centre (42, 45),
        nose tip (30), mouth corners 48 and 54.
    """
    lm = np.asarray(landmarks, np.float64)
    return np.stack([(lm[:, 36] + lm[:, 39]) / 2, (lm[:, 42] + lm[:, 45]) / 2, lm[:, 30], lm[:, 48], lm[:, 54]],
                    axis=1)


def fit_crop(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale and centre of each frame's Deep3DFaceRecon crop (its ``POS`` + ``align_img``).

    Args:
        landmarks: ``(T, 68, 2)`` pixel (x, y) in the frames to crop.
    Returns:
        ``scale`` ``(T,)``: crop pixels per frame pixel; ``centre`` ``(T, 2)``: the frame pixel
        (x, y) at the crop's centre (112, 112). NaN for NaN landmarks.
    """
    points = five_points(landmarks)  # (T, 5, 2)
    k = np.einsum("ij,tjc->tic", _POS_PINV, points)  # (T, 4, 2): [R row; t] for x and for y
    fit_scale = (np.linalg.norm(k[:, :3, 0], axis=1) + np.linalg.norm(k[:, :3, 1], axis=1)) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = RESCALE / fit_scale
    centre = k[:, 3, :] + [0.0, _ROW_OFFSET]
    return scale, centre


def crop_matrices(scale: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``(T, 2, 3)`` frame pixel -> crop pixel matrices (scale about ``centre``, no rotation)."""
    scale = np.asarray(scale, np.float64)
    m = np.zeros((len(scale), 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = scale
    m[:, :, 2] = CROP / 2 - scale[:, None] * np.asarray(centre, np.float64)
    return m


def pose_from_coefficients(coefficients: np.ndarray, scale: np.ndarray, centre: np.ndarray,
                           image_size: int) -> np.ndarray:
    """Our pose labels from the network's output (module docstring: the conversion).

    Args:
        coefficients: ``(T, 257)`` network outputs (angles at 224:227, translation at 254:257).
        scale, centre: the crops' (:func:`fit_crop`).
        image_size: side of the (square) frames the crops were taken from.
    Returns:
        ``(T, 6)`` float32 ``(yaw, pitch, roll, tx, ty, log_scale)``.
    """
    from pdfgc.faces.deep3d_net import ANGLES, TRANSLATION

    c = np.asarray(coefficients, np.float64)
    a, b, r = c[:, ANGLES].T
    t_x, t_y, t_z = c[:, TRANSLATION].T
    scale = np.asarray(scale, np.float64)
    depth = CAMERA_DISTANCE - t_z
    with np.errstate(divide="ignore", invalid="ignore"):
        crop_xy = np.stack([FOCAL * t_x / depth, -FOCAL * t_y / depth], axis=1)  # from the crop centre, y down
        frame_xy = crop_xy / scale[:, None] + np.asarray(centre, np.float64)
        eye_distance = FOCAL * MODEL_EYE_DISTANCE / depth / scale  # frame pixels
        log_scale = np.log(eye_distance / (TEMPLATE_EYE_FRACTION * image_size))
    txy = (frame_xy - image_size / 2.0) / image_size
    return np.stack([b, -a, -r, txy[:, 0], txy[:, 1], log_scale], axis=1).astype(np.float32)


class Deep3DPoseEstimator:
    """Pose labels from Deep3DFaceRecon, batched (on GPU when ``device`` is one).

    Args:
        weights: the checkpoint (``epoch_20.pth``), loaded by
            :func:`pdfgc.faces.deep3d_net.load_recon_net`.
        device: ``cpu`` / ``cuda`` / ``cuda:1``.
        batch_size: crops per forward pass.
    """

    def __init__(self, weights: str, device: str = "cpu", batch_size: int = 32):
        from pdfgc.faces.deep3d_net import load_recon_net

        self.net = load_recon_net(weights, device)
        self.device = device
        self.batch_size = max(1, int(batch_size))

    def coefficients(self, crops: np.ndarray) -> np.ndarray:
        """``(T, 224, 224, 3)`` uint8 RGB crops -> ``(T, 257)`` float64 coefficients."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(crops[start:start + self.batch_size]))
                images = chunk.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
                out.append(self.net(images).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 257))

    def estimate(self, frames: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """Pose labels of each frame.

        Args:
            frames: ``(T, S, S, 3)`` uint8 RGB (the aligned frames).
            landmarks: ``(T, 68, 2)`` their landmarks, NaN rows where no face.
        Returns:
            ``(T, 6)`` float32 labels (:func:`pose_from_coefficients`); NaN rows for NaN landmarks.
        """
        frames = np.asarray(frames)
        out = np.full((len(frames), 6), np.nan, np.float32)
        scale, centre = fit_crop(landmarks)
        ok = np.isfinite(scale) & (scale > 0) & np.isfinite(centre).all(axis=1)
        if ok.any():
            crops = warp_frames(frames[ok], crop_matrices(scale[ok], centre[ok]), size=CROP)
            out[ok] = pose_from_coefficients(self.coefficients(crops), scale[ok], centre[ok], frames.shape[1])
        return out

