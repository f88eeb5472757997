"""Landmark heatmaps: the targets and the loss of E_mot's FAN pre-training (stage 0, landmarks).

E_mot's backbone is FAN, a landmark network: its ``l0`` layer outputs one heatmap per landmark.
As in FAN's own training, the target of landmark p is a Gaussian centred on its position; the
loss is the mean squared error over the maps. Points are pixel (x, y) of the network input
(pixel centres at +0.5, as OpenCV and :func:`pdfgc.synthtalk.render.project`); a NaN point (no
face, no iris found) contributes nothing.
"""

from __future__ import annotations

import torch

__all__ = ["landmark_heatmaps", "heatmap_loss", "heatmap_peaks", "motion_offsets", "NUM_OFFSETS",
           "expression_offsets", "NUM_EXPRESSION_OFFSETS"]


def _cell_centres(map_size: int, image_size: int, device, dtype) -> torch.Tensor:
    """Pixel position of each heatmap cell's centre, ``(map_size,)``."""
    stride = image_size / map_size
    return (torch.arange(map_size, device=device, dtype=dtype) + 0.5) * stride


def landmark_heatmaps(points: torch.Tensor, map_size: int, image_size: int, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian target maps.

    Args:
        points: ``(B, P, 2)`` pixel (x, y) in an ``image_size`` image; NaN rows allowed.
        map_size: side of the heatmaps (S/4 for FAN).
        sigma: the Gaussian's standard deviation in heatmap cells.
    Returns:
        ``(B, P, map_size, map_size)`` in [0, 1], peak 1 at the point; all zero for NaN points.
    """
    points = points.float()
    g = _cell_centres(map_size, image_size, points.device, points.dtype)
    stride = image_size / map_size
    dx = (g.view(1, 1, -1) - points[..., 0:1]) / stride  # (B, P, W)
    dy = (g.view(1, 1, -1) - points[..., 1:2]) / stride  # (B, P, H)
    maps = torch.exp(-(dy.unsqueeze(-1) ** 2 + dx.unsqueeze(-2) ** 2) / (2.0 * sigma ** 2))
    return torch.nan_to_num(maps, nan=0.0)


def heatmap_loss(heatmaps: torch.Tensor, points: torch.Tensor, image_size: int, sigma: float = 1.0) -> torch.Tensor:
    """Mean squared error between predicted maps and Gaussian targets over the valid points.

    Args:
        heatmaps: ``(B, P, h, h)`` raw ``l0`` output.
        points: ``(B, Q, 2)`` pixel (x, y) with Q >= P; only the first P are used (a 68-point
            network learns from 70-point data by ignoring the iris centres). NaN = no target.
    Returns:
        scalar: the mean over valid (sample, point) maps of the per-map mean squared error.
    """
    b, p, h, w = heatmaps.shape
    if points.shape[1] < p:
        raise ValueError(f"heatmap_loss: {p} heatmaps but only {points.shape[1]} points per sample")
    points = points[:, :p]
    valid = torch.isfinite(points).all(-1)  # (B, P)
    target = landmark_heatmaps(points, h, image_size, sigma).to(heatmaps.dtype)
    per_map = ((heatmaps - target) ** 2).mean(dim=(-1, -2))
    weight = valid.to(per_map.dtype)
    return (per_map * weight).sum() / weight.sum().clamp(min=1.0)


def heatmap_peaks(heatmaps: torch.Tensor, image_size: int, radius: int = 2) -> torch.Tensor:
    """Landmark positions read from maps: ``(B, P, h, h) -> (B, P, 2)`` pixel (x, y).

    The arg-max cell, refined by the mean of the cell centres within ``radius`` cells weighted
    by the (non-negative part of the) map there: sub-cell positions, robust to far-away noise.
    Within ~1 cell of the border the window is cut and the reading is pulled inward.
    """
    b, p, h, w = heatmaps.shape
    maps = heatmaps.float().clamp(min=0).flatten(0, 1)  # (BP, h, w)
    flat = maps.flatten(1).argmax(1)
    row, col = flat // w, flat % w
    offsets = torch.arange(-radius, radius + 1, device=maps.device)
    rows, cols = row[:, None] + offsets, col[:, None] + offsets  # (BP, k)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    window = maps[torch.arange(len(maps), device=maps.device)[:, None, None],
                  rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]] * inside
    weight = window / window.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
    stride = image_size / h
    y = ((rows.float() + 0.5) * stride)[:, :, None].mul(weight).sum(dim=(1, 2))
    x = ((cols.float() + 0.5) * stride)[:, None, :].mul(weight).sum(dim=(1, 2))
    return torch.stack([x, y], dim=-1).view(b, p, 2)


#: landmark differences of :func:`motion_offsets`
NUM_OFFSETS = 8


def motion_offsets(points: torch.Tensor) -> torch.Tensor:
    """The small landmark differences that carry eye and mouth motion, ``(B, P>=68, 2) -> (B, 8)``:
    each iris from its eye's mean point (x, y; NaN without iris points), each eye's lid gap, the
    inner-lip gap and the mouth width. A pose change moves every point alike; these barely move."""
    def mean(a, b):
        return points[:, a:b].mean(1)

    b = len(points)
    nan = torch.full((b, 2), float("nan"), dtype=points.dtype, device=points.device)
    iris_a = points[:, 68] - mean(36, 42) if points.shape[1] > 68 else nan
    iris_b = points[:, 69] - mean(42, 48) if points.shape[1] > 69 else nan
    lids_a = points[:, [40, 41], 1].mean(1) - points[:, [37, 38], 1].mean(1)
    lids_b = points[:, [46, 47], 1].mean(1) - points[:, [43, 44], 1].mean(1)
    lips = points[:, 66, 1] - points[:, 62, 1]
    width = points[:, 54, 0] - points[:, 48, 0]
    return torch.cat([iris_a, iris_b, torch.stack([lids_a, lids_b, lips, width], 1)], 1)


#: landmark differences of :func:`expression_offsets`
NUM_EXPRESSION_OFFSETS = 9


def expression_offsets(points: torch.Tensor) -> torch.Tensor:
    """The landmark differences that carry expression, ``(B, P>=68, 2) -> (B, 9)`` (iBUG 68 order):
    each brow's inner (21, 22) and outer (17, 26) end against its eye's upper lid, the gap
    between the inner brow ends, each mouth corner (48, 54) against the lips' centre line, and
    each lower lid against its eye's corners. Like :func:`motion_offsets`, a head translation
    moves none of them; these are what emotion moves (brows raised or knit, corners up or down,
    lower lids tensed) against the face's own features."""
    def mean_y(*idx):
        return points[:, list(idx), 1].mean(1)

    y, x = points[..., 1], points[..., 0]
    lid_a, lid_b = mean_y(37, 38), mean_y(43, 44)
    lips = mean_y(51, 57)  # outer lips' midpoints: speech opens them about this line
    return torch.stack([
        y[:, 21] - lid_a, y[:, 22] - lid_b, y[:, 17] - lid_a, y[:, 26] - lid_b,
        x[:, 22] - x[:, 21],
        y[:, 48] - lips, y[:, 54] - lips,
        mean_y(40, 41) - mean_y(36, 39), mean_y(46, 47) - mean_y(42, 45),
    ], 1)
