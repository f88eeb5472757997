"""ResNet-SE with self-attentive pooling (voxceleb_trainer style), the backbone of E_aud.

Key names follow the release's audio checkpoint: ``conv1``, ``bn1``, ``layerN.i.{conv1,bn1,conv2,
bn2,se.fc.0,se.fc.2,downsample.0,downsample.1}``, ``attention.{0,2,3}``, ``fc``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SELayer(nn.Module):
    """Squeeze-and-excitation channel gate: ``(B, C, H, W) -> (B, C, H, W)``."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(),
                                nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class SEBasicBlock(nn.Module):
    """Basic residual block with SE: conv3x3 (stride) -> ReLU -> BN -> conv3x3 -> BN -> SE, + skip, ReLU.

    ReLU comes before BN after the first conv, as in the release.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int | tuple[int, int] = 1,
                 reduction: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.se = SELayer(out_ch, reduction)
        self.downsample = None
        if stride not in (1, (1, 1)) or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(self.relu(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNetSE(nn.Module):
    """``mel (B, 1, n_mels, T) -> (B, out_dim)``.

    Stem conv3x3 -> ReLU -> BN; four SE stages (``filters``, ``layers`` blocks; stride 2 on stages
    2-4); the map ``(B, C, n_mels/8, T/8)`` is flattened to ``(B, C*n_mels/8, T/8)`` and pooled over
    time with self-attention (Conv1d-ReLU-BN1d-Conv1d, softmax over time), then ``fc``.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3),
                 filters: Sequence[int] = (32, 64, 128, 256), out_dim: int = 512,
                 n_mels: int = 80, se_reduction: int = 8, attention_dim: int = 128):
        super().__init__()
        if len(layers) != 4 or len(filters) != 4:
            raise ValueError("ResNetSE: layers and filters need 4 entries each")
        self.n_mels = n_mels
        self.conv1 = nn.Conv2d(1, filters[0], kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(filters[0])
        in_ch = filters[0]
        freq = n_mels
        for i, (blocks, ch) in enumerate(zip(layers, filters)):
            stride = 1 if i == 0 else 2
            if stride == 2:
                freq = (freq - 1) // 2 + 1
            stage = [SEBasicBlock(in_ch, ch, stride if stride == 1 else (2, 2), se_reduction)]
            stage += [SEBasicBlock(ch, ch, 1, se_reduction) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            in_ch = ch
        pooled = filters[3] * freq
        self.attention = nn.Sequential(
            nn.Conv1d(pooled, attention_dim, kernel_size=1), nn.ReLU(),
            nn.BatchNorm1d(attention_dim), nn.Conv1d(attention_dim, pooled, kernel_size=1),
            nn.Softmax(dim=2))
        self.fc = nn.Linear(pooled, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.relu(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, C * F', T')
        w = self.attention(x)
        return self.fc((x * w).sum(dim=2))
