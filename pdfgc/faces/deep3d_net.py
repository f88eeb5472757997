"""Deep3DFaceRecon_pytorch's reconstruction network (R-Net) and its checkpoint file.

The architecture of ``ReconNetWrapper('resnet50', use_last_fc=False)`` in
``models/networks.py`` of github.com/sicxu/Deep3DFaceRecon_pytorch, rebuilt from torchvision
parts so that its released ``epoch_20.pth`` loads by name:

* ``backbone``: ResNet-50 without its classifier (torchvision's layer names; global average
  pooling to a 2048-d feature).
* ``final_layers.0`` ... ``final_layers.6``: 1x1 convolutions with bias regressing, in this
  order, identity (80), expression (64), texture (80), angles (3), lighting (27), translation
  x, y (2) and translation z (1): the 257 coefficients, concatenated in that order.

Input: ``(B, 3, 224, 224)`` float RGB in [0, 1] (no mean / std normalisation), cropped as
:func:`pdfgc.faces.deep3d.crop_matrices` does. The checkpoint is the dict the project's
``BaseModel.save_networks`` writes, ``{"net_recon": state_dict, "opt_00": ..., "sched_00": ...}``;
only ``net_recon`` is read (safely: ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from pdfgc.errors import PdfgcError

CHECKPOINT_ENTRY = "net_recon"
INPUT_SIZE = 224
#: (name, width) of the coefficient groups, in output order (sum 257).
COEFFICIENT_LAYOUT = (("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans_xy", 2),
                      ("trans_z", 1))
NUM_COEFFICIENTS = sum(width for _, width in COEFFICIENT_LAYOUT)
ANGLES = slice(224, 227)        # rotation about x, y, z (radians; see pdfgc.faces.deep3d)
TRANSLATION = slice(254, 257)   # x, y, z in the face model's units (decimetres)
_FEATURES = 2048


class ReconNet(nn.Module):
    """ResNet-50 + seven 1x1 heads: ``(B, 3, 224, 224)`` in [0, 1] -> ``(B, 257)`` coefficients."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50

        self.backbone = resnet50(weights=None)  # never downloads: the weights come from the checkpoint
        self.backbone.fc = nn.Identity()
        self.final_layers = nn.ModuleList(nn.Conv2d(_FEATURES, width, kernel_size=1, bias=True)
                                          for _, width in COEFFICIENT_LAYOUT)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 224, 224)`` -> ``(B, 257)``."""
        features = self.backbone(images)[:, :, None, None]
        return torch.cat([layer(features) for layer in self.final_layers], dim=1).flatten(1)


def load_recon_net(path: str | os.PathLike, device: str | torch.device = "cpu") -> ReconNet:
    """A :class:`ReconNet` in eval mode on ``device`` with the weights of ``path``.

    Args:
        path: Deep3DFaceRecon checkpoint (``checkpoints/<name>/epoch_20.pth``: a dict whose
            ``net_recon`` entry is the network's state_dict).
        device: where the network runs.
    Raises:
        PdfgcError: (one line) the file is missing, unreadable or unsafe, or its keys / shapes are
            not the network's.
    """
    from pdfgc.state_files import read_state_dict

    state = read_state_dict(path, entry=CHECKPOINT_ENTRY)
    net = ReconNet()
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise PdfgcError(f"{path} is not a Deep3DFaceRecon resnet50 checkpoint: {len(missing)} keys missing, "
                         f"{len(unexpected)} unexpected ({first})")
    wrong = next((k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)), None)
    if wrong is not None:
        raise PdfgcError(f"{path} is not a Deep3DFaceRecon resnet50 checkpoint: {wrong!r} has shape "
                         f"{tuple(state[wrong].shape)}, the network {tuple(expected[wrong].shape)}")
    net.load_state_dict(state)
    return net.to(device).eval()
