"""Motion trajectories of a SynthTalk clip: head pose, gaze, blink and emotion.

Every factor is drawn from its own random stream, seeded by ``(seed, speaker, clip, factor)``,
so the factors are statistically independent of each other and of the speaker across the
dataset (a code trained for one factor cannot predict another by correlation).

Conventions (all per video frame, 25 fps; frame i is shown at t = i / 25 s):

* pose ``(F, 6)`` = (yaw, pitch, roll, tx, ty, log_scale). Angles in radians, applied as
  ``R = Rz(roll) Ry(yaw) Rx(pitch)`` to head coordinates (x right, y down, z toward the camera):
  yaw > 0 turns the face toward the image's right (the nose moves right), pitch > 0 lowers the
  chin (the nose moves down), roll > 0 rotates the face clockwise in the image. (tx, ty) move
  the head in fractions of the aligned frame's side (+x right, +y down); log_scale is the log of
  the head's size relative to the speaker's template size. These are the pose labels of
  docs/design.md.
* gaze ``(F, 4)`` = (x0, y0, x1, y1): eye-in-head rotation of eye 0 (the image-left eye of the
  frontal face) and eye 1, radians; x > 0 moves the pupil toward the image right, y > 0 down.
* blink ``(F, 2)``: lid closure of eye 0 and eye 1, 0 open .. 1 closed.
* emotion: one class per clip (index into ``EMOTIONS``, MEAD order) and an intensity ``(F,)``
  in [0, 1] that varies smoothly (0 for neutral).
"""

from __future__ import annotations

import numpy as np

FPS = 25

EMOTIONS = ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
NUM_EMOTIONS = len(EMOTIONS)

# Stream ids, one per factor, so each factor has its own independent generator.
STREAM_POSE, STREAM_GAZE, STREAM_BLINK, STREAM_SPEECH, STREAM_EMOTION = 1, 2, 3, 4, 5

# Clip-level ranges (documented in the report): the per-clip base value is drawn uniformly in
# +-BASE, a smooth drift of standard deviation DRIFT is added, and the sum is clipped to +-LIMIT.
POSE_BASE = np.array([0.35, 0.15, 0.10, 0.03, 0.03, 0.08], np.float32)
POSE_DRIFT = np.array([0.15, 0.08, 0.05, 0.015, 0.012, 0.03], np.float32)
POSE_LIMIT = np.array([0.60, 0.35, 0.25, 0.08, 0.08, 0.15], np.float32)
GAZE_LIMIT = np.array([0.55, 0.38], np.float32)  # |x|, |y| radians

# Emotion effects at intensity 1: named geometric controls the renderer understands. Units are
# head units (the head half-width is 1); v grows downward, so a negative dy raises a feature.
EFFECT_NAMES = (
    "brow_inner_dy",   # vertical move of the inner brow ends (both brows)
    "brow_outer_dy",   # vertical move of the outer brow ends
    "brow_inner_dx",   # inner brow ends drawn toward the midline by this much (furrow)
    "eye_open",        # relative change of the upper aperture (+0.5 = 50 % wider)
    "lower_lid",       # fraction of the lower aperture taken by a raised lower lid
    "corner_dy_left",  # mouth corner of the image-left side, vertical
    "corner_dy_right", # mouth corner of the image-right side, vertical
    "mouth_width",     # added to the speech width (same units: +1 = fully spread)
    "mouth_open",      # added to the speech opening (jaw drop)
    "open_gain",       # relative change of the speech opening (pressed lips < 0)
    "upper_lip_raise", # raises the upper lip's centre (disgust)
    "mouth_shift",     # horizontal shift of the mouth (one-sided contempt)
    "nasolabial",      # strength of the nose-to-mouth folds
    "nose_wrinkle",    # wrinkles across the nose bridge
    "forehead",        # forehead lines (raised brows)
    "furrow",          # vertical lines between the brows
)
_E = {n: i for i, n in enumerate(EFFECT_NAMES)}


def _effect(**kw: float) -> np.ndarray:
    v = np.zeros(len(EFFECT_NAMES), np.float32)
    for k, x in kw.items():
        v[_E[k]] = x
    return v


