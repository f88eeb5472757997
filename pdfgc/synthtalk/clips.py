"""SynthTalk clips: every factor of one (speaker, clip) drawn, rendered and measured.

A clip is deterministic from ``(seed, speaker, clip)``: identity from the speaker's stream,
pose / gaze / blink / speech / emotion each from its own stream (see ``motion``), so all
factors are independent across the dataset. Frames are *aligned* frames (before the official
crop) at ``image_size``; 25 fps; audio 16 kHz with ``F * 640`` samples.

Ground truth per frame (units in ``motion`` / ``speech``):

* ``pose (F, 6)``: yaw, pitch, roll (rad), tx, ty (fraction of the side), log scale;
* ``gaze (F, 4)``: (x, y) rotation of each eye (rad);
* ``blink (F, 2)``: lid closure per eye, 0 open .. 1 closed;
* ``mouth (F, 2)``: the *speech* articulation (opening 0..1, width -1..1) that the audio
  implies, shown 40 ms ahead of the sound; ``mouth_drawn (F, 2)`` adds the emotion's effect;
* ``emotion`` (int, MEAD order, one per clip) and ``emotion_intensity (F,)``;
* ``eye_boxes (F, 2, 4)`` and ``mouth_box (F, 4)``: pixel boxes (x0, y0, x1, y1) in the
  aligned frame;
* ``landmarks (F, 70, 2)``: pixel (x, y) of the iBUG-68 points and the two iris centres in the
  aligned frame (``render.landmarks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pdfgc import audio as audio_fe
from pdfgc.synthtalk import identity as idm
from pdfgc.synthtalk import motion as mo
from pdfgc.synthtalk import render as rd
from pdfgc.synthtalk import speech as sp

FPS = 25
GT_KEYS = ("pose", "gaze", "blink", "mouth", "mouth_drawn", "emotion_intensity")


@dataclass
class Clip:
    """One rendered SynthTalk clip (see the module docstring for units)."""

    speaker: int
    clip: int
    frames: np.ndarray  # (F, S, S, 3) uint8 aligned frames
    waveform: np.ndarray  # (F * 640,) float32, 16 kHz
    mel: np.ndarray  # (T, 80) float32, the official front-end
    pose: np.ndarray
    gaze: np.ndarray
    blink: np.ndarray
    mouth: np.ndarray
    mouth_drawn: np.ndarray
    emotion: int
    emotion_intensity: np.ndarray
    eye_boxes: np.ndarray
    mouth_box: np.ndarray
    landmarks: np.ndarray
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"s{self.speaker:04d}_c{self.clip:02d}"

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def ground_truth(self) -> dict:
        """Per-frame ground truth: ``pose (F,6)``, ``gaze (F,4)``, ``blink (F,2)``, ``mouth (F,2)``,
        ``mouth_drawn (F,2)``, ``emotion (F,)`` int64, ``emotion_intensity (F,)``."""
        gt = {k: getattr(self, k) for k in GT_KEYS}
        gt["emotion"] = np.full(self.num_frames, self.emotion, np.int64)
        return gt

    def as_dict(self) -> dict:
        """Frames, audio, mel, boxes, ground truth and ``speaker``/``clip`` as one plain dict
        (the mapping form :func:`pdfgc.metrics.oracle.oracle_arrays_from_clips` reads)."""
        return {"frames": self.frames, "waveform": self.waveform, "mel": self.mel, "eye_boxes": self.eye_boxes,
                "mouth_box": self.mouth_box, "landmarks": self.landmarks, "speaker": self.speaker, "clip": self.clip,
                **self.ground_truth}


def draw_factors(seed: int, speaker: int, clip: int, num_frames: int) -> dict:
    """All factor trajectories and the speech of a clip, without rendering (cheap)."""
    ident = idm.sample_identity(seed, speaker)
    pose = mo.pose_trajectory(mo.factor_rng(seed, speaker, clip, mo.STREAM_POSE), num_frames)
    gaze = mo.gaze_trajectory(mo.factor_rng(seed, speaker, clip, mo.STREAM_GAZE), num_frames)
    blink, _ = mo.blink_trajectory(mo.factor_rng(seed, speaker, clip, mo.STREAM_BLINK), num_frames)
    speech = sp.synthesize_speech(mo.factor_rng(seed, speaker, clip, mo.STREAM_SPEECH), num_frames,
                                  ident.f0, ident.formant_scale, ident.breathiness)
    emotion, intensity = mo.emotion_trajectory(mo.factor_rng(seed, speaker, clip, mo.STREAM_EMOTION), num_frames)
    effects = mo.emotion_effects(np.full(num_frames, emotion), intensity)
    return {"identity": ident, "pose": pose, "gaze": gaze, "blink": blink, "speech": speech,
            "emotion": emotion, "emotion_intensity": intensity, "effects": effects,
            "mouth_drawn": rd.compose_mouth(speech.mouth, effects)}


def render_clip(seed: int, speaker: int, clip: int, num_frames: int, image_size: int = 64) -> Clip:
    """Render clip ``clip`` of ``speaker`` in world ``seed``: ``num_frames`` frames at ``image_size``."""
    f = draw_factors(seed, speaker, clip, num_frames)
    ident = f["identity"]
    frames = rd.render(ident, f["pose"], f["gaze"], f["blink"], f["mouth_drawn"], f["effects"], image_size)
    wave = f["speech"].waveform
    return Clip(
        speaker=speaker, clip=clip, frames=frames, waveform=wave,
        mel=audio_fe.mel_spectrogram(wave), pose=f["pose"], gaze=f["gaze"], blink=f["blink"],
        mouth=f["speech"].mouth.astype(np.float32), mouth_drawn=f["mouth_drawn"], emotion=int(f["emotion"]),
        emotion_intensity=f["emotion_intensity"].astype(np.float32),
        eye_boxes=rd.eye_boxes(ident, f["pose"], image_size),
        mouth_box=rd.mouth_box(ident, f["pose"], image_size),
        landmarks=rd.landmarks(ident, f["pose"], f["gaze"], f["blink"], f["mouth_drawn"], f["effects"], image_size),
    )
