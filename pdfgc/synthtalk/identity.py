"""Speaker identities of the SynthTalk world: colours, face geometry, hair style, voice.

An identity is everything about a speaker that does not change within or across their clips.
It is drawn deterministically from ``(seed, speaker)`` and is independent of every motion
factor (pose, gaze, blink, speech content, emotion), so that a code trained for a motion factor
cannot read it off the identity.

Units: geometry is in *head units* (the head ellipsoid's half-width A = 1); colours are RGB in
[0, 1]. The placement (``unit``, ``center``) puts the eyes and the mouth of the frontal,
neutral face on the PC-AVS alignment template (eyes (87, 59), (137, 59), mouth (112, 120) in a
224 frame), i.e. frames are "aligned frames" as on disk, before the official crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

# PC-AVS / PD-FGC alignment template in fractions of the aligned frame's side.
TEMPLATE_EYE_Y = 59.0 / 224.0
TEMPLATE_MOUTH_Y = 120.0 / 224.0
TEMPLATE_CENTER_X = 112.0 / 224.0

SCLERA = np.array([0.93, 0.91, 0.88], np.float32)
PUPIL = np.array([0.05, 0.04, 0.04], np.float32)
LASH = np.array([0.10, 0.08, 0.08], np.float32)
MOUTH_INTERIOR = np.array([0.30, 0.07, 0.09], np.float32)
TEETH = np.array([0.92, 0.90, 0.84], np.float32)

# Skin tones from dark to very light (piecewise-linear path, sampled by one parameter).
_SKIN_PATH = np.array([
    [0.36, 0.24, 0.18], [0.55, 0.37, 0.26], [0.76, 0.57, 0.43], [0.90, 0.73, 0.60],
    [0.96, 0.84, 0.76],
], np.float32)
# Hair palette and its probabilities: black, dark brown, brown, auburn, blond, grey.
_HAIR = np.array([
    [0.08, 0.07, 0.07], [0.22, 0.14, 0.09], [0.38, 0.25, 0.15], [0.50, 0.22, 0.10],
    [0.78, 0.65, 0.42], [0.62, 0.61, 0.60],
], np.float32)
_HAIR_P = np.array([0.28, 0.24, 0.18, 0.08, 0.14, 0.08])
# Irises kept far from skin tones (blue, green, grey-blue, teal, hazel-green, violet-blue) so a
# closed lid is unambiguous: no skin or lid pixel can be mistaken for iris.
_IRIS = np.array([
    [0.22, 0.42, 0.75], [0.22, 0.55, 0.33], [0.40, 0.52, 0.66], [0.12, 0.50, 0.55],
    [0.45, 0.52, 0.20], [0.42, 0.34, 0.72],
], np.float32)
MIN_IRIS_DISTANCE = 0.28  # RGB distance (in [0,1] units) of the iris to any lid/skin/lash shade


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], np.float32)


@dataclass(frozen=True)
class Identity:
    """One speaker. Colours are (3,) float32 RGB in [0, 1]; lengths in head units (A = 1).

    Placement: ``unit`` is the size of one head unit in fractions of the aligned frame's side;
    ``center`` the head centre (x, y) in fractions of the side at zero translation.
    """

    speaker: int
    # colours
    skin: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    iris: np.ndarray
    lip: np.ndarray
    clothes: np.ndarray
    bg_top: np.ndarray
    bg_bottom: np.ndarray
    bg_blob: np.ndarray
    bg_blob_pos: np.ndarray  # (2,) fractions of the side
    bg_blob_radius: float
    light: np.ndarray  # (3,) unit vector in camera space (x right, y down, z to the camera)
    # head shape
    head_b: float  # vertical half-axis
    head_c: float  # depth half-axis
    jaw_start: float  # v where the jaw starts to taper
    jaw_taper: float  # 0 = round jaw, 0.4 = narrow chin
    # eyes
    eye_x: float  # |u| of the eye centres
    eye_y: float  # v of the eye centres
    eye_w: float  # half-width of the eye opening
    eye_top: float  # upper aperture (open, neutral)
    eye_bottom: float  # lower aperture
    iris_r: float
    # brows
    brow_gap: float  # brow height above the eye centre
    brow_thick: float  # half-thickness
    brow_arch: float
    # nose
    nose_y: float  # v of the nose base
    nose_len: float  # tip protrusion out of the surface
    # mouth
    mouth_y: float
    mouth_w: float  # half-width at rest
    lip_top: float  # upper lip thickness
    lip_bottom: float
    # hair
    hairline: float  # v of the front hairline at u = 0
    hairline_curve: float  # hairline rises by this * u^2 toward the temples
    hair_side: float  # surface points with z < hair_side * C are hair (sides / back)
    hair_long: bool
    fringe: float  # amplitude of a wavy fringe
    fringe_phase: float
    ears_visible: bool
    # placement
    unit: float
    center: np.ndarray  # (2,)
    # voice
    f0: float  # mean fundamental frequency, Hz
    formant_scale: float  # vocal-tract length factor on all formants
    breathiness: float  # aspiration noise level relative to the voiced source

    def as_dict(self) -> dict:
        """Plain-Python dict (lists instead of arrays), e.g. for JSON."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
        return out


