"""Per-clip figures of the real-data protocols: the metric back-ends held once, measurements of a
clip (landmarks, EAR, iris, pose) and the figures comparing a clip with a reference clip.

Every metric whose weights are missing is left out (and named in the report), except the
shipped ones (dlib landmarks and face descriptor), which always run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch

from pdfgc.metrics.face_quality import build_identity_descriptor, cosine_similarity, frame_psnr, frame_ssim
from pdfgc.metrics.gaze_blink import (BLINK_ESTIMATOR, GAZE_ESTIMATOR, blink_events, blink_matches, ear_agreement,
                                      gaze_errors)
from pdfgc.metrics.landmark_metrics import POSE_ESTIMATOR, landmark_distances, pose_errors_degrees
from pdfgc.metrics.learned_gaze import LEARNED_GAZE_ESTIMATOR, angle_errors_degrees

log = logging.getLogger("pdfgc.evaluate")

EMOTION_ESTIMATOR = "cosine of the evaluated model's own E_mot emotion codes (self-consistency, no external classifier)"


@dataclass
class FaceMeasures:
    """Landmark measurements of a clip of ``T`` frames (in ``side`` x ``side`` pixels)."""

    landmarks: np.ndarray  # (T, 68, 2), NaN rows where no face
    ear: np.ndarray  # (T, 2)
    iris: np.ndarray  # (T, 2, 2)
    pose: np.ndarray  # (T, 6)
    side: int
    gaze: Optional[np.ndarray] = None  # (T, 3) eye-in-head gaze directions (learned estimator), if configured

    @property
    def face_rate(self) -> float:
        """Share of frames with a face found."""
        return float(np.isfinite(self.landmarks).all(axis=(1, 2)).mean()) if len(self.landmarks) else float("nan")

    def repeated(self, n: int) -> "FaceMeasures":
        """The first frame's measures repeated ``n`` times (a still portrait as a clip)."""
        take = lambda a: None if a is None else np.repeat(a[:1], n, axis=0)  # noqa: E731
        return FaceMeasures(take(self.landmarks), take(self.ear), take(self.iris), take(self.pose), self.side,
                            take(self.gaze))


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


