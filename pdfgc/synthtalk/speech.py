"""Speech-like audio at 16 kHz and the mouth motion it implies.

A clip's speech is a sequence of phoneme-like segments (phrases of words of CV(C) syllables,
separated by pauses). Each phone has an acoustic recipe and an articulatory target:

* vowels: a glottal pulse train (speaker f0 with intonation and jitter) through a cascade of
  formant resonators (F1-F4). F1 rises with jaw/mouth opening and F2 falls with lip rounding,
  so the table ties *openness* to F1 and *width* (rounded -1 .. spread +1) to F2, as in real
  vowels; open vowels are also intrinsically louder.
* fricatives: band-passed noise (s, sh, f, v, z); stops: closure (silence or voice bar), burst,
  aspiration; nasals: low-formant murmur with closed (m) or nearly closed (n) lips; pauses.

The mouth targets of the segments are joined with a coarticulation filter (Gaussian, 18 ms) into
an articulatory curve ``art(t) = (opening, width)``. The mouth shown at video frame i is
``art(i / 25 + MOUTH_LEAD_S)``: **the mouth leads the sound by 40 ms (one frame)**, as lips start
moving before the acoustic onset in real speech. Opening is in [0, 1] (1 = the widest jaw drop
of speech), width in [-1, 1] (-1 fully rounded, +1 fully spread); both are the *speech* part of
the mouth, before any emotion is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MOUTH_LEAD_S = 0.04  # the mouth at frame i shows the articulation of the audio at t_i + 40 ms
COARTICULATION_S = 0.018  # std of the Gaussian joining the articulatory targets
REST_MOUTH = (0.02, 0.0)  # (opening, width) in pauses

# name: (F1, F2, F3 Hz for a reference adult male, openness, width, intrinsic loudness)
VOWELS = {
    "a": (730.0, 1090.0, 2440.0, 1.00, 0.15, 1.00),
    "e": (530.0, 1840.0, 2480.0, 0.55, 0.60, 0.85),
    "i": (270.0, 2290.0, 3010.0, 0.22, 1.00, 0.72),
    "o": (570.0, 840.0, 2410.0, 0.65, -0.75, 0.90),
    "u": (300.0, 870.0, 2240.0, 0.28, -1.00, 0.72),
    "@": (500.0, 1500.0, 2500.0, 0.45, 0.00, 0.78),
}
# name: (kind, opening, width, loudness, band low Hz, band high Hz)
CONSONANTS = {
    "p": ("stop", 0.00, 0.0, 0.35, 400.0, 2000.0),
    "b": ("vstop", 0.00, 0.0, 0.35, 400.0, 2000.0),
    "t": ("stop", 0.15, 0.3, 0.35, 3000.0, 7000.0),
    "d": ("vstop", 0.15, 0.3, 0.35, 3000.0, 7000.0),
    "k": ("stop", 0.30, 0.0, 0.35, 1500.0, 3500.0),
    "g": ("vstop", 0.30, 0.0, 0.35, 1500.0, 3500.0),
    "s": ("fric", 0.12, 0.45, 0.22, 4000.0, 7500.0),
    "z": ("vfric", 0.12, 0.45, 0.18, 4000.0, 7500.0),
    "S": ("fric", 0.15, -0.6, 0.25, 2200.0, 5500.0),
    "f": ("fric", 0.06, 0.1, 0.08, 1200.0, 7500.0),
    "v": ("vfric", 0.06, 0.1, 0.12, 1200.0, 7500.0),
    "m": ("nasal", 0.00, 0.0, 0.30, 0.0, 0.0),
    "n": ("nasal", 0.15, 0.2, 0.30, 0.0, 0.0),
    "l": ("approx", 0.25, 0.1, 0.45, 0.0, 0.0),
    "h": ("aspir", -1.0, 0.0, 0.12, 0.0, 0.0),  # opening -1: take the next vowel's (x 0.8)
}
PHONES = ("sil",) + tuple(VOWELS) + tuple(CONSONANTS)
PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}
_ONSETS = "pbtdkgszSfvmnlh"
_CODAS = "tdkszSnml"


@dataclass(frozen=True)
class Segment:
    """One phone-like segment: ``phone`` (see ``PHONES``), ``kind``, times in seconds,
    articulatory target (``opening``, ``width``) and loudness (linear amplitude)."""

    phone: str
    kind: str
    start: float
    end: float
    opening: float
    width: float
    loudness: float
    stress: float = 1.0


@dataclass
class Speech:
    """A clip's speech. ``waveform`` (S,) float32 at 16 kHz, S = F * 640;
    ``mouth`` (F, 2) float32 (opening, width) at the frame times *including* the 40 ms lead;
    ``loudness`` (F,) the segments' loudness envelope at the frame times (no lead);
    ``phones`` (F,) int16 index into ``PHONES`` of the phone sounding at each frame time."""

    waveform: np.ndarray
    mouth: np.ndarray
    loudness: np.ndarray
    phones: np.ndarray
    segments: list


# --- the plan ----------------------------------------------------------------------------


def speech_plan(rng: np.random.Generator, duration: float) -> list[Segment]:
    """Segments covering ``[0, duration]``: phrases of 2-6 words of 1-3 syllables, ~4-6
    syllables/s, short pauses between some words, 0.25-0.7 s pauses between phrases."""
    segs: list[Segment] = []
    t = rng.uniform(0.0, 0.3)
    if t > 0:
        segs.append(Segment("sil", "pause", 0.0, t, *REST_MOUTH, 0.0))
    vowels = list(VOWELS)
    while t < duration:
        for w in range(int(rng.integers(2, 7))):
            for _ in range(int(rng.integers(1, 4))):
                stress = rng.uniform(0.7, 1.1)
                nxt = vowels[int(rng.integers(len(vowels)))]
                if rng.uniform() < 0.8:
                    t = _consonant(segs, rng, _ONSETS[int(rng.integers(len(_ONSETS)))], t, nxt)
                f1, f2, f3, op, wd, ld = VOWELS[nxt]
                dur = rng.uniform(0.07, 0.15) * (0.7 + 0.5 * stress)
                segs.append(Segment(nxt, "vowel", t, t + dur, op * (0.75 + 0.25 * stress), wd,
                                    ld * stress, stress))
                t += dur
                if rng.uniform() < 0.3:
                    t = _consonant(segs, rng, _CODAS[int(rng.integers(len(_CODAS)))], t, None)
            if rng.uniform() < 0.35:
                d = rng.uniform(0.06, 0.15)
                segs.append(Segment("sil", "pause", t, t + d, *REST_MOUTH, 0.0))
                t += d
        d = rng.uniform(0.25, 0.7)
        segs.append(Segment("sil", "pause", t, t + d, *REST_MOUTH, 0.0))
        t += d
    return segs


def _consonant(segs: list, rng: np.random.Generator, c: str, t: float, next_vowel) -> float:
    kind, op, wd, ld, _, _ = CONSONANTS[c]
    if op < 0:  # h: shaped by the following vowel
        v = VOWELS[next_vowel or "@"]
        op, wd = 0.8 * v[3], v[4]
    if kind in ("stop", "vstop"):
        clo = rng.uniform(0.04, 0.08)
        segs.append(Segment(c, "closure" if kind == "stop" else "vclosure", t, t + clo, op, wd,
                            0.0 if kind == "stop" else 0.06))
        t += clo
        bur = rng.uniform(0.012, 0.02)
        segs.append(Segment(c, "burst", t, t + bur, op, wd, ld))
        t += bur
        if kind == "stop" and next_vowel is not None:
            asp = rng.uniform(0.02, 0.04)
            v = VOWELS[next_vowel]
            segs.append(Segment(c, "aspir", t, t + asp, 0.8 * v[3], v[4], 0.12))
            t += asp
        return t
    dur = {"fric": (0.07, 0.13), "vfric": (0.06, 0.11), "nasal": (0.05, 0.09),
           "approx": (0.05, 0.08), "aspir": (0.04, 0.07)}[kind]
    d = rng.uniform(*dur)
    segs.append(Segment(c, kind, t, t + d, op, wd, ld))
    return t + d


# --- articulation -----------------------------------------------------------------------


def articulation(segments: list[Segment], times: np.ndarray) -> np.ndarray:
    """Articulatory curve ``(len(times), 2)`` (opening, width) at arbitrary ``times`` (s).

    Segment targets on a 1 ms grid, joined by a Gaussian coarticulation filter.
    """
    step = 0.001
    end = max(float(np.max(times)) if len(times) else 0.0, segments[-1].end if segments else 0.0) + 0.1
    n = int(np.ceil(end / step)) + 1
    grid = np.tile(np.array(REST_MOUTH, np.float64), (n, 1))
    for s in segments:
        a, b = int(round(s.start / step)), int(round(s.end / step))
        grid[a:b] = (s.opening, s.width)
    sig = COARTICULATION_S / step
    k = np.exp(-0.5 * (np.arange(-int(4 * sig), int(4 * sig) + 1) / sig) ** 2)
    k /= k.sum()
    pad = len(k) // 2
    padded = np.concatenate([np.repeat(grid[:1], pad, 0), grid, np.repeat(grid[-1:], pad, 0)])
    smooth = np.stack([np.convolve(padded[:, d], k, mode="valid") for d in range(2)], axis=1)
    idx = np.clip(np.asarray(times) / step, 0, n - 1)
    lo = np.floor(idx).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    f = (idx - lo)[:, None]
    out = smooth[lo] * (1 - f) + smooth[hi] * f
    out[:, 0] = np.clip(out[:, 0], 0.0, 1.0)
    out[:, 1] = np.clip(out[:, 1], -1.0, 1.0)
    return out.astype(np.float32)


def segment_at(segments: list[Segment], times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phone index (int16) and loudness (float32) of the segment sounding at each time."""
    starts = np.array([s.start for s in segments])
    i = np.clip(np.searchsorted(starts, np.asarray(times), side="right") - 1, 0, len(segments) - 1)
    inside = np.asarray(times) < np.array([s.end for s in segments])[i]
    phones = np.array([PHONE_INDEX[s.phone] for s in segments], np.int16)[i]
    loud = np.array([s.loudness for s in segments], np.float32)[i]
    return np.where(inside, phones, 0).astype(np.int16), np.where(inside, loud, 0.0).astype(np.float32)


