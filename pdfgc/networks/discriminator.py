"""D: multi-scale PatchGAN discriminator (pix2pixHD / SPADE style). Not part of the release."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    """One scale: ``(B, C, H, W) -> list of n_layers + 1 feature maps`` (last = patch logits ``(B, 1, h, w)``).

    Conv 4x4 s2 + LeakyReLU 0.2; then ``n_layers - 1`` spectral-norm conv 4x4 (stride 2, the last
    stride 1, channels doubling up to 512) + InstanceNorm + LeakyReLU; then conv 4x4 s1 to 1 channel.
    """

    def __init__(self, input_channels: int = 3, ndf: int = 64, n_layers: int = 4,
                 max_channels: int = 512):
        super().__init__()
        kw, pad = 4, math.ceil((4 - 1) / 2)
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(input_channels, ndf, kw, stride=2, padding=pad), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, max_channels)
            stride = 1 if n == n_layers - 1 else 2
            conv = spectral_norm(nn.Conv2d(nf_prev, nf, kw, stride=stride, padding=pad, bias=False))
            layers.append(nn.Sequential(conv, nn.InstanceNorm2d(nf, affine=False),
                                        nn.LeakyReLU(0.2)))
        layers.append(nn.Sequential(nn.Conv2d(nf, 1, kw, stride=1, padding=pad)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """D: ``img (B, C, S, S) -> [[features of scale 0], [features of scale 1], ...]``.

    Scale i sees the input average-pooled (3x3, stride 2) i times. Each inner list holds the
    intermediate maps for feature matching, the last being the patch logits ``(B, 1, h, w)``.
    Official recipe: 2 scales, 4 layers, ndf 64.
    """

    def __init__(self, num_scales: int = 2, n_layers: int = 4, ndf: int = 64,
                 input_channels: int = 3, max_channels: int = 512):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(input_channels, ndf, n_layers, max_channels)
                                    for _ in range(num_scales))

    def forward(self, img: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        x = img
        for i, scale in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outputs.append(scale(x))
        return outputs
