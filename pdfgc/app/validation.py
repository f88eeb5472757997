"""Checks of the web app's uploads, each failing with one readable line (``PdfgcError``).

The generation pipeline checks its inputs too; these are the checks a web form needs on top:
an upload is present and under the size limit, the portrait decodes as an image, and the speech
is neither silent, too short for one mel window, nor longer than the app serves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from pdfgc.errors import PdfgcError

#: A waveform whose peak stays under this (about -80 dBFS) is taken as silence.
SILENCE_PEAK = 1e-4
#: Shortest speech the networks can use: one 20-row mel window is 0.2 s, 4 frames of video.
MIN_AUDIO_SECONDS = 0.2


def upload_name(path: str | os.PathLike) -> str:
    """The name a user recognises for an uploaded file (Gradio keeps it as the last component)."""
    return Path(path).name


def check_upload(path: Optional[str | os.PathLike], label: str, max_bytes: int) -> Path:
    """An uploaded file exists and is at most ``max_bytes`` long; returns it as a Path."""
    if not path:
        raise PdfgcError(f"no {label} uploaded")
    p = Path(path)
    if not p.is_file():
        raise PdfgcError(f"{label} upload is missing on the server (upload it again): {upload_name(p)}")
    size = p.stat().st_size
    if size == 0:
        raise PdfgcError(f"{label} is an empty file: {upload_name(p)}")
    if size > max_bytes:
        raise PdfgcError(f"{label} is {size / 2**20:.1f} MB, over this app's limit of "
                         f"{max_bytes / 2**20:.0f} MB: {upload_name(p)}")
    return p


def check_portrait(path: Path) -> np.ndarray:
    """The portrait decodes as an image; returns it ``(H, W, 3)`` uint8 RGB."""
    from pdfgc.video import read_image

    try:
        return read_image(path)
    except PdfgcError:
        raise PdfgcError(f"portrait is not a readable image file (png, jpg, ...): {upload_name(path)}") from None


def check_speech(path: Path, max_seconds: float) -> float:
    """The audio decodes, lasts ``MIN_AUDIO_SECONDS .. max_seconds`` and is not silent.

    Returns its duration in seconds.
    """
    from pdfgc.audio import SAMPLE_RATE, load_audio

    try:
        wave = load_audio(path)
    except PdfgcError:
        raise PdfgcError(f"audio is not a readable sound file (wav, mp3, flac, m4a, ...): "
                         f"{upload_name(path)}") from None
    seconds = wave.shape[0] / SAMPLE_RATE
    if seconds < MIN_AUDIO_SECONDS:
        raise PdfgcError(f"audio is too short: {seconds:.2f} s, need at least {MIN_AUDIO_SECONDS} s: "
                         f"{upload_name(path)}")
    if seconds > max_seconds:
        raise PdfgcError(f"audio is {seconds:.1f} s long; this app takes up to {max_seconds:g} s "
                         f"(generate.py has no limit): {upload_name(path)}")
    if float(np.abs(wave).max()) < SILENCE_PEAK:
        raise PdfgcError(f"audio is silent (no sound above -80 dBFS): {upload_name(path)}")
    return seconds