# Action-unit-inspired caricatures of the 8 MEAD classes (at full intensity), made large enough
# to read on a 64 px face: brows move by 2-3 px, corners by 2 px.
EMOTION_EFFECTS = np.stack([
    _effect(),  # neutral
    _effect(brow_inner_dy=0.12, brow_outer_dy=-0.03, brow_inner_dx=0.06, eye_open=0.1,
            lower_lid=0.45, corner_dy_left=0.03, corner_dy_right=0.03, mouth_width=-0.5,
            open_gain=-0.4, furrow=1.0),  # angry
    _effect(lower_lid=0.2, corner_dy_right=-0.1, mouth_width=0.3, mouth_shift=0.05,
            brow_outer_dy=-0.04),  # contempt (one-sided)
    _effect(brow_inner_dy=0.08, brow_inner_dx=0.04, eye_open=-0.15, lower_lid=0.4,
            corner_dy_left=0.06, corner_dy_right=0.06, mouth_width=-0.2, mouth_open=0.08,
            upper_lip_raise=0.05, nasolabial=0.8, nose_wrinkle=1.0),  # disgusted
    _effect(brow_inner_dy=-0.12, brow_outer_dy=-0.04, brow_inner_dx=0.04, eye_open=0.5,
            lower_lid=0.1, corner_dy_left=0.02, corner_dy_right=0.02, mouth_width=0.6,
            mouth_open=0.2, forehead=0.6),  # fear
    _effect(brow_inner_dy=-0.02, brow_outer_dy=-0.02, eye_open=-0.05, lower_lid=0.5,
            corner_dy_left=-0.12, corner_dy_right=-0.12, mouth_width=0.9, mouth_open=0.08,
            nasolabial=1.0),  # happy
    _effect(brow_inner_dy=-0.11, brow_outer_dy=0.06, brow_inner_dx=0.02, eye_open=-0.3,
            corner_dy_left=0.09, corner_dy_right=0.09, mouth_width=-0.2, open_gain=-0.2,
            forehead=0.3),  # sad
    _effect(brow_inner_dy=-0.16, brow_outer_dy=-0.15, eye_open=0.55, mouth_width=-0.5,
            mouth_open=0.45, forehead=1.0),  # surprised
]).astype(np.float32)


def factor_rng(seed: int, speaker: int, clip: int, stream: int) -> np.random.Generator:
    """Independent generator of one factor of one clip."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(speaker), int(clip), int(stream)]))


def smooth_noise(rng: np.random.Generator, num: int, sigma_frames: float, dims: int = 1) -> np.ndarray:
    """Gaussian-filtered white noise ``(num, dims)`` with unit standard deviation per dim.

    ``sigma_frames`` is the kernel's standard deviation in frames (the correlation time).
    """
    pad = int(4 * sigma_frames) + 1
    x = rng.standard_normal((num + 2 * pad, dims))
    k = np.exp(-0.5 * (np.arange(-pad, pad + 1) / max(sigma_frames, 1e-3)) ** 2)
    k /= np.sqrt(np.sum(k * k))  # unit variance of the filtered white noise
    out = np.stack([np.convolve(x[:, d], k, mode="valid") for d in range(dims)], axis=1)
    return out[:num].astype(np.float32)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def pose_trajectory(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Head pose labels ``(F, 6)`` float32: a per-clip base pose plus a slow smooth drift.

    Two time scales (about 0.6 s and 0.2 s) give turns with some nodding, so that a short clip
    already covers a range of poses (frames of one clip are otherwise near-duplicates).
    """
    base = rng.uniform(-1.0, 1.0, 6).astype(np.float32) * POSE_BASE
    slow = smooth_noise(rng, num_frames, 15.0, 6)
    fast = smooth_noise(rng, num_frames, 5.0, 6)
    drift = (0.85 * slow + 0.5 * fast) * POSE_DRIFT
    return np.clip(base + drift, -POSE_LIMIT, POSE_LIMIT).astype(np.float32)


