"""The FAN landmark backbone of E_mot (Bulat & Tzimiropoulos), one hourglass, as in the release.

Submodule names (``conv1``, ``bn1``, ``conv2``..``conv4``, ``m0.b1_L``/``b2_L``/``b3_L``/
``b2_plus_1``, ``top_m_0``, ``conv_last0``, ``bn_end0``, ``l0``, ``bn5``, ``conv6``, ``fc``) match
the official motion checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation residual block ``(B, in, H, W) -> (B, out, H, W)``.

    Three BN-ReLU-conv3x3 steps with out/2, out/4, out/4 channels whose outputs are concatenated,
    plus the input (through BN-ReLU-conv1x1 when the channel count changes).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        if out_ch % 4:
            raise ValueError(f"ConvBlock: out channels {out_ch} must be divisible by 4")
        half, quarter = out_ch // 2, out_ch // 4
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = _conv3x3(in_ch, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        self.downsample = None
        if in_ch != out_ch:
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(),
                                            nn.Conv2d(in_ch, out_ch, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat((out1, out2, out3), dim=1) + residual


class HourGlass(nn.Module):
    """Recursive hourglass ``(B, C, H, W) -> (B, C, H, W)`` of ``depth`` levels.

    Level L: upper branch ``b1_L`` (+ dropout); lower branch 2x2 max-pool (floor, so 7 -> 3),
    ``b2_L``, the next level (or ``b2_plus_1`` at the bottom), ``b3_L``, then bilinear upsampling to
    the upper branch's exact size (3 -> 7 is not a doubling) and a sum.
    """

    def __init__(self, depth: int = 4, features: int = 256, dropout: float = 0.5):
        super().__init__()
        if depth < 1:
            raise ValueError(f"HourGlass: depth must be >= 1, got {depth}")
        self.depth = depth
        self.dropout = nn.Dropout(dropout)
        self._build(depth, features)

    def _build(self, level: int, features: int) -> None:
        # Registration order gives the release's key order: b1_4, b2_4, b1_3, ..., b2_plus_1, b3_1..b3_4.
        self.add_module(f"b1_{level}", ConvBlock(features, features))
        self.add_module(f"b2_{level}", ConvBlock(features, features))
        if level > 1:
            self._build(level - 1, features)
        else:
            self.add_module(f"b2_plus_{level}", ConvBlock(features, features))
        self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        upper = self.dropout(self._modules[f"b1_{level}"](x))
        lower = self._modules[f"b2_{level}"](F.max_pool2d(x, 2, stride=2))
        if level > 1:
            lower = self._level(level - 1, lower)
        else:
            lower = self._modules[f"b2_plus_{level}"](lower)
        lower = self._modules[f"b3_{level}"](lower)
        lower = F.interpolate(lower, size=upper.shape[-2:], mode="bilinear", align_corners=False)
        return upper + lower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._level(self.depth, x)


BOTTLENECK_BIAS_INIT = 0.5


class FAN(nn.Module):
    """FAN backbone -> unified motion feature: ``(B, 3, S, S) in [-1, 1] -> (B, out_dim)``.

    conv1 7x7 s2 (width/4) + bn1 + ReLU -> conv2 ConvBlock (width/2) + 2x2 max-pool -> conv3
    (width/2) -> conv4 (width) -> hourglass ``m0`` -> ``top_m_0`` -> ``conv_last0`` -> ``bn_end0``
    -> ReLU -> ``l0`` (``num_landmarks`` heatmaps at S/4) -> ``bn5`` -> ReLU -> ``conv6`` 3x3 s2 to 1
    channel (S/8) -> flatten -> ReLU -> ``fc`` -> ``out_dim``. Official: width 256, S 224.

    Small configurations may widen the bottleneck (``bottleneck_channels`` conv6 outputs instead
    of 1) and change conv1's stride (``stem_stride``, official 2; the maps are then S/(2*stride)).
    """

    def __init__(self, width: int = 256, hourglass_depth: int = 4, image_size: int = 224,
                 num_landmarks: int = 68, out_dim: int = 512, dropout: float = 0.5,
                 bottleneck_channels: int = 1, stem_stride: int = 2):
        super().__init__()
        if width % 16:
            raise ValueError(f"FAN: width {width} must be divisible by 16")
        self.image_size = image_size
        self.conv1 = nn.Conv2d(3, width // 4, kernel_size=7, stride=stem_stride, padding=3)
        self.bn1 = nn.BatchNorm2d(width // 4)
        self.conv2 = ConvBlock(width // 4, width // 2)
        self.conv3 = ConvBlock(width // 2, width // 2)
        self.conv4 = ConvBlock(width // 2, width)
        self.m0 = HourGlass(hourglass_depth, width, dropout)
        self.top_m_0 = ConvBlock(width, width)
        self.conv_last0 = nn.Conv2d(width, width, kernel_size=1)
        self.l0 = nn.Conv2d(width, num_landmarks, kernel_size=1)
        self.bn_end0 = nn.BatchNorm2d(width)
        self.conv6 = nn.Conv2d(num_landmarks, bottleneck_channels, kernel_size=3, stride=2, padding=1)
        side = ((image_size - 1) // stem_stride + 1) // 2  # after conv1 and the max-pool
        side = (side - 1) // 2 + 1  # after conv6 (s2)
        self.fc = nn.Linear(bottleneck_channels * side * side, out_dim)
        self.bn5 = nn.BatchNorm2d(num_landmarks)
        # The bottleneck map goes through a ReLU before fc: from torch's default init about half
        # of it starts below zero, and early training drives the rest there too (a constant f_mot
        # that no loss can revive). Starting it positive keeps it alive; loaded weights replace it.
        nn.init.constant_(self.conv6.bias, BOTTLENECK_BIAS_INIT)

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """Landmark heatmaps ``(B, num_landmarks, S/4, S/4)`` (raw ``l0`` output)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        x = self.top_m_0(self.m0(x))
        x = self.bn_end0(self.conv_last0(x))
        return self.l0(F.relu(x))

    def bottleneck(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """Heatmaps ``(B, num_landmarks, S/4, S/4)`` -> the unified feature ``(B, out_dim)``."""
        net = self.conv6(F.relu(self.bn5(heatmaps)))
        return self.fc(F.relu(net.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"FAN: expected (B, 3, {self.image_size}, {self.image_size}) images, "
                             f"got {tuple(x.shape)}")
        return self.bottleneck(self.heatmaps(x))
