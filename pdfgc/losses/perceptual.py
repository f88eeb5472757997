"""VGG19 perceptual loss **L_vgg** (pix2pixHD-style, as in the authors' early code).

The network is torchvision's VGG19 ``features`` truncated after ``relu5_1`` (layers 0..29, the
classifier and the last block are never built). Weights come from a local file only: a
torchvision-format VGG19 state_dict (e.g. ``vgg19-dcbb9e9d.pth``), either the whole model's
(``features.*`` and ``classifier.*``) or only the features part (``features.N.*`` or bare
``N.*`` keys). Nothing is ever downloaded. Without a file the loss runs on a randomly
initialised VGG19 and warns once per process (fine for tests and smoke runs, meaningless for
real training).
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pdfgc.errors import PdfgcError

__all__ = ["VGGPerceptualLoss", "UntrainedVGGWarning", "load_vgg19_features_state_dict",
           "build_vgg19_features", "VGG19_TAPS"]

# torchvision VGG19 ("E") layer indices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG19_TAPS = (1, 6, 11, 20, 29)
_NUM_LAYERS = VGG19_TAPS[-1] + 1  # features[:30]
_VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_warned_untrained = False


class UntrainedVGGWarning(UserWarning):
    """The perceptual loss runs on a randomly initialised VGG19 (no weights file configured)."""


def build_vgg19_features(init: bool = True) -> nn.Sequential:
    """torchvision's ``vgg19().features[:30]`` (up to relu5_1), same layer indices.

    ``init=True``: random init as torchvision. ``init=False``: parameters on the ``meta`` device
    (no memory, no init cost), to be filled with ``load_state_dict(..., assign=True)`` or used as
    a shape reference.
    """
    if not init:
        with torch.device("meta"):
            return _build_layers(init=False)
    return _build_layers(init=True)


def _build_layers(init: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG19_CFG:
        if len(layers) >= _NUM_LAYERS:
            break
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1)
            if init:  # torchvision's VGG init (only matters for the untrained fallback)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_ch = int(v)
    return nn.Sequential(*layers[:_NUM_LAYERS])


def _torch_load(path: str):
    try:
        # mmap avoids reading the 400 MB classifier of a full checkpoint into memory; legacy
        # (pre-zip) files such as the original vgg19-dcbb9e9d.pth do not support it.
        return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception:  # noqa: BLE001 - retried without mmap; a real failure re-raises there
        return torch.load(path, weights_only=True, map_location="cpu")


def load_vgg19_features_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Read a torchvision VGG19 state_dict file; return the state_dict of ``features[:30]``.

    Accepts the full model's state_dict (``features.*``, ``classifier.*``), a features-only one
    (``features.N.weight`` or ``N.weight``), optionally wrapped in ``{"state_dict": ...}``.

    Raises:
        PdfgcError: the file is missing, unreadable, or lacks VGG19 feature weights.
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise PdfgcError(f"VGG19 weights file not found: {path}")
    try:
        obj = _torch_load(path)
    except Exception as exc:  # noqa: BLE001 - any read failure is the user's file's fault
        raise PdfgcError(f"cannot read VGG19 weights file {path}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise PdfgcError(f"VGG19 weights file {path} does not hold a state_dict")
    if any(k.startswith("features.") for k in obj):
        items = {k[len("features."):]: v for k, v in obj.items() if k.startswith("features.")}
    else:
        items = dict(obj)
    wanted = build_vgg19_features(init=False).state_dict()
    out = {}
    for key, ref in wanted.items():
        if key not in items:
            raise PdfgcError(
                f"VGG19 weights file {path} lacks features.{key} "
                "(expected a torchvision vgg19 state_dict)"
            )
        val = items[key]
        if not isinstance(val, torch.Tensor) or tuple(val.shape) != tuple(ref.shape):
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
            raise PdfgcError(
                f"VGG19 weights file {path}: features.{key} has shape {shape}, "
                f"expected {tuple(ref.shape)} (is it VGG19, not VGG16?)"
            )
        out[key] = val.detach().to(torch.float32).clone()
    return out


class VGGPerceptualLoss(nn.Module):
    """Perceptual loss **L_vgg**: weighted L1 between VGG19 features of ``x`` and ``y``.

    ``L_vgg = sum_i w_i * mean|phi_i(n(x)) - sg(phi_i(n(y)))|``

    with ``phi_i`` the activations at relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 of VGG19,
    ``w = (1/32, 1/16, 1/8, 1/4, 1)`` (pix2pixHD; the authors' early code), ``n`` the map from
    ``[-1, 1]`` to ImageNet-normalised input (``((v + 1) / 2 - mean) / std``) and ``sg`` stop-
    gradient on the target. The loss weight (early code: 5) is applied by the caller.

    The VGG is frozen (``requires_grad=False``) and always in eval mode (``train()`` leaves it
    in eval). By default (``persistent=False``) its weights are kept out of ``state_dict()``
    and loading a state_dict without them is not an error, so checkpoints of the modules that
    own this loss do not carry 80 MB of fixed VGG weights; they are re-read from
    ``weights_path`` at construction.

    Args:
        weights_path: local torchvision VGG19 state_dict file; ``None`` -> random VGG19 with a
            one-time :class:`UntrainedVGGWarning`.
        layer_weights: five per-tap weights.
        resize: if given, both images are bilinearly resized to ``resize x resize`` first.
        persistent: keep the VGG weights in ``state_dict()``.

    Shapes:
        ``x``, ``y``: ``(B, 3, H, W)`` in ``[-1, 1]`` (H, W >= 16). Returns a float32 scalar.
    """

    def __init__(
        self,
        weights_path: Optional[str] = None,
        layer_weights: Sequence[float] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0),
        resize: Optional[int] = None,
        persistent: bool = False,
    ) -> None:
        super().__init__()
        layer_weights = tuple(float(w) for w in layer_weights)
        if len(layer_weights) != len(VGG19_TAPS):
            raise ValueError(f"layer_weights needs {len(VGG19_TAPS)} entries, got {layer_weights}")
        self.layer_weights = layer_weights
        self.resize = int(resize) if resize else None
        self.weights_path = None if weights_path is None else str(weights_path)
        if weights_path is None:
            self.vgg = build_vgg19_features(init=True)
            _warn_untrained_once()
        else:
            state = load_vgg19_features_state_dict(weights_path)
            self.vgg = build_vgg19_features(init=False)
            self.vgg.load_state_dict(state, assign=True)
        self.vgg.eval()
        self.vgg.requires_grad_(False)
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.persistent = persistent
        if not persistent:
            self.register_state_dict_post_hook(_drop_vgg_keys)
            self.register_load_state_dict_pre_hook(_remember_prefix)
            self.register_load_state_dict_post_hook(_forgive_missing_vgg_keys)

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        super().train(mode)
        self.vgg.eval()
        return self

    def _prepare(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(img.shape)}")
        if self.resize is not None and tuple(img.shape[-2:]) != (self.resize, self.resize):
            img = F.interpolate(img, size=(self.resize, self.resize), mode="bilinear",
                                align_corners=False)
        img = (img + 1.0) * 0.5
        return (img - self.mean.to(img.dtype)) / self.std.to(img.dtype)

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """VGG19 activations at the five taps for ``img`` in ``[-1, 1]``."""
        h = self._prepare(img)
        out = []
        for idx, layer in enumerate(self.vgg):
            h = layer(h)
            if idx in VGG19_TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.features(x)
        with torch.no_grad():
            fy = self.features(y.detach())
        loss = x.new_zeros((), dtype=torch.float32)
        for w, a, b in zip(self.layer_weights, fx, fy):
            if w != 0.0:
                loss = loss + w * F.l1_loss(a.float(), b.float())
        return loss


def _warn_untrained_once() -> None:
    global _warned_untrained
    if _warned_untrained:
        return
    _warned_untrained = True
    warnings.warn(
        "perceptual loss uses an untrained (randomly initialised) VGG19: no weights_path was "
        "given; set the VGG19 weights file (e.g. vgg19-dcbb9e9d.pth) in the config for real "
        "training",
        UntrainedVGGWarning,
        stacklevel=3,
    )


def _drop_vgg_keys(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "vgg.")]:
        del state_dict[key]


def _remember_prefix(module, state_dict, prefix, local_metadata, strict, missing_keys,
                     unexpected_keys, error_msgs) -> None:
    module._load_prefix = prefix


def _forgive_missing_vgg_keys(module, incompatible_keys) -> None:
    prefix = getattr(module, "_load_prefix", "") + "vgg."
    incompatible_keys.missing_keys[:] = [
        k for k in incompatible_keys.missing_keys if not k.startswith(prefix)
    ]