def gaze_trajectory(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """Gaze ``(F, 4)`` float32 radians: fixations (0.3-1.5 s) joined by fast saccades.

    Half the fixations are near the camera, the rest spread over the whole range; both eyes
    share the target up to a small vergence offset and fixational jitter.
    """
    t = np.arange(num_frames, dtype=np.float64) / FPS
    out = np.zeros((num_frames, 4), np.float64)
    start, prev = -rng.uniform(0.0, 1.0), None
    end = t[-1] if num_frames else -1.0
    while start <= end:
        if rng.uniform() < 0.5:
            target = rng.normal(0.0, [0.12, 0.08])
        else:
            target = rng.uniform(-1.0, 1.0, 2) * GAZE_LIMIT
        target = np.clip(target, -GAZE_LIMIT, GAZE_LIMIT)
        verg = rng.normal(0.0, 0.02)
        eyes = np.array([target[0] + verg, target[1], target[0] - verg, target[1]])
        saccade = rng.uniform(0.03, 0.06)  # s
        if prev is None:
            prev = eyes
        w = smoothstep((t - start) / saccade)[:, None]
        sel = t >= start
        out[sel] = (prev * (1 - w) + eyes * w)[sel]
        prev = eyes
        start += rng.uniform(0.3, 1.5)
    out += smooth_noise(rng, num_frames, 2.0, 4) * 0.01
    lim = np.tile(GAZE_LIMIT, 2)
    return np.clip(out, -lim, lim).astype(np.float32)


def blink_profile(phase: np.ndarray) -> np.ndarray:
    """Closure over one blink, ``phase`` in [0, 1]: fast closing (35 %), short hold, slower opening."""
    close = smoothstep(phase / 0.35)
    open_ = 1.0 - smoothstep((phase - 0.45) / 0.55)
    return np.where(phase < 0.35, close, np.where(phase < 0.45, 1.0, open_)) * ((phase >= 0) & (phase <= 1))


def blink_trajectory(rng: np.random.Generator, num_frames: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Lid closure ``(F, 2)`` float32 and the list of blinks ``(start_s, duration_s)``.

    Blinks every 2-6 s (uniform), each 150-250 ms; 85 % full, 15 % partial (50-90 %);
    5 % are one-eyed (winks). Closure is evaluated at the frame times, so a short blink may
    peak below 1 in the sampled frames, as on real video.
    """
    t = np.arange(num_frames, dtype=np.float64) / FPS
    out = np.zeros((num_frames, 2), np.float64)
    blinks = []
    start = rng.uniform(-1.0, 4.0)
    end = t[-1] if num_frames else 0.0
    while start <= end:
        dur = rng.uniform(0.15, 0.25)
        amp = 1.0 if rng.uniform() < 0.85 else rng.uniform(0.5, 0.9)
        amps = np.clip(amp + rng.normal(0, 0.03, 2), 0, 1)
        if amp >= 1.0:
            amps[:] = 1.0  # a full blink closes both lids completely
        if rng.uniform() < 0.05:
            amps[rng.integers(2)] = 0.0
        prof = blink_profile((t - start) / dur)
        out = np.maximum(out, prof[:, None] * amps[None, :])
        blinks.append((float(start), float(dur)))
        start += rng.uniform(2.0, 6.0)
    return out.astype(np.float32), blinks


def emotion_trajectory(rng: np.random.Generator, num_frames: int) -> tuple[int, np.ndarray]:
    """One class per clip (uniform over the 8 MEAD classes) and an intensity ``(F,)`` float32.

    Non-neutral clips get a base intensity in [0.4, 1] with a smooth drift of +-0.1 (clipped to
    [0.2, 1]); neutral clips have intensity 0.
    """
    cls = int(rng.integers(NUM_EMOTIONS))
    base = rng.uniform(0.4, 1.0)
    drift = smooth_noise(rng, num_frames, 25.0, 1)[:, 0] * 0.1
    if cls == 0:
        return cls, np.zeros(num_frames, np.float32)
    return cls, np.clip(base + drift, 0.2, 1.0).astype(np.float32)


def emotion_effects(cls: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Effect vectors ``(..., len(EFFECT_NAMES))`` for classes ``(...)`` and intensities ``(...)``."""
    cls = np.asarray(cls, np.int64)
    return EMOTION_EFFECTS[cls] * np.asarray(intensity, np.float32)[..., None]


def effect(effects: np.ndarray, name: str) -> np.ndarray:
    """Column ``name`` of an effects array ``(..., E)``."""
    return effects[..., _E[name]]