def speaker_rng(seed: int, speaker: int) -> np.random.Generator:
    """The identity's own random stream (independent of every motion stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x1D, int(speaker)]))


def sample_identity(seed: int, speaker: int) -> Identity:
    """Draw speaker ``speaker`` of world ``seed`` (deterministic)."""
    rng = speaker_rng(seed, speaker)
    u = rng.uniform

    t = u(0.0, 1.0) * (len(_SKIN_PATH) - 1)
    k = min(int(t), len(_SKIN_PATH) - 2)
    skin = _SKIN_PATH[k] * (1 - (t - k)) + _SKIN_PATH[k + 1] * (t - k)
    skin = np.clip(skin + rng.normal(0, 0.02, 3).astype(np.float32) + np.array([0.02, 0, -0.01]) * u(-1, 1), 0, 1)
    hair = np.clip(_HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] + rng.normal(0, 0.03, 3), 0, 1).astype(np.float32)
    brow = (hair * (0.55 if hair.mean() > 0.4 else 0.8)).astype(np.float32)
    # Iris: reject colours near any shade of the skin (lids), the brows or the lashes.
    shades = [skin * c for c in np.linspace(0.45, 1.15, 8)] + [brow, LASH, hair * 0.8, SCLERA]
    for _ in range(50):
        iris = np.clip(_IRIS[rng.integers(len(_IRIS))] + rng.normal(0, 0.04, 3), 0, 1).astype(np.float32)
        if min(float(np.linalg.norm(iris - np.clip(s, 0, 1))) for s in shades) > MIN_IRIS_DISTANCE:
            break
    else:  # pragma: no cover - the palette makes this practically unreachable
        iris = np.array([0.15, 0.45, 0.85], np.float32)
    lip = np.clip(0.45 * skin + 0.55 * np.array([0.72, 0.22, 0.26]), 0, 1).astype(np.float32) * 0.85
    clothes = _hsv_to_rgb(u(0, 1), u(0.2, 0.8), u(0.2, 0.9))
    bg_h = u(0, 1)
    bg_top = _hsv_to_rgb(bg_h, u(0.05, 0.5), u(0.35, 0.95))
    bg_bottom = _hsv_to_rgb((bg_h + u(-0.1, 0.1)) % 1.0, u(0.05, 0.5), u(0.2, 0.8))
    bg_blob = _hsv_to_rgb(u(0, 1), u(0.0, 0.4), u(0.5, 1.0))
    light = np.array([u(-0.6, 0.6), u(-0.7, -0.1), 1.0], np.float32)
    light /= np.linalg.norm(light)

    eye_y = u(-0.12, -0.02)
    mouth_y = eye_y + u(0.88, 1.02)
    unit = (TEMPLATE_MOUTH_Y - TEMPLATE_EYE_Y) / (mouth_y - eye_y)
    center = np.array([TEMPLATE_CENTER_X, TEMPLATE_EYE_Y - eye_y * unit], np.float32)
    hair_long = bool(u() < 0.35)
    return Identity(
        speaker=int(speaker), skin=skin.astype(np.float32), hair=hair, brow=brow, iris=iris,
        lip=lip.astype(np.float32), clothes=clothes, bg_top=bg_top, bg_bottom=bg_bottom,
        bg_blob=bg_blob, bg_blob_pos=np.array([u(0, 1), u(0, 0.6)], np.float32),
        bg_blob_radius=u(0.15, 0.45), light=light,
        head_b=u(1.28, 1.48), head_c=u(1.05, 1.2), jaw_start=u(0.25, 0.55), jaw_taper=u(0.05, 0.35),
        eye_x=u(0.37, 0.46), eye_y=eye_y, eye_w=u(0.19, 0.23), eye_top=u(0.10, 0.125),
        eye_bottom=u(0.065, 0.08), iris_r=u(0.085, 0.1),
        brow_gap=u(0.22, 0.3), brow_thick=u(0.035, 0.055), brow_arch=u(0.02, 0.07),
        nose_y=eye_y + u(0.5, 0.6), nose_len=u(0.16, 0.28),
        mouth_y=mouth_y, mouth_w=u(0.32, 0.4), lip_top=u(0.045, 0.07), lip_bottom=u(0.055, 0.085),
        hairline=u(-1.08, -0.78) if u() > 0.1 else -1.6, hairline_curve=u(-0.1, 0.35),
        hair_side=u(0.15, 0.45) if hair_long else u(-0.25, 0.1), hair_long=hair_long,
        fringe=u(0.0, 0.08) if u() < 0.4 else 0.0, fringe_phase=u(0, 2 * np.pi),
        ears_visible=not hair_long,
        unit=float(unit), center=center,
        f0=float(np.exp(u(np.log(85.0), np.log(240.0)))), formant_scale=u(0.88, 1.15),
        breathiness=u(0.02, 0.12),
    )