# --- acoustics --------------------------------------------------------------------------


def _resonators(formants, bandwidths) -> np.ndarray:
    """Cascade of 2-pole resonators as second-order sections, unit gain at DC."""
    rows = []
    for f, bw in zip(formants, bandwidths):
        f = min(f, 0.45 * SAMPLE_RATE)
        r = np.exp(-np.pi * bw / SAMPLE_RATE)
        a1, a2 = -2 * r * np.cos(2 * np.pi * f / SAMPLE_RATE), r * r
        rows.append([1 + a1 + a2, 0.0, 0.0, 1.0, a1, a2])
    return np.array(rows)


def _bandpass(lo: float, hi: float) -> np.ndarray:
    return signal.butter(4, [lo, min(hi, 7900.0)], btype="bandpass", fs=SAMPLE_RATE, output="sos")


_BANDS: dict = {}


def _band(lo: float, hi: float) -> np.ndarray:
    key = (lo, hi)
    if key not in _BANDS:
        _BANDS[key] = _bandpass(lo, hi)
    return _BANDS[key]


def glottal_source(rng: np.random.Generator, n: int, f0: float) -> np.ndarray:
    """Pulse train with intonation (slow +-8 % contour), 1 % jitter and -6 dB/oct tilt."""
    from .motion import smooth_noise

    frames = n // SAMPLES_PER_FRAME + 2
    contour = smooth_noise(rng, frames, 6.0, 1)[:, 0] * 0.08 + smooth_noise(rng, frames, 1.5, 1)[:, 0] * 0.02
    f = f0 * np.exp(np.interp(np.arange(n) / SAMPLES_PER_FRAME, np.arange(frames), contour))
    phase = np.cumsum(f / SAMPLE_RATE)
    pulses = np.zeros(n)
    idx = np.nonzero(np.diff(np.floor(phase), prepend=0.0) > 0)[0]
    pulses[idx] = 1.0
    src = signal.lfilter([1.0, -1.0], [1.0, -0.92], pulses)  # flow derivative with spectral tilt
    return src


