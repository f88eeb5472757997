"""Driver-frame augmentation of stage 1: colour distortion and perspective warp.

PC-AVS's trick, kept by PD-FGC (Fig. 2 shows a purple, warped driving face): the motion
encoder sees a distorted driver so that appearance (colour, exact geometry) cannot pass
through the motion feature, while the generator must rebuild the clean frame.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2


class DriverAugment(nn.Module):
    """Per-sample colour jitter + random perspective on a batch in [-1, 1].

    Defaults are the release's config (`cfg.data.augitem`): brightness 0.5, contrast 0.4,
    saturation 0.4, hue 0.4; perspective distortion 0.1 with probability 0.9.

    :param x: (B, 3, S, S) in [-1, 1]
    :return: (B, 3, S, S) in [-1, 1], each sample with its own random draw
    """

    def __init__(
        self,
        brightness: float = 0.5,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.4,
        perspective: float = 0.1,
        perspective_p: float = 0.9,
    ) -> None:
        super().__init__()
        self.transform = v2.Compose(
            [
                v2.ColorJitter(brightness, contrast, saturation, hue),
                v2.RandomPerspective(distortion_scale=perspective, p=perspective_p),
            ]
        )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit = ((x.float() + 1) / 2).clamp(0, 1)
        out = torch.stack([self.transform(sample) for sample in unit])
        return (out * 2 - 1).to(x.dtype)
