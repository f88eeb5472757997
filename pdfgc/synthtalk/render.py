"""Procedural, anti-aliased renderer of SynthTalk faces (numpy, vectorised over frames).

The head is an ellipsoid (half-axes A = 1, B, C in head units) rotated by the pose and
projected orthographically: every pixel inside the silhouette is ray-cast onto the front
surface, which gives its head-frame coordinates (u, v, w) (x right, y down, z out of the face)
and its normal. Skin, hair, ears, brows, eyes and mouth are painted as 2-D shapes in (u, v)
*on the surface*, so turning the head foreshortens them, slides them toward the turned side and
hides the far side of the face, the way a real head does; the nose tip sticks out of the
surface and moves more than the surface (parallax). Lambert shading from the speaker's light
completes the pseudo-3-D look.

Anti-aliasing: every shape is an implicit function d (< 0 inside); its coverage of a pixel is
``clip(0.5 - d / |grad d|, 0, 1)`` with the gradient taken in screen space by finite
differences (the ``fwidth`` trick of shaders), so edges are smooth at any size and under any
foreshortening.

Frames are *aligned frames* (before the official crop, as stored on disk): with a frontal
neutral pose the eyes and mouth sit on the PC-AVS template (see ``identity``).
"""

from __future__ import annotations

import numpy as np

from . import identity as idm
from .identity import Identity
from .motion import effect

EYEBALL_RADIUS = 0.24  # head units: gaze angle g moves the iris by EYEBALL_RADIUS * sin(g)
MOUTH_MAX_GAP = 0.3  # head units: lip gap at opening 1 (40 % above, 60 % below the lip line), ~6 px at 64 px
MOUTH_WIDTH_GAIN = 0.3  # relative change of the mouth half-width per unit of width


# --- small helpers ----------------------------------------------------------------------


