"""IResNet (insightface ``arcface_torch``), the ArcFace identity backbone used for CSIM when the
user gives its weights (``backbone.pth`` of arcface_torch: a raw state_dict, keys ``conv1``,
``bn1``, ``prelu``, ``layer1..4.N.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.0/1}``, ``bn2``,
``fc``, ``features``).

Input ``(B, 3, 112, 112)`` RGB scaled to [-1, 1] (``(x / 255 - 0.5) / 0.5``), face aligned by a
5-point similarity to :data:`ARCFACE_TEMPLATE_112`; output ``(B, 512)`` (not normalised).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["ARCFACE_TEMPLATE_112", "IRESNET_LAYERS", "IResNet"]

#: insightface's 5 reference points in a 112 x 112 crop: eye centres, nose tip, mouth corners.
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
#: blocks per stage of the released depths
IRESNET_LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN, plus the (projected) input."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """``IResNet(depth="r100")``: 112 px face -> 512-d identity embedding."""

    def __init__(self, depth: str = "r100", num_features: int = 512) -> None:
        super().__init__()
        layers = IRESNET_LAYERS[depth]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=0.0)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False),
                                   nn.BatchNorm2d(planes, eps=1e-5))
        out = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        out += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 112, 112)`` in [-1, 1] -> ``(B, 512)``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.dropout(torch.flatten(self.bn2(x), 1))))
