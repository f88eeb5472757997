"""E_mot: the motion encoder (FAN backbone + per-factor heads)."""

from __future__ import annotations

import torch
from torch import nn

from .codes import EMOTION_DIM, EYE_DIM, MOUTH_DIM, POSE_DIM, UNIFIED_MOTION_DIM
from .fan import FAN


def _head(dim: int) -> nn.Sequential:
    # Linear -> ReLU -> BN1d -> Linear (keys .0, .2, .3)
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.BatchNorm1d(dim), nn.Linear(dim, dim))


def _embed(dim: int, out_dim: int) -> nn.Sequential:
    # ReLU -> Linear (key .1)
    return nn.Sequential(nn.ReLU(), nn.Linear(dim, out_dim))


class MotionEncoder(nn.Module):
    """E_mot: face image -> unified motion feature -> pose, eye, emotion and mouth codes.

    ``forward(img (B, 3, S, S) in [-1, 1]) -> (pose (B, 6), eye (B, 6), emotion (B, 30),
    mouth_feature (B, 512))``. ``unified(img) -> (B, 512)`` is the FAN feature f_mot (stage 1);
    ``heads(f_mot)`` maps it to the 4-tuple above; ``mouth_code(mouth_feature) -> (B, 500)`` is the
    visual lip code (used by the audio-visual contrastive loss).

    Args: ``width`` FAN width (256 official), ``hourglass_depth`` (4), ``image_size`` S (224),
    ``num_landmarks`` (68), ``dropout`` in the hourglass (0.5), code sizes (defaults official).
    """

    def __init__(self, width: int = 256, hourglass_depth: int = 4, image_size: int = 224,
                 num_landmarks: int = 68, dropout: float = 0.5,
                 feature_dim: int = UNIFIED_MOTION_DIM, pose_dim: int = POSE_DIM,
                 eye_dim: int = EYE_DIM, emotion_dim: int = EMOTION_DIM,
                 mouth_dim: int = MOUTH_DIM, bottleneck_channels: int = 1,
                 stem_stride: int = 2):
        super().__init__()
        self.image_size = image_size
        self.model = FAN(width, hourglass_depth, image_size, num_landmarks, feature_dim, dropout,
                         bottleneck_channels, stem_stride)
        # Registration order = the release's key order.
        self.to_mouth = _head(feature_dim)
        self.mouth_embed = _embed(feature_dim, mouth_dim)
        self.to_headpose = _head(feature_dim)
        self.headpose_embed = _embed(feature_dim, pose_dim)
        self.to_eye = _head(feature_dim)
        self.eye_embed = _embed(feature_dim, eye_dim)
        self.to_emo = _head(feature_dim)
        self.emo_embed = _embed(feature_dim, emotion_dim)

    def unified(self, img: torch.Tensor) -> torch.Tensor:
        """Unified motion feature f_mot: ``(B, 3, S, S) -> (B, 512)``."""
        return self.model(img)

    def heads(self, unified: torch.Tensor):
        """``(B, 512) -> (pose (B, 6), eye (B, 6), emotion (B, 30), mouth_feature (B, 512))``."""
        pose = self.headpose_embed(self.to_headpose(unified))
        eye = self.eye_embed(self.to_eye(unified))
        emotion = self.emo_embed(self.to_emo(unified))
        mouth_feature = self.to_mouth(unified)
        return pose, eye, emotion, mouth_feature

    def mouth_code(self, mouth_feature: torch.Tensor) -> torch.Tensor:
        """Visual lip code: ``mouth_feature (B, 512) -> (B, 500)``."""
        return self.mouth_embed(mouth_feature)

    def forward(self, img: torch.Tensor):
        """``(B, 3, S, S) in [-1, 1] -> (pose, eye, emotion, mouth_feature)``."""
        return self.heads(self.unified(img))