def synthesize(rng: np.random.Generator, segments: list[Segment], n: int, f0: float,
               formant_scale: float, breathiness: float) -> np.ndarray:
    """Waveform ``(n,)`` float32 from the segments (overlap-add of per-segment sounds with
    15 ms raised-cosine crossfades; each voiced or noise segment is normalised to unit RMS
    before its loudness is applied, so the loudness envelope is the one the plan says)."""
    src = glottal_source(rng, n, f0)
    src += breathiness * rng.standard_normal(n) * np.std(src)
    noise = rng.standard_normal(n)
    out = np.zeros(n)
    margin = int(0.03 * SAMPLE_RATE)
    ramp = int(0.015 * SAMPLE_RATE)
    for s in segments:
        if s.loudness <= 0.0:
            continue
        a, b = int(round(s.start * SAMPLE_RATE)), int(round(s.end * SAMPLE_RATE))
        a0, b0 = max(a - margin, 0), min(b + margin, n)
        if b0 <= a0 or a >= n:
            continue
        if s.kind == "vowel":
            f1, f2, f3 = VOWELS[s.phone][:3]
            sos = _resonators(np.array([f1, f2, f3, 3500.0]) * formant_scale, [80.0, 100.0, 150.0, 250.0])
            piece = signal.sosfilt(sos, src[a0:b0])
        elif s.kind in ("nasal", "vclosure"):
            sos = _resonators(np.array([250.0, 1100.0, 2300.0]) * formant_scale, [80.0, 250.0, 300.0])
            piece = signal.sosfilt(sos, src[a0:b0])
        elif s.kind == "approx":
            sos = _resonators(np.array([360.0, 1000.0, 2600.0]) * formant_scale, [80.0, 120.0, 180.0])
            piece = signal.sosfilt(sos, src[a0:b0])
        elif s.kind == "aspir":
            sos = _resonators(np.array([600.0, 1400.0, 2500.0]) * formant_scale, [300.0, 300.0, 300.0])
            piece = signal.sosfilt(sos, noise[a0:b0])
        else:  # fricatives and bursts: band-passed noise (+ voicing for the voiced ones)
            lo, hi = CONSONANTS[s.phone][4:6]
            piece = signal.sosfilt(_band(lo, hi), noise[a0:b0])
            if s.kind == "burst":  # fast decay
                piece = piece * np.exp(-np.arange(b0 - a0) / (0.01 * SAMPLE_RATE))
            if s.kind == "vfric":
                piece = piece + 0.5 * signal.sosfilt(_resonators([250.0 * formant_scale], [100.0]), src[a0:b0]) \
                    / (np.std(src[a0:b0]) + 1e-9) * np.std(piece)
        core = piece[a - a0:b - a0] if b > a else piece
        rms = np.sqrt(np.mean(core ** 2)) + 1e-9
        tt = np.arange(a0, b0)
        w = np.clip((tt - (a - ramp / 2)) / ramp, 0, 1) * np.clip(((b + ramp / 2) - tt) / ramp, 0, 1)
        w = 0.5 - 0.5 * np.cos(np.pi * w)
        out[a0:b0] += piece / rms * s.loudness * w
    out += rng.standard_normal(n) * 0.003  # room noise floor (about -50 dB re speech)
    peak = np.quantile(np.abs(out), 0.999) + 1e-9
    return (out * (0.5 / peak)).clip(-1.0, 1.0).astype(np.float32)


