"""SyncNet v2 (J. S. Chung's ``syncnet_python``), the network behind LSE-D / LSE-C.

Two streams map 0.2 s of audio (13 MFCC x 20 frames) and 5 video frames (224 x 224, BGR 0-255)
to 1024-d embeddings (not normalised). Layer order and module indices equal the release so that
``syncnet_v2.model`` (a pickled state_dict, keys ``netcnnaud.N.*``, ``netfcaud.N.*``,
``netcnnlip.N.*``, ``netfclip.N.*``) loads by name. Facts: ``shared/reference/metrics.md`` §1.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from pdfgc.errors import PdfgcError
from pdfgc.metrics.weights import read_user_weights

__all__ = ["SyncNet", "load_syncnet"]


def _bn_relu2d(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


def _bn_relu3d(c: int) -> list[nn.Module]:
    return [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]


def _fc_head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))


class SyncNet(nn.Module):
    """SyncNet v2 (13.6 M parameters, 102 state_dict keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), *_bn_relu2d(64), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, padding=1), *_bn_relu2d(192), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), *_bn_relu2d(384),
            nn.Conv2d(384, 256, 3, padding=1), *_bn_relu2d(256),
            nn.Conv2d(256, 256, 3, padding=1), *_bn_relu2d(256), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4)), *_bn_relu2d(512),
        )
        self.netfcaud = _fc_head()
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), stride=(1, 2, 2)), *_bn_relu3d(96), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), *_bn_relu3d(256),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu3d(256),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu3d(256),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), *_bn_relu3d(256),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6)), *_bn_relu3d(512),
        )
        self.netfclip = _fc_head()

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 13, 20)`` MFCC windows -> ``(N, 1024)`` audio embeddings."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 5, 224, 224)`` BGR 0-255 frame windows -> ``(N, 1024)`` video embeddings."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> SyncNet:
    """SyncNet in eval mode with the weights of ``syncnet_v2.model`` at ``path``, copied by name.

    Tensors missing from the file are tolerated only for ``num_batches_tracked`` (old PyTorch BN
    had none); unknown keys or wrong shapes fail. Any problem is a one-line :class:`PdfgcError`.
    """
    path, state = read_user_weights(path, "SyncNet", "metrics.syncnet.weights",
                                    "syncnet_v2.model from syncnet_python's download_model.sh")
    net = SyncNet()
    own = net.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise PdfgcError(f"{path} is not syncnet_v2.model: unknown key {unknown[0]} ({len(unknown)} unknown)")
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    if missing:
        raise PdfgcError(f"{path} is not syncnet_v2.model: missing key {missing[0]} ({len(missing)} missing)")
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise PdfgcError(f"{path}: {name} has shape {tuple(value.shape)}, SyncNet v2 needs "
                             f"{tuple(own[name].shape)}")
        own[name].copy_(value)
    return net.eval().to(device)