def _aa(d: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the region ``d < 0`` (B, H, W) -> (B, H, W) in [0, 1]."""
    gx = np.empty_like(d)
    gy = np.empty_like(d)
    np.subtract(d[..., 2:], d[..., :-2], out=gx[..., 1:-1])
    gx[..., 1:-1] *= 0.5
    gx[..., 0] = d[..., 1] - d[..., 0]
    gx[..., -1] = d[..., -1] - d[..., -2]
    np.subtract(d[..., 2:, :], d[..., :-2, :], out=gy[..., 1:-1, :])
    gy[..., 1:-1, :] *= 0.5
    gy[..., 0, :] = d[..., 1, :] - d[..., 0, :]
    gy[..., -1, :] = d[..., -1, :] - d[..., -2, :]
    g = np.sqrt(gx * gx + gy * gy)
    np.maximum(g, 1e-6, out=g)
    out = np.divide(d, g, out=g)
    np.subtract(0.5, out, out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def _over(img: np.ndarray, alpha: np.ndarray, color) -> None:
    """In place: ``img = img + alpha * (color - img)``; img (B,H,W,3), alpha (B,H,W).

    Only the bounding box of ``alpha > 0`` (over the batch) is touched: most shapes cover a
    small part of their window, and the 3-channel blend is the renderer's costliest step.
    """
    nz = alpha > 0
    rows = np.nonzero(nz.any(axis=(0, 2)))[0]
    if len(rows) == 0:
        return
    cols = np.nonzero(nz.any(axis=(0, 1)))[0]
    sl = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    color = np.asarray(color, np.float32)
    if color.ndim == 4:  # per-pixel colour, possibly broadcast along some axes
        color = color[tuple(k if n > 1 else slice(None) for k, n in zip(sl, color.shape))]
    im = img[sl]
    im += alpha[sl][..., None] * (color - im)


def _seg(x, y, ax, ay, bx, by):
    """Distance to segment a-b and the position h in [0, 1] of the nearest point."""
    pax, pay = x - ax, y - ay
    bax, bay = bx - ax, by - ay
    h = np.clip((pax * bax + pay * bay) / (bax * bax + bay * bay + 1e-12), 0.0, 1.0)
    return np.hypot(pax - bax * h, pay - bay * h), h


def _float32(*arrays) -> list[np.ndarray]:
    """The factor arrays as float32 numpy arrays."""
    return [np.asarray(a, np.float32) for a in arrays]


def _col(x) -> np.ndarray:
    """(B,) -> (B, 1, 1) float32 for broadcasting against (B, H, W)."""
    return np.asarray(x, np.float32).reshape(-1, 1, 1)


def rotation(pose: np.ndarray) -> np.ndarray:
    """Head-to-camera rotations ``(B, 3, 3)`` = Rz(roll) Ry(yaw) Rx(pitch) from pose ``(B, 6)``."""
    pose = np.asarray(pose, np.float64)
    yaw, pitch, roll = pose[:, 0], pose[:, 1], pose[:, 2]
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    # x' = x cos(yaw) + z sin(yaw): the nose (0, 0, 1) goes to +x for yaw > 0 (see motion.py).
    return (rz @ ry @ rx).astype(np.float64)


def placement(ident: Identity, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: head scale ``s`` (sides per head unit) and centre ``(cx, cy)`` in sides."""
    pose = np.asarray(pose, np.float64)
    s = ident.unit * np.exp(pose[:, 5])
    return s, ident.center[0] + pose[:, 3], ident.center[1] + pose[:, 4]


def surface_w(ident: Identity, u, v) -> np.ndarray:
    """Depth w of the ellipsoid's front surface at head coordinates (u, v)."""
    r = 1.0 - np.square(u) - np.square(np.asarray(v) / ident.head_b)
    return ident.head_c * np.sqrt(np.maximum(r, 0.0))


def project(ident: Identity, pose: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """Pixel coordinates ``(B, P, 2)`` (x, y; pixel centres at +0.5) of head points ``(B or 1, P, 3)``."""
    R = rotation(pose)
    s, cx, cy = placement(ident, pose)
    cam = np.einsum("bij,bpj->bpi", R, np.broadcast_to(points, (len(R),) + points.shape[-2:]))
    x = (cx[:, None] + s[:, None] * cam[..., 0]) * size
    y = (cy[:, None] + s[:, None] * cam[..., 1]) * size
    return np.stack([x, y], -1)


def compose_mouth(mouth: np.ndarray, effects: np.ndarray) -> np.ndarray:
    """Drawn mouth ``(B, 2)`` = (opening, width) from speech ``(B, 2)`` and emotion effects.

    Emotion and speech interact: ``open_gain`` scales the speech opening (pressed lips),
    ``mouth_open`` adds a jaw drop, ``mouth_width`` adds to the width (happy spreads).
    """
    mouth = np.asarray(mouth, np.float32)
    op = mouth[:, 0] * (1.0 + effect(effects, "open_gain")) + effect(effects, "mouth_open")
    wd = mouth[:, 1] + effect(effects, "mouth_width")
    return np.stack([np.clip(op, 0.0, 1.3), np.clip(wd, -1.6, 2.0)], -1).astype(np.float32)


# --- feature boxes ----------------------------------------------------------------------


def eye_boxes(ident: Identity, pose: np.ndarray, size: int, margin: float = 0.04) -> np.ndarray:
    """Boxes ``(B, 2, 4)`` (x0, y0, x1, y1 in pixels of the aligned frame) of eye 0 and eye 1.

    Each box holds the widest possible opening (surprise) plus ``margin`` head units, lashes
    included; it does not depend on gaze, blink or emotion.
    """
    out = []
    ht = ident.eye_top * 1.6 + 0.06 + margin  # widest: surprise plus the lid following an upward gaze
    for sgn in (-1.0, 1.0):
        ex = sgn * ident.eye_x
        uu = np.array([ex - ident.eye_w - margin, ex + ident.eye_w + margin, ex, ex, ex - ident.eye_w, ex + ident.eye_w])
        vv = np.array([0, 0, -ht, ident.eye_bottom + margin, -ht * 0.6, -ht * 0.6]) + ident.eye_y
        pts = np.stack([uu, vv, surface_w(ident, uu, vv)], -1)[None]
        px = project(ident, pose, pts, size)
        out.append(np.concatenate([px.min(1), px.max(1)], -1))
    return np.stack(out, 1).astype(np.float32)


def mouth_box(ident: Identity, pose: np.ndarray, size: int) -> np.ndarray:
    """Box ``(B, 4)`` in pixels holding the mouth at any opening, width and emotion."""
    w = ident.mouth_w * (1.0 + MOUTH_WIDTH_GAIN * 2.0) + 0.04
    uu = np.array([-w, w, 0.0, 0.0, -w, w])
    vv = ident.mouth_y + np.array([0.0, 0.0, -0.3, 0.45, 0.4, 0.4])
    pts = np.stack([uu, vv, surface_w(ident, uu, vv)], -1)[None]
    px = project(ident, pose, pts, size)
    return np.concatenate([px.min(1), px.max(1)], -1).astype(np.float32)


# --- the renderer -----------------------------------------------------------------------


def background(ident: Identity, size: int) -> np.ndarray:
    """Static background ``(H, W, 3)`` float32: vertical gradient and a soft light blob."""
    y = ((np.arange(size, dtype=np.float32) + 0.5) / size)[:, None, None]
    x = ((np.arange(size, dtype=np.float32) + 0.5) / size)[None, :, None]
    img = ident.bg_top * (1 - y) + ident.bg_bottom * y
    d2 = (x - ident.bg_blob_pos[0]) ** 2 + (y - ident.bg_blob_pos[1]) ** 2
    img = img + 0.6 * np.exp(-d2 / ident.bg_blob_radius ** 2) * (ident.bg_blob - img)
    return img.astype(np.float32)


def _silhouette(qx, qy, R, offset, radii):
    """Implicit function (< 0 inside) of the projected silhouette of an ellipsoid given in head
    coordinates (centre ``offset``, half-axes ``radii``), and the head-frame point of the ray at
    camera depth 0 (used for masks)."""
    D = 1.0 / np.square(np.asarray(radii, np.float32))
    p0 = [(_col(R[:, 0, k]) * qx + _col(R[:, 1, k]) * qy) - offset[k] for k in range(3)]
    r = [_col(R[:, 2, k]) for k in range(3)]
    a = sum(r[k] * r[k] * D[k] for k in range(3))
    b = sum(p0[k] * r[k] * D[k] for k in range(3))
    c = sum(p0[k] * p0[k] * D[k] for k in range(3))
    g = np.sqrt(np.maximum(c - b * b / a, 0.0)) - 1.0
    return g, p0, r, a, b, c - 1.0


def _window(ident: Identity, pose: np.ndarray, size: int, urange, vrange, margin: float = 3.0):
    """Pixel window (y0, y1, x0, x1) holding the surface rectangle urange x vrange for every
    frame of the batch (a 5x5 grid of its points projected, plus ``margin`` pixels)."""
    uu, vv = np.meshgrid(np.linspace(*urange, 5), np.linspace(*vrange, 5))
    uu, vv = uu.ravel(), vv.ravel()
    pts = np.stack([uu, vv, surface_w(ident, uu, vv)], -1)[None]
    px = project(ident, pose, pts, size).reshape(-1, 2)
    x0, y0 = np.floor(px.min(0) - margin).astype(int)
    x1, y1 = np.ceil(px.max(0) + margin).astype(int)
    return max(y0, 0), min(y1, size), max(x0, 0), min(x1, size)


class _Surface:
    """Head-surface arrays restricted to a window, with views of the albedo to paint into."""

    def __init__(self, u, v, w, qx, qy, alb):
        self.u, self.v, self.w, self.qx, self.qy, self.alb = u, v, w, qx, qy, alb

    def sub(self, win, origin):
        y0, y1, x0, x1 = win
        oy, ox = origin
        sl = (slice(None), slice(max(y0 - oy, 0), max(y1 - oy, 0)), slice(max(x0 - ox, 0), max(x1 - ox, 0)))
        return _Surface(self.u[sl], self.v[sl], self.w[sl], self.qx[sl], self.qy[sl], self.alb[sl])

    @property
    def empty(self) -> bool:
        return self.u.shape[1] < 3 or self.u.shape[2] < 3


def render(ident: Identity, pose: np.ndarray, gaze: np.ndarray, blink: np.ndarray,
           mouth: np.ndarray, effects: np.ndarray, size: int) -> np.ndarray:
    """Render frames ``(B, size, size, 3)`` uint8.

    Args:
        ident: the speaker.
        pose: ``(B, 6)`` pose labels (motion.py conventions).
        gaze: ``(B, 4)`` radians; blink: ``(B, 2)`` closure in [0, 1].
        mouth: ``(B, 2)`` *drawn* (opening, width), i.e. after ``compose_mouth``.
        effects: ``(B, E)`` emotion effects (``motion.emotion_effects``).
        size: side of the aligned frame in pixels.

    Work is confined to windows (the head's box, then one box per facial feature), since the
    per-pixel cost dominates.
    """
    pose, gaze, blink, mouth, effects = _float32(pose, gaze, blink, mouth, effects)
    B = len(pose)
    f32 = np.float32
    R = rotation(pose)
    s, cx, cy = placement(ident, pose)
    grid = (np.arange(size, dtype=f32) + 0.5) / size
    Bh, Ch = ident.head_b, ident.head_c
    ex = lambda name: _col(effect(effects, name))  # noqa: E731

    img = np.broadcast_to(background(ident, size), (B, size, size, 3)).copy()

    # Behind the head, full frame: long hair mass, neck, clothes.
    qx_full = ((grid[None, None, :] - _col(cx)) / _col(s)).astype(f32)
    qy_full = ((grid[None, :, None] - _col(cy)) / _col(s)).astype(f32)
    if ident.hair_long:
        g, p0, *_ = _silhouette(qx_full, qy_full, R, (0.0, 0.55, -0.2), (1.25, Bh * 1.3, Ch * 1.1))
        _over(img, _aa(np.maximum(g, -0.3 - p0[1])), ident.hair * 0.8)
    neck_top = project(ident, pose, np.array([[[0.0, 0.75 * Bh, -0.25 * Ch]]]), size)[:, 0] / size
    nx, ny = _col(neck_top[:, 0]), _col(neck_top[:, 1])
    X = grid[None, None, :]
    Y = grid[None, :, None]
    hw = f32(0.5 * ident.unit)
    d_neck = np.maximum(np.abs(X - nx) - hw, ny - Y)
    neck_shade = 0.62 + 0.25 * np.clip(1.0 - ((X - nx) / hw) ** 2, 0, 1)
    _over(img, _aa(d_neck), ident.skin * neck_shade[..., None])
    ccx = _col(ident.center[0] + 0.5 * pose[:, 3])
    ccy = f32(ident.center[1] + (Bh + 0.95) * ident.unit)
    d_ell = np.sqrt(((X - ccx) / (2.0 * ident.unit)) ** 2 + ((Y - ccy) / (0.75 * ident.unit)) ** 2) - 1.0
    d_notch = (ccy - 0.2 * ident.unit - 1.3 * np.abs(X - ccx)) - Y
    _over(img, _aa(np.maximum(d_ell, d_notch)), ident.clothes)

    # The head's window: a circle bounding the head and its hair shell.
    rad = max(1.07, Bh * 1.03, Ch * 1.07) + 0.1
    hy0 = max(int(np.floor((np.min(cy - rad * s)) * size)) - 2, 0)
    hy1 = min(int(np.ceil((np.max(cy + rad * s)) * size)) + 2, size)
    hx0 = max(int(np.floor((np.min(cx - rad * s)) * size)) - 2, 0)
    hx1 = min(int(np.ceil((np.max(cx + rad * s)) * size)) + 2, size)
    origin = (hy0, hx0)
    qx = qx_full[:, :, hx0:hx1]
    qy = qy_full[:, hy0:hy1, :]
    qx, qy = (a.astype(f32) for a in np.broadcast_arrays(qx, qy))
    win_img = img[:, hy0:hy1, hx0:hx1]  # a view: painting it paints img

    # Hair volume around the top of the head (drawn behind the head).
    g, p0, *_ = _silhouette(qx, qy, R, (0.0, -0.06, -0.04), (1.07, Bh * 1.03, Ch * 1.07))
    _over(win_img, _aa(np.maximum(g, p0[1] - 0.25)), ident.hair * 0.85)

    # Ray-cast the head.
    g, p0, r, a, b, c = _silhouette(qx, qy, R, (0.0, 0.0, 0.0), (1.0, Bh, Ch))
    t = (-b + np.sqrt(np.maximum(b * b - a * c, 0.0))) / a
    u, v, w = (p0[k] + t * r[k] for k in range(3))
    jaw = np.sqrt(np.maximum(1.0 - (v / Bh) ** 2, 0.0)) * (
        1.0 - ident.jaw_taper * np.clip((v - ident.jaw_start) / (Bh - ident.jaw_start), 0, 1) ** 1.5)
    head_alpha = _aa(g) * _aa(np.abs(u) - jaw - 0.002)
    # Lambert shading with the light expressed in head coordinates.
    nrm = [u, v / Bh ** 2, w / Ch ** 2]
    inv = 1.0 / np.sqrt(nrm[0] ** 2 + nrm[1] ** 2 + nrm[2] ** 2 + 1e-9)
    Lh = np.einsum("bji,j->bi", R, ident.light.astype(np.float64))  # R^T L
    ndl = (nrm[0] * _col(Lh[:, 0]) + nrm[1] * _col(Lh[:, 1]) + nrm[2] * _col(Lh[:, 2])) * inv
    shade = 0.55 + 0.5 * np.clip(ndl, 0.0, 1.0)

    alb = np.broadcast_to(ident.skin, u.shape + (3,)).copy()
    skin = ident.skin
    head = _Surface(u, v, w, qx, qy, alb)
    win = lambda ur, vr: head.sub(_window(ident, pose, size, ur, vr), origin)  # noqa: E731

    # Forehead lines and the brow furrow (under the hair, which may cover them).
    top = ident.eye_y - ident.brow_gap
    F = win((-0.35, 0.35), (top - 0.45, ident.eye_y - 0.08))
    if not F.empty:
        for k in range(3):
            vl = top - 0.16 - 0.08 * k + 0.03 * F.u * F.u
            d = np.maximum(np.abs(F.v - vl) - 0.012, np.abs(F.u) - 0.3)
            _over(F.alb, _aa(d) * np.clip(ex("forehead") * 0.5, 0, 1), skin * 0.72)
        for sgn in (-1.0, 1.0):
            d, _ = _seg(F.u, F.v, sgn * 0.045, top - 0.02, sgn * 0.035, ident.eye_y - 0.12)
            _over(F.alb, _aa(d - 0.012) * np.clip(ex("furrow") * 0.55, 0, 1), skin * 0.7)

    # Hair on the head: front hairline (with an optional wavy fringe) and sides/back.
    hl = ident.hairline + ident.hairline_curve * u * u + ident.fringe * np.sin(12.0 * u + ident.fringe_phase)
    v_low = 1.6 if ident.hair_long else 0.35
    d_hair = np.minimum(v - hl, np.maximum(w - ident.hair_side * Ch, v - v_low))
    strands = 0.95 + 0.05 * np.sin(40.0 * u + 6.0 * np.sin(4.0 * v))
    _over(alb, _aa(d_hair), ident.hair * strands[..., None])

    # Ears (a ball around a side point of the surface), when the hair leaves them visible.
    if ident.ears_visible:
        for sgn in (-1.0, 1.0):
            ue, ve = sgn * 0.965, ident.eye_y + 0.28
            we = float(surface_w(ident, ue, ve)) - 0.05
            E = win((-1.0, ue + 0.2) if sgn < 0 else (ue - 0.2, 1.0), (ve - 0.3, ve + 0.3))
            if E.empty:
                continue
            d = np.sqrt(((E.u - ue) / 0.12) ** 2 + ((E.v - ve) / 0.25) ** 2 + ((E.w - we) / 0.22) ** 2)
            _over(E.alb, _aa(d - 1.0), skin * 0.9)
            _over(E.alb, _aa(d - 0.55) * 0.5, skin * 0.75)

    # Brows: two-segment thick polylines (inner, arch, outer), tapering outward.
    for sgn in (-1.0, 1.0):
        lo, hi = sorted((sgn * (ident.eye_x - 0.3), sgn * (ident.eye_x + 0.3)))
        S = win((lo, hi), (top - 0.28, top + 0.2))
        if S.empty:
            continue
        ix, iy = sgn * (ident.eye_x - 0.16 - ex("brow_inner_dx")), top + ex("brow_inner_dy")
        ox, oy = sgn * (ident.eye_x + 0.21), top + 0.03 + ex("brow_outer_dy")
        mx = sgn * (ident.eye_x + 0.03)
        my = top - ident.brow_arch + 0.5 * (ex("brow_inner_dy") + ex("brow_outer_dy"))
        d1, h1 = _seg(S.u, S.v, ix, iy, mx, my)
        d2, h2 = _seg(S.u, S.v, mx, my, ox, oy)
        d = np.minimum(d1 - ident.brow_thick * (1.15 - 0.2 * h1), d2 - ident.brow_thick * (0.95 - 0.45 * h2))
        _over(S.alb, _aa(d), ident.brow)

    # Eyes.
    ht_all = ident.eye_top * (1.0 + ex("eye_open"))
    hb_all = ident.eye_bottom * (1.0 - ex("lower_lid"))
    for k, sgn in ((0, -1.0), (1, 1.0)):
        ec = sgn * ident.eye_x
        S = win((ec - ident.eye_w - 0.05, ec + ident.eye_w + 0.05),
                (ident.eye_y - 2.0 * ident.eye_top - 0.08, ident.eye_y + ident.eye_bottom + 0.05))
        if S.empty:
            continue
        ue, ve = S.u - ec, S.v - ident.eye_y
        # A full almond (exponent 2.6, not a lens) keeps the iris visible near the corners.
        prof = 1.0 - np.abs(ue / ident.eye_w) ** 2.6
        bk = _col(blink[:, k])
        gx = EYEBALL_RADIUS * np.sin(_col(gaze[:, 2 * k]))
        gy = EYEBALL_RADIUS * np.sin(_col(gaze[:, 2 * k + 1]))
        # The lids follow vertical gaze (as real lids do), so the iris stays in view.
        ht = np.maximum(ht_all - 0.6 * gy, 0.02)
        hb = np.maximum(hb_all + 0.4 * gy, 0.02)
        yup = (-ht + bk * (ht + hb + 0.012)) * prof
        ylo = hb * prof
        # -prof bounds the almond at the corners (outside them the lid curves would cross).
        a_open = _aa(np.maximum(np.maximum(yup - ve, ve - ylo), -0.05 * prof))
        # The lid crease above the eye.
        crease = -(ident.eye_top + 0.05) * np.clip(prof, 0, 1) ** 0.8
        _over(S.alb, _aa(np.maximum(np.abs(ve - crease) - 0.012, -0.05 * prof)) * 0.35, skin * 0.6)
        sclera_shade = 0.82 + 0.18 * np.clip((ve - yup) / 0.06, 0, 1)  # shadow under the upper lid
        _over(S.alb, a_open, idm.SCLERA * sclera_shade[..., None])
        di = np.hypot(ue - gx, ve - gy)
        _over(S.alb, a_open * _aa(di - ident.iris_r), ident.iris)
        _over(S.alb, a_open * _aa(di - 0.45 * ident.iris_r), idm.PUPIL)
        _over(S.alb, a_open * _aa(np.hypot(ue - gx + 0.3 * ident.iris_r, ve - gy + 0.3 * ident.iris_r)
                                  - 0.14 * ident.iris_r) * 0.8, (1.0, 1.0, 1.0))
        lash = 0.022 * (0.35 + 0.65 * np.clip(prof, 0, 1))
        _over(S.alb, _aa(np.maximum(np.abs(ve - yup) - lash, -0.05 * prof)), idm.LASH)
        _over(S.alb, _aa(np.maximum(np.abs(ve - ylo) - 0.01, -0.05 * prof)) * 0.5, skin * 0.55)

    # Nose and mouth share one window.
    mw = ident.mouth_w * (1.0 + 2.0 * MOUTH_WIDTH_GAIN) + 0.2
    S = win((-mw, mw), (ident.eye_y + 0.05, ident.mouth_y + 0.45))
    if not S.empty:
        _nose(S, ident, pose, size, s, cx, cy, ex)
        _mouth(S, ident, mouth, ex)

    _over(win_img, head_alpha, alb * shade[..., None])
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _nose(S: _Surface, ident: Identity, pose, size, s, cx, cy, ex) -> None:
    """Nostrils and wings on the surface; the ridge and the tip in screen space (parallax)."""
    skin = ident.skin
    u, v = S.u, S.v
    for sgn in (-1.0, 1.0):
        d = np.hypot((u - sgn * 0.1) / 0.07, (v - ident.nose_y + 0.03) / 0.06) - 1.0
        _over(S.alb, _aa(d) * 0.3, skin * 0.75)
        d = np.hypot((u - sgn * 0.07) / 0.04, (v - ident.nose_y) / 0.022) - 1.0
        _over(S.alb, _aa(d) * 0.85, skin * 0.3)
    tip_v = ident.nose_y - 0.06
    pts = np.array([[[0.0, ident.eye_y + 0.1, float(surface_w(ident, 0.0, ident.eye_y + 0.1)) + 0.02],
                     [0.0, tip_v, float(surface_w(ident, 0.0, tip_v)) + ident.nose_len]]])
    nose_px = project(ident, pose, pts, size) / size  # (B, 2, 2) in sides
    nq = (nose_px - np.stack([cx, cy], -1)[:, None]) / s[:, None, None]  # head units, screen axes
    d, _ = _seg(S.qx, S.qy, _col(nq[:, 0, 0]), _col(nq[:, 0, 1]), _col(nq[:, 1, 0]), _col(nq[:, 1, 1]))
    _over(S.alb, _aa(d - 0.03) * 0.35, skin * 0.7)
    d = np.hypot(S.qx - _col(nq[:, 1, 0]), S.qy - _col(nq[:, 1, 1]) - 0.035)
    _over(S.alb, _aa(d - 0.075) * 0.35, skin * 0.7)
    d = np.hypot(S.qx - _col(nq[:, 1, 0]), S.qy - _col(nq[:, 1, 1]))
    _over(S.alb, _aa(d - 0.065) * 0.45, np.minimum(skin * 1.1, 1.0))
    for k in range(2):
        d = np.maximum(np.abs(v - (ident.eye_y + 0.13 + 0.05 * k)) - 0.01, np.abs(u) - 0.07)
        _over(S.alb, _aa(d) * np.clip(ex("nose_wrinkle") * 0.6, 0, 1), skin * 0.65)


def _lip_lines(ident: Identity, sm, gap, ex):
    """The mouth's four lines at positions ``sm`` along it (-1 left corner .. 1 right corner), as
    v offsets from ``mouth_y``: upper outer, upper inner, lower inner, lower outer. ``gap`` is the
    lip gap (head units) and ``ex(name)`` an emotion effect; all broadcast together."""
    s2 = sm * sm
    pp = np.clip(1.0 - s2, 0.0, 1.0) ** 0.7
    line = s2 * (ex("corner_dy_left") * (1 - sm) * 0.5 + ex("corner_dy_right") * (1 + sm) * 0.5)
    yui = line - 0.4 * gap * pp - ex("upper_lip_raise") * pp
    yli = line + 0.6 * gap * pp
    yuo = yui - ident.lip_top * (0.3 + 0.7 * pp) + 0.015 * np.exp(-(sm / 0.12) ** 2)
    ylo = yli + ident.lip_bottom * (0.3 + 0.7 * pp)
    return yuo, yui, yli, ylo


def _mouth(S: _Surface, ident: Identity, mouth, ex) -> None:
    """Lips, interior, teeth and seam; the corners and the width carry the emotion."""
    skin = ident.skin
    u, v = S.u, S.v
    op, wd = _col(mouth[:, 0]), _col(mouth[:, 1])
    W = ident.mouth_w * (1.0 + MOUTH_WIDTH_GAIN * wd)
    um, vm = u - ex("mouth_shift"), v - ident.mouth_y
    sm = um / W
    yuo, yui, yli, ylo = _lip_lines(ident, sm, MOUTH_MAX_GAP * op, ex)
    edge = np.abs(sm) - 1.0
    # Nasolabial folds from the nose wings to beyond the mouth corners (happy, disgust).
    for sgn in (-1.0, 1.0):
        d1, _ = _seg(u, v, sgn * 0.16, ident.nose_y - 0.02, sgn * (W + 0.1), ident.mouth_y - 0.05)
        d2, _ = _seg(u, v, sgn * (W + 0.1), ident.mouth_y - 0.05, sgn * (W + 0.06), ident.mouth_y + 0.12)
        _over(S.alb, _aa(np.minimum(d1, d2) - 0.015) * np.clip(ex("nasolabial") * 0.5, 0, 1), skin * 0.7)
    _over(S.alb, _aa(np.maximum(np.maximum(yuo - vm, vm - ylo), edge * 0.1)), ident.lip)
    a_in = _aa(np.maximum(np.maximum(yui - vm, vm - yli), edge * 0.1))
    depth = np.clip((vm - yui) / (yli - yui + 1e-3), 0, 1)
    _over(S.alb, a_in, idm.MOUTH_INTERIOR * (1.0 - 0.35 * np.abs(depth - 0.5))[..., None])
    d_teeth = np.maximum(np.maximum(yui - vm, vm - (yui + np.minimum(0.05, 0.45 * (yli - yui)))), np.abs(sm) - 0.6)
    _over(S.alb, a_in * _aa(d_teeth), idm.TEETH)
    seam = np.maximum(np.abs(vm - 0.5 * (yui + yli)) - 0.011, edge * 0.1)
    _over(S.alb, _aa(seam) * 0.85, ident.lip * 0.5)


# --- landmarks ----------------------------------------------------------------------------

#: Points per face of :func:`landmarks`: the iBUG 68 plus the two iris centres (68: eye A,
#: 69: eye B). SynthTalk's counterpart of the 68-point annotations a landmark FAN learns from.
NUM_LANDMARKS = 70


def _lip_points(ident: Identity, mouth: np.ndarray, effects: np.ndarray, sm: np.ndarray):
    """Points on the mouth's lines at positions ``sm`` (P,): ``u`` and the four lines of
    :func:`_lip_lines`, each ``(B, P)``."""
    ex = lambda name: effect(effects, name)[:, None]  # noqa: E731
    W = ident.mouth_w * (1.0 + MOUTH_WIDTH_GAIN * mouth[:, 1:2])
    return (ex("mouth_shift") + sm * W, *_lip_lines(ident, sm, MOUTH_MAX_GAP * mouth[:, :1], ex))


def landmarks(ident: Identity, pose: np.ndarray, gaze: np.ndarray, blink: np.ndarray,
              mouth: np.ndarray, effects: np.ndarray, size: int) -> np.ndarray:
    """Pixel positions ``(B, 70, 2)`` (x, y in the aligned frame, as :func:`project`) of the face's
    iBUG-68 landmarks plus the two iris centres, taken from the same geometry :func:`render`
    draws (arguments as there). Eye A (points 36-41, iris 68) is the image-left eye.

    Jaw points lie on the jaw's outline on the head surface (a turned head hides part of it, as
    annotators' contours do too); lids, lips and brows follow blink, gaze, speech and emotion.
    """
    pose, gaze, blink, mouth, effects = _float32(pose, gaze, blink, mouth, effects)
    B = len(pose)
    e = lambda name: effect(effects, name)[:, None]  # noqa: E731
    u = np.zeros((B, NUM_LANDMARKS), np.float64)
    v = np.zeros_like(u)
    lift = np.zeros_like(u)  # out of the surface (nose)

    # Jaw 0-16: image left, down to the chin (8), up the image right.
    Bh = ident.head_b
    vj = np.concatenate([np.linspace(ident.eye_y + 0.12, 0.97 * Bh, 9), np.linspace(0.97 * Bh, ident.eye_y + 0.12, 9)[1:]])
    half = np.sqrt(np.maximum(1.0 - (vj / Bh) ** 2, 0.0)) * (
        1.0 - ident.jaw_taper * np.clip((vj - ident.jaw_start) / (Bh - ident.jaw_start), 0, 1) ** 1.5)
    u[:, :17] = half * np.r_[-np.ones(8), 0.0, np.ones(8)]
    v[:, :17] = vj

    # Brows 17-21 (image left, outer to inner) and 22-26 (image right, inner to outer).
    top = ident.eye_y - ident.brow_gap
    for sgn, idx in ((-1.0, [17, 18, 19, 20, 21]), (1.0, [26, 25, 24, 23, 22])):
        inner = (sgn * (ident.eye_x - 0.16 - e("brow_inner_dx")), top + e("brow_inner_dy"))
        outer = (sgn * (ident.eye_x + 0.21) + 0 * e("brow_inner_dy"), top + 0.03 + e("brow_outer_dy"))
        mid = (sgn * (ident.eye_x + 0.03) + 0 * e("brow_inner_dy"),
               top - ident.brow_arch + 0.5 * (e("brow_inner_dy") + e("brow_outer_dy")))
        pts = [outer, ((outer[0] + mid[0]) / 2, (outer[1] + mid[1]) / 2), mid,
               ((mid[0] + inner[0]) / 2, (mid[1] + inner[1]) / 2), inner]
        for i, (pu, pv) in zip(idx, pts):
            u[:, i], v[:, i] = pu[:, 0], pv[:, 0]

    # Nose: bridge 27-30 (top to tip, the tip out of the surface), base 31-35.
    tip_v = ident.nose_y - 0.06
    for k, i in enumerate(range(27, 31)):
        t = k / 3.0
        v[:, i] = (ident.eye_y + 0.1) * (1 - t) + tip_v * t
        lift[:, i] = 0.02 * (1 - t) + ident.nose_len * t
    u[:, 31:36] = [-0.12, -0.06, 0.0, 0.06, 0.12]
    v[:, 31:36] = ident.nose_y
    lift[:, 33] = 0.3 * ident.nose_len

    # Eyes 36-41 / 42-47 (corner, two upper-lid points, corner, two lower-lid points) and irises.
    ht_all = ident.eye_top * (1.0 + e("eye_open"))
    hb_all = ident.eye_bottom * (1.0 - e("lower_lid"))
    for k, sgn, idx in ((0, -1.0, [36, 37, 38, 39, 40, 41]), (1, 1.0, [42, 43, 44, 45, 46, 47])):
        ec = sgn * ident.eye_x
        gx = EYEBALL_RADIUS * np.sin(gaze[:, 2 * k:2 * k + 1])
        gy = EYEBALL_RADIUS * np.sin(gaze[:, 2 * k + 1:2 * k + 2])
        ht = np.maximum(ht_all - 0.6 * gy, 0.02)
        hb = np.maximum(hb_all + 0.4 * gy, 0.02)
        bk = blink[:, k:k + 1]
        ue = ident.eye_w * np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
        prof = 1.0 - np.abs(ue / ident.eye_w) ** 2.6
        upper = (-ht + bk * (ht + hb + 0.012)) * prof
        ve = np.concatenate([upper[:, :3], np.zeros((B, 1)), (hb * prof)[:, 4:]], 1)
        ve[:, 0] = 0.0
        u[:, idx] = ec + ue
        v[:, idx] = ident.eye_y + ve
        u[:, 68 + k] = ec + gx[:, 0]
        v[:, 68 + k] = ident.eye_y + gy[:, 0]

    # Lips: outer 48-59 (left corner, upper lip, right corner, lower lip back), inner 60-67.
    sm_outer = np.array([-1.0, -0.6, -0.25, 0.0, 0.25, 0.6, 1.0, 0.6, 0.25, 0.0, -0.25, -0.6])
    uo, yuo, _, _, ylo = _lip_points(ident, mouth, effects, sm_outer)
    u[:, 48:60] = uo
    v[:, 48:60] = ident.mouth_y + np.concatenate([yuo[:, :7], ylo[:, 7:]], 1)
    v[:, 48], v[:, 54] = ident.mouth_y + 0.5 * (yuo[:, 0] + ylo[:, 0]), ident.mouth_y + 0.5 * (yuo[:, 6] + ylo[:, 6])
    sm_inner = np.array([-1.0, -0.4, 0.0, 0.4, 1.0, 0.4, 0.0, -0.4])
    ui, _, yui, yli, _ = _lip_points(ident, mouth, effects, sm_inner)
    u[:, 60:68] = ui
    v[:, 60:68] = ident.mouth_y + np.concatenate([yui[:, :5], yli[:, 5:]], 1)

    w = surface_w(ident, u, v) + lift
    return project(ident, pose, np.stack([u, v, w], -1), size).astype(np.float32)
