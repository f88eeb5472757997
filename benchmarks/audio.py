"""Audio front-end speed: seconds of audio turned into the official mel per second (x real time).

    python benchmarks/audio.py [--seconds 60] [--repeats 7] [--threads 1] [--header]

Synthetic speech-like audio (a voiced 120-250 Hz tone with a syllable envelope and noise), 16 kHz;
times :func:`pdfgc.audio.mel_spectrogram` (pre-emphasis, STFT, mel, dB, normalisation), median of
``--repeats``. Target on the 2-core CPU: >= 500x real time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_line, machine_name  # noqa: E402
from pdfgc.audio import mel_spectrogram  # noqa: E402

SR = 16000
HEADER = ("| machine | threads | load | audio s | ms (median) | x real time |\n"
          "|---|---|---|---|---|---|")


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """``(seconds * 16000,)`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    pitch = 185 + 65 * np.sin(2 * np.pi * 0.7 * t)
    voiced = np.sin(2 * np.pi * np.cumsum(pitch) / SR)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2
    return (0.3 * voiced * envelope + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    wave = speech_like(args.seconds)
    mel_spectrogram(wave)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        mel_spectrogram(wave)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    if args.header:
        print(HEADER)
    print(f"| {machine_name(torch.device('cpu'))} | {torch.get_num_threads()} | {load_line()} "
          f"| {args.seconds:g} | {median * 1000:.0f} | {args.seconds / median:.0f}x |")
    return {"seconds": median, "x_real_time": args.seconds / median}


if __name__ == "__main__":
    main()
