"""Adversarial losses for the multi-scale PatchGAN discriminator (L_gan, L_fm).

The discriminator contract (``docs/design.md``): ``D(img)`` returns a list over scales, each a
list of feature maps whose last entry is the patch logits map. Every function here also accepts
a bare tensor (one scale, logits only) or a list whose items are tensors (one logits map per
scale) wherever only logits are needed.

All reductions are done in float32, so the losses are safe under ``torch.autocast`` (fp16/bf16
discriminator outputs are upcast before the hinge and the means).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
# list over scales of (list of feature maps, last = logits); or simplified forms, see module doc.
DOutputs = Union[Tensor, Sequence[Union[Tensor, Sequence[Tensor]]]]

__all__ = ["discriminator_hinge_loss", "generator_hinge_loss", "feature_matching_loss"]


def _scales(outputs: DOutputs) -> list[list[Tensor]]:
    """Normalise discriminator outputs to ``[[feat_0, ..., logits], ...]`` (one list per scale)."""
    if isinstance(outputs, Tensor):
        return [[outputs]]
    scales = []
    for scale in outputs:
        if isinstance(scale, Tensor):
            scales.append([scale])
        else:
            feats = list(scale)
            if not feats:
                raise ValueError("discriminator output for a scale is an empty list")
            scales.append(feats)
    if not scales:
        raise ValueError("discriminator output is an empty list")
    return scales


def _logits(outputs: DOutputs) -> list[Tensor]:
    return [scale[-1].float() for scale in _scales(outputs)]


def discriminator_hinge_loss(real_outputs: DOutputs, fake_outputs: DOutputs) -> Tensor:
    """Hinge loss of the discriminator, the D side of **L_gan**.

    ``L_D = mean_s [ mean(relu(1 - D_s(real))) + mean(relu(1 + D_s(fake))) ]``

    where ``D_s`` are the patch logits of scale ``s`` (shape ``(B, 1, h_s, w_s)``, any shape
    works), the inner means are over all batch items and patches, the outer mean over scales.

    Args:
        real_outputs: ``D(real)``: list over scales of lists of feature maps (last = logits).
        fake_outputs: ``D(fake.detach())``: same structure.

    Returns:
        Scalar float32 tensor. Real logits >= 1 and fake logits <= -1 give 0; all-zero logits
        give 2.
    """
    real = _logits(real_outputs)
    fake = _logits(fake_outputs)
    if len(real) != len(fake):
        raise ValueError(f"real and fake outputs have {len(real)} and {len(fake)} scales")
    losses = [F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real, fake)]
    return torch.stack(losses).mean()


def generator_hinge_loss(fake_outputs: DOutputs) -> Tensor:
    """Adversarial loss of the generator under the hinge GAN, the G side of **L_gan**.

    ``L_G = mean_s [ -mean(D_s(fake)) ]`` (SPADE / pix2pixHD hinge form; the generator raises
    the fake logits without a margin).

    Args:
        fake_outputs: ``D(fake)`` (not detached): list over scales of lists of feature maps.

    Returns:
        Scalar float32 tensor.
    """
    losses = [-f.mean() for f in _logits(fake_outputs)]
    return torch.stack(losses).mean()


def feature_matching_loss(real_outputs: DOutputs, fake_outputs: DOutputs) -> Tensor:
    """Discriminator feature-matching loss **L_fm** (pix2pixHD / SPADE "GAN feature loss").

    ``L_fm = mean_s sum_{l < L_s} mean|D_s^l(fake) - sg(D_s^l(real))|``

    i.e. the L1 distance between the discriminator's intermediate feature maps of the fake and
    the real image, summed over all intermediate layers ``l`` (every map but the last, the
    logits) and averaged over scales ``s``. The real branch is detached (``sg``), so no gradient
    reaches the real image or, through this term, the discriminator's real pass. This is the
    form of SPADE and of the authors' early code (``lambda_feat / num_D`` times the per-layer
    sum); pix2pixHD additionally multiplies by ``4 / (n_layers + 1)``, which a caller can fold
    into its weight. The weight (early code: 10) is applied by the caller.

    Args:
        real_outputs: ``D(real)``: list over scales of lists of feature maps ``(B, C_l, h, w)``.
        fake_outputs: ``D(fake)``: same structure, not detached.

    Returns:
        Scalar float32 tensor; 0 for identical features. A discriminator that returns only
        logits (no intermediate layers) gives 0.
    """
    real = _scales(real_outputs)
    fake = _scales(fake_outputs)
    if len(real) != len(fake):
        raise ValueError(f"real and fake outputs have {len(real)} and {len(fake)} scales")
    per_scale = []
    for r_feats, f_feats in zip(real, fake):
        if len(r_feats) != len(f_feats):
            raise ValueError(
                f"real and fake outputs have {len(r_feats)} and {len(f_feats)} layers at one scale"
            )
        terms = [
            F.l1_loss(f.float(), r.detach().float())
            for r, f in zip(r_feats[:-1], f_feats[:-1])
        ]
        if terms:
            per_scale.append(torch.stack(terms).sum())
        else:
            per_scale.append(f_feats[-1].float().sum() * 0.0)
    return torch.stack(per_scale).mean()
