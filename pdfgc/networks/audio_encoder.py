"""E_aud: the audio encoder (ResNet-SE + lip-code embedding)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .codes import MOUTH_DIM, UNIFIED_MOTION_DIM
from .resnet_se import ResNetSE


class AudioEncoder(nn.Module):
    """E_aud: ``mel (B, 1, 80, 20) -> (feature (B, 512), mouth (B, 500))``.

    ``self.model`` is a :class:`ResNetSE` (official: layers [3, 4, 6, 3], filters [32, 64, 128,
    256], SE reduction 8); ``mouth_embed`` (ReLU -> Linear 512 -> 500) gives the audio lip code.
    A ``(B, K, 1, 80, 20)`` input is encoded per window and returns ``(B, K, ·)`` outputs.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3),
                 filters: Sequence[int] = (32, 64, 128, 256), n_mels: int = 80,
                 se_reduction: int = 8, attention_dim: int = 128,
                 feature_dim: int = UNIFIED_MOTION_DIM, mouth_dim: int = MOUTH_DIM):
        super().__init__()
        self.model = ResNetSE(layers, filters, feature_dim, n_mels, se_reduction, attention_dim)
        self.mouth_embed = nn.Sequential(nn.ReLU(), nn.Linear(feature_dim, mouth_dim))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, 80, 20)`` (or ``(B, K, 1, 80, 20)``) -> ``(feature (B, 512), mouth (B, 500))``."""
        lead = mel.shape[:-3]
        feature = self.model(mel.reshape(-1, *mel.shape[-3:]))
        mouth = self.mouth_embed(feature)
        return feature.reshape(*lead, -1), mouth.reshape(*lead, -1)