def synthesize_speech(rng: np.random.Generator, num_frames: int, f0: float = 120.0,
                      formant_scale: float = 1.0, breathiness: float = 0.05) -> Speech:
    """Speech for ``num_frames`` video frames (``num_frames * 640`` samples at 16 kHz)."""
    n = num_frames * SAMPLES_PER_FRAME
    segs = speech_plan(rng, n / SAMPLE_RATE)
    wav = synthesize(rng, segs, n, f0, formant_scale, breathiness)
    times = np.arange(num_frames) / FPS
    mouth = articulation(segs, times + MOUTH_LEAD_S)
    phones, loud = segment_at(segs, times)
    return Speech(waveform=wav, mouth=mouth, loudness=loud, phones=phones, segments=segs)


def energy_envelope(waveform: np.ndarray, num_frames: int, window_s: float = 0.04) -> np.ndarray:
    """RMS of the audio in a ``window_s`` window centred on each frame time: ``(F,)`` float32."""
    half = int(window_s * SAMPLE_RATE / 2)
    x = np.concatenate([np.zeros(half), np.asarray(waveform, np.float64), np.zeros(half)])
    c = np.concatenate([[0.0], np.cumsum(x * x)])
    centres = np.arange(num_frames) * SAMPLES_PER_FRAME + half
    return np.sqrt((c[centres + half] - c[centres - half]) / (2 * half)).astype(np.float32)
