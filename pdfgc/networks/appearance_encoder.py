"""E_app: the appearance (identity) encoder, a torchvision ResNeXt."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import Bottleneck, ResNet

from .codes import ID_DIM


class AppearanceEncoder(nn.Module):
    """E_app: ``img (B, 3, S, S) in [-1, 1] -> (id_vec (B, 2048), id_map (B, 512, m, m))``.

    ``self.model`` is torchvision's ``ResNet(Bottleneck, layers, groups, width_per_group)``
    (official: resnext50_32x4d, [3, 4, 6, 3], 32, 4) including its unused ``model.fc``. The layer4
    map is average-pooled to ``id_vec`` and, through ``conv1x1`` (2048 -> 512, with bias) and an
    adaptive average pool to ``map_size`` (7 official), gives ``id_map``, the generator's start map.
    ``fc`` (2048 -> ``num_identities``, 5995 official) is the identity classifier
    (``classify(id_vec) -> (B, num_identities)`` logits).

    ``backbone_classes`` sizes the unused ``model.fc`` (1000 official; frozen) and
    ``replace_stride_with_dilation`` is passed to torchvision (small images keep a larger map).
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), groups: int = 32,
                 width_per_group: int = 4, map_size: int = 7, map_channels: int = 512,
                 num_identities: int = 5995, backbone_classes: int = 1000,
                 replace_stride_with_dilation: Sequence[bool] | None = None):
        super().__init__()
        self.map_size = map_size
        self.model = ResNet(Bottleneck, list(layers), num_classes=backbone_classes, groups=groups,
                            width_per_group=width_per_group,
                            replace_stride_with_dilation=(list(replace_stride_with_dilation)
                                                          if replace_stride_with_dilation else None))
        # torchvision's classifier is never used: frozen, so DDP never waits for its gradients.
        self.model.fc.requires_grad_(False)
        feat = 512 * Bottleneck.expansion
        assert feat == ID_DIM
        self.conv1x1 = nn.Conv2d(feat, map_channels, kernel_size=1)
        self.fc = nn.Linear(feat, num_identities)

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """ResNet layer4 map ``(B, 2048, h, w)`` (h = S/32 without dilation)."""
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(img))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S) in [-1, 1] -> (id_vec (B, 2048), id_map (B, 512, map_size, map_size))``."""
        x = self.features(img)
        id_vec = torch.flatten(self.model.avgpool(x), 1)
        id_map = F.adaptive_avg_pool2d(self.conv1x1(x), (self.map_size, self.map_size))
        return id_vec, id_map

    def classify(self, id_vec: torch.Tensor) -> torch.Tensor:
        """Identity logits: ``(B, 2048) -> (B, num_identities)``."""
        return self.fc(id_vec)
