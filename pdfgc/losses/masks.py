"""Region losses and region pasting: mouth-masked L1 (**L_mouth**) and the eye-strip paste.

Boxes are ``(top, bottom, left, right)`` in fractions of the image side (rows top..bottom,
columns left..right), so they hold for every resolution of the same crop.

Where the boxes come from: the official alignment maps the eye centres to (87, 59), (137, 59)
and the inner-mouth centre to (112, 120) in a 224 px image; the official crop then keeps rows
0-191 and columns 16-207 and resizes to 224 (x 7/6). After the crop the mouth centre lands at
(x, y) = (112, 140) px = (0.50, 0.625) of the side, the eye centres at (0.37, 0.31) and
(0.63, 0.31), i.e. an inter-ocular distance of ~0.26 of the side.

- ``MOUTH_BOX = (0.53, 0.78, 0.30, 0.70)``: 0.09 above and 0.155 below the mouth centre
  (the jaw opens downward), 0.4 wide (~1.5 inter-ocular distances: lip corners with margin for
  pose and wide mouth shapes).
- ``EYE_STRIP = (0.20, 0.42, 0.12, 0.88)``: a horizontal strip 0.11 around the eye line covering
  both eyes, lids and brows' lower edge, for the stage-2 eye triplets (anchor = negative with the
  positive's strip pasted in).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["MOUTH_BOX", "EYE_STRIP", "box_to_pixels", "box_mask", "mouth_region_l1",
           "paste_strip"]

MOUTH_BOX = (0.53, 0.78, 0.30, 0.70)
EYE_STRIP = (0.20, 0.42, 0.12, 0.88)


def box_to_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` fractions -> integer pixel bounds (bottom/right exclusive)."""
    if len(box) != 4:
        raise ValueError(f"box must be (top, bottom, left, right) fractions, got {box}")
    top, bottom, left, right = (float(v) for v in box)
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise ValueError(f"box {box} is not (top < bottom, left < right) within [0, 1]")
    t, b = int(round(top * height)), int(round(bottom * height))
    l, r = int(round(left * width)), int(round(right * width))
    return t, max(b, t + 1), l, max(r, l + 1)


def box_mask(box: Sequence[float], height: int, width: int, device=None,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Binary mask ``(1, 1, H, W)`` that is 1 inside ``box``."""
    t, b, l, r = box_to_pixels(box, height, width)
    mask = torch.zeros(1, 1, height, width, device=device, dtype=dtype)
    mask[..., t:b, l:r] = 1.0
    return mask


def mouth_region_l1(
    generated: torch.Tensor,
    target: torch.Tensor,
    mouth_box: Optional[Sequence[float]] = MOUTH_BOX,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mouth-region L1 **L_mouth** (authors' early generator fine-tune, stage 3 in ours).

    ``L_mouth = sum |G - I| * m / (C * sum m)``: the mean absolute difference over the pixels
    inside the mouth region, per channel, averaged over the batch. The region is ``mask`` if
    given, else ``mouth_box``. The target is detached.

    Args:
        generated: ``(B, C, H, W)``.
        target: ``(B, C, H, W)`` ground truth.
        mouth_box: ``(top, bottom, left, right)`` fractions of the side; default
            :data:`MOUTH_BOX` (module docstring).
        mask: optional soft/binary mask ``(H, W)``, ``(1|B, 1, H, W)``; values in ``[0, 1]``.

    Returns:
        Scalar float32 tensor; differences outside the region do not count.
    """
    if generated.shape != target.shape or generated.dim() != 4:
        raise ValueError(
            f"generated and target must both be (B, C, H, W); got {tuple(generated.shape)} and "
            f"{tuple(target.shape)}"
        )
    diff = (generated.float() - target.detach().float()).abs()
    B, C, H, W = diff.shape
    if mask is None:
        if mouth_box is None:
            raise ValueError("give mouth_box or mask")
        t, b, l, r = box_to_pixels(mouth_box, H, W)
        return diff[..., t:b, l:r].mean()
    m = mask.float().to(diff.device)
    if m.dim() == 2:
        m = m[None, None]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[-2:] != (H, W):
        raise ValueError(f"mask must be (H, W) or (B|1, 1, H, W) with H, W = {H}, {W}; "
                         f"got {tuple(mask.shape)}")
    m = m.expand(B, 1, H, W)
    return (diff * m).sum() / (C * m.sum()).clamp_min(1e-8)


def paste_strip(
    base: torch.Tensor,
    donor: torch.Tensor,
    box: Sequence[float] = EYE_STRIP,
    feather: int = 0,
) -> torch.Tensor:
    """Return ``base`` with ``donor``'s ``box`` region pasted in (eye-triplet anchor).

    Args:
        base: ``(C, H, W)`` or ``(B, C, H, W)``: the negative image.
        donor: same shape: the positive image whose strip is pasted.
        box: ``(top, bottom, left, right)`` fractions; default :data:`EYE_STRIP`.
        feather: width in pixels of a linear blend ramp inside the box edge (0 = hard paste).

    Returns:
        A new tensor; inputs are not modified.
    """
    if base.shape != donor.shape or base.dim() not in (3, 4):
        raise ValueError(
            f"base and donor must both be (C, H, W) or (B, C, H, W); got {tuple(base.shape)} "
            f"and {tuple(donor.shape)}"
        )
    H, W = base.shape[-2:]
    mask = box_mask(box, H, W, device=base.device, dtype=torch.float32)
    if feather > 0:
        # Linear ramp that stays inside the box: min(distance to the box edge, feather) / feather.
        t, b, l, r = box_to_pixels(box, H, W)
        rows = torch.arange(H, device=base.device, dtype=torch.float32)
        cols = torch.arange(W, device=base.device, dtype=torch.float32)
        dr = torch.minimum(rows - t + 1, b - rows).clamp(0, feather) / feather
        dc = torch.minimum(cols - l + 1, r - cols).clamp(0, feather) / feather
        mask = (dr[:, None] * dc[None, :])[None, None] * mask
    if base.dim() == 3:
        mask = mask[0]
    out = base * (1 - mask.to(base.dtype)) + donor * mask.to(base.dtype)
    return out