class ClipScorer:
    """The metric back-ends of one evaluation (loaded once).

    Args:
        cfg: the ``metrics`` config (``configs/metrics/default.yaml``): ``syncnet``, ``fid``,
            ``identity``, ``landmarks``, ``measure_side``, ``blink`` and optionally ``gaze``
            (``weights``: the ETH-XGaze file of the learned gaze estimator).
    """

    def __init__(self, cfg: Mapping[str, Any], device: str = "cpu") -> None:
        from pdfgc.faces import build_landmark_detector
        from pdfgc.metrics.fid import RESIZE_RULES, build_fid
        from pdfgc.metrics.syncnet import load_syncnet

        self.cfg = cfg
        sync = cfg["syncnet"]
        self.syncnet = load_syncnet(sync["weights"], device) if sync.get("weights") else None
        fid = cfg["fid"]
        self.inception = None
        if fid.get("weights"):
            self.inception = build_fid(fid["weights"], int(fid["feature"]), bool(fid["antialias"])).inception
            self.inception.to(device)
        self.fid_resize = RESIZE_RULES[bool(fid["antialias"])]
        ident = cfg["identity"]
        self.descriptor = build_identity_descriptor(ident.get("backend", "dlib"), bool(ident["detect"]),
                                                    ident.get("arcface_weights"), ident.get("arcface_depth", "r100"),
                                                    device)
        self.identity_stride = int(ident["frame_stride"])
        lm = dict(cfg["landmarks"])
        self.landmarker = build_landmark_detector(lm.pop("backend"), **lm)
        self.measure_side = int(cfg["measure_side"])
        self.blink = dict(cfg["blink"])
        self.device = device
        gaze = cfg.get("gaze") or {}
        self.learned_gaze = None
        if gaze.get("weights"):
            from pdfgc.metrics.learned_gaze import LearnedGazeEstimator

            self.learned_gaze = LearnedGazeEstimator(gaze["weights"], device, int(gaze.get("batch_size", 16)))
        for name, missing in (("LSE", self.syncnet is None), ("FID", self.inception is None)):
            if missing:
                log.warning("%s not computed: no weights configured (see docs/evaluation.md)", name)

    def estimators(self) -> dict[str, str]:
        """Which estimator produced which figure (written into the report)."""
        return {
            "lse": ("SyncNet v2 (syncnet_v2.model), syncnet_python protocol" if self.syncnet
                    else "not computed (no weights)"),
            "fid": (f"torchmetrics FID, Inception {int(self.cfg['fid']['feature'])}-d, resize {self.fid_resize}"
                    if self.inception is not None else "not computed (no weights)"),
            "csim": f"{self.descriptor.name}, cosine to the source portrait",
            "gaze": GAZE_ESTIMATOR, "blink": BLINK_ESTIMATOR, "pose": POSE_ESTIMATOR,
            "gaze_learned": LEARNED_GAZE_ESTIMATOR if self.learned_gaze else "not computed (no metrics.gaze.weights)",
            "lmd": f"dlib 68 landmarks, pixels of a 224 frame (measured at {self.measure_side} px)",
            "emotion": EMOTION_ESTIMATOR,
        }

    # -- measurements ----------------------------------------------------------------------------
    def measure(self, frames: np.ndarray) -> FaceMeasures:
        """Landmarks / EAR / iris / pose of ``(T, S, S, 3)`` uint8 frames, measured at ``measure_side``."""
        import cv2

        from pdfgc.faces import eye_aspect_ratio, head_pose, iris_positions

        side = self.measure_side
        if frames.shape[1] != side:
            frames = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_CUBIC) for f in frames])
        lm = self.landmarker.detect(frames).landmarks
        gaze = self.learned_gaze.head_gaze(frames, lm) if self.learned_gaze is not None else None
        return FaceMeasures(lm, eye_aspect_ratio(lm), iris_positions(frames, lm), head_pose(lm, side), side, gaze)

    def lip_sync(self, frames: np.ndarray, audio: np.ndarray) -> dict[str, float]:
        """``lse_d``, ``lse_c``, ``av_offset`` of frames with int16 audio (empty without SyncNet)."""
        from pdfgc.metrics.lse import num_sync_windows, score_clip

        if self.syncnet is None or num_sync_windows(len(frames), len(audio)) < 1:
            return {}
        s = score_clip(self.syncnet, frames, audio, int(self.cfg["syncnet"]["vshift"]),
                       int(self.cfg["syncnet"]["batch_size"]))
        return {"lse_d": s.min_dist, "lse_c": s.confidence, "av_offset": float(s.offset)}

    @torch.no_grad()
    def fid_features(self, frames: np.ndarray, batch_size: int = 16) -> np.ndarray | None:
        """``(T, D)`` float32 Inception features (None without weights)."""
        from pdfgc.metrics.fid import fid_images

        if self.inception is None:
            return None
        x = fid_images(frames)
        return torch.cat([self.inception(x[s:s + batch_size].to(self.device)).float().cpu()
                          for s in range(0, len(x), batch_size)]).numpy()

    def portrait_descriptor(self, portrait: np.ndarray) -> np.ndarray:
        """``(128,)`` identity descriptor of a ``(S, S, 3)`` uint8 portrait."""
        return self.descriptor(portrait[None])[0]

    def csim(self, reference: np.ndarray, frames: np.ndarray) -> float:
        """Mean cosine similarity of every ``frame_stride``-th frame to the reference descriptor."""
        return _nanmean(cosine_similarity(reference, self.descriptor(frames[::self.identity_stride])))

    # -- comparisons -----------------------------------------------------------------------------
    def blink_figures(self, ours: FaceMeasures, ref: FaceMeasures) -> dict[str, float]:
        """EAR agreement and blink-event counts (F1 is computed from the summed counts)."""
        b = self.blink
        tp, fp, fn = blink_matches(blink_events(ours.ear, b["threshold"], b["min_frames"]),
                                   blink_events(ref.ear, b["threshold"], b["min_frames"]), b["tolerance"])
        return {**ear_agreement(ours.ear, ref.ear), "blink_tp": tp, "blink_fp": fp, "blink_fn": fn}

    @staticmethod
    def pose_error(ours: FaceMeasures, ref: FaceMeasures) -> float:
        """Mean |yaw|, |pitch|, |roll| error in degrees over frames with both faces."""
        return _nanmean(pose_errors_degrees(ours.pose, ref.pose).mean(axis=1))

    @staticmethod
    def gaze_error(ours: FaceMeasures, ref: FaceMeasures) -> float:
        return _nanmean(gaze_errors(ours.iris, ref.iris))

    @staticmethod
    def gaze_angle_errors(ours: FaceMeasures, ref: FaceMeasures) -> Optional[np.ndarray]:
        """``(T,)`` degrees between the learned eye-in-head gaze of two clips (None without it)."""
        if ours.gaze is None or ref.gaze is None:
            return None
        t = min(len(ours.gaze), len(ref.gaze))
        return angle_errors_degrees(ours.gaze[:t], ref.gaze[:t])

    @classmethod
    def gaze_figures(cls, ours: FaceMeasures, ref: FaceMeasures) -> dict[str, float]:
        """``gaze_error`` (iris proxy) and, with the learned estimator, ``gaze_angle_error``."""
        out = {"gaze_error": cls.gaze_error(ours, ref)}
        angles = cls.gaze_angle_errors(ours, ref)
        if angles is not None:
            out["gaze_angle_error"] = _nanmean(angles)
        return out

    def frame_series(self, ours: FaceMeasures, ref: FaceMeasures) -> dict[str, np.ndarray]:
        """Per-frame figures ``(T,)`` float32 of a clip against its reference clip (NaN where
        either has no face): ``gaze_error`` (eye widths), ``pose_error`` (degrees, mean of |yaw|,
        |pitch|, |roll|), ``ear`` / ``ear_reference`` (mean of the two eyes) and ``blink`` /
        ``blink_reference`` (1 inside a detected blink event, else 0). The per-clip figures are
        their means (blink F1: from the events)."""
        b = self.blink
        t = min(len(ours.ear), len(ref.ear))

        def in_blink(ear: np.ndarray) -> np.ndarray:
            flags = np.zeros(t, np.float32)
            for first, last in blink_events(ear[:t], b["threshold"], b["min_frames"]):
                flags[first:last + 1] = 1.0
            return flags

        with np.errstate(invalid="ignore"):
            pose = pose_errors_degrees(ours.pose[:t], ref.pose[:t]).mean(axis=1)
        series = {"gaze_error": gaze_errors(ours.iris[:t], ref.iris[:t]), "pose_error": pose,
                  "ear": ours.ear[:t].mean(axis=1), "ear_reference": ref.ear[:t].mean(axis=1),
                  "blink": in_blink(ours.ear), "blink_reference": in_blink(ref.ear)}
        angles = self.gaze_angle_errors(ours, ref)
        if angles is not None:
            series["gaze_angle_error"] = angles[:t]
        return {k: np.asarray(v, np.float32) for k, v in series.items()}

    def reconstruction(self, ours: np.ndarray, gt: np.ndarray, m_ours: FaceMeasures,
                       m_gt: FaceMeasures) -> dict[str, float]:
        """Everything comparing a reconstruction with its ground truth, frame by frame."""
        lmd = landmark_distances(m_ours.landmarks, m_gt.landmarks, m_ours.side)
        return {"psnr": float(frame_psnr(ours, gt).mean()), "ssim": float(frame_ssim(ours, gt).mean()),
                "pose_error": self.pose_error(m_ours, m_gt), **self.gaze_figures(m_ours, m_gt),
                "m_lmd": _nanmean(lmd["m_lmd"]), "f_lmd": _nanmean(lmd["f_lmd"]),
                **self.blink_figures(m_ours, m_gt)}
