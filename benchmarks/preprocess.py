"""Preprocessing speed with dlib: clips/s and frames/s per CPU core, and where the time goes.

    python benchmarks/preprocess.py [--clips 4] [--seconds 4] [--repeats 3] [--workers 0] [--header]

The input is VoxCeleb2-like: ``--clips`` mp4 clips (224 x 224, 25 fps, H.264 + AAC speech) of the
scikit-image astronaut moved by slow similarities (tests/astronaut_clips.py). ``--workers 0``
runs :func:`pdfgc.preprocessing.run` in this process with one OpenCV / torch thread, i.e. one
core's worth of work (ffmpeg decodes in its own process); ``--workers N`` uses N worker
processes (their start-up is inside the clock). Each repeat writes a fresh output folder;
the figures are medians over ``--repeats``. The stage columns are ms per frame of one clip,
median of the repeats. Prints a Markdown row; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # astronaut_clips: the real-face test clips

from astronaut_clips import moving_clip  # noqa: E402
from benchmarks.common import load_line, machine_name  # noqa: E402
from pdfgc import audio as audio_fe  # noqa: E402
from pdfgc.faces import build_landmark_detector  # noqa: E402
from pdfgc.preprocessing import PreprocessConfig, run  # noqa: E402
from pdfgc.preprocessing.clip import (ClipSettings, align_clip, decode_clip, eye_state, pose_labels,  # noqa: E402
                                      process_clip)
from pdfgc.preprocessing.discover import discover_clips  # noqa: E402
from pdfgc.preprocessing.quality import check_faces  # noqa: E402
from pdfgc.synthtalk.speech import synthesize_speech  # noqa: E402
from pdfgc.video import write_video  # noqa: E402

HEADER = ("| date | machine | load | clips x s | workers | clips/s | frames/s | frames/s per core | "
          "decode | detect | align | eyes | pose | mel | write | ms/frame in all |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def make_clips(folder: Path, clips: int, seconds: float) -> None:
    """``folder/dev/id<k>/vid/00001.mp4``: the portrait drifting, turning and zooming slowly."""
    frames = int(round(seconds * 25))
    phase = np.linspace(0, 2 * np.pi, frames)
    for k in range(clips):
        rng = np.random.default_rng(k)
        angles = 0.15 * np.sin(phase + k)
        scales = 0.85 + 0.08 * np.sin(0.5 * phase + k)
        shifts = np.stack([12 * np.sin(phase * 0.7 + k), 8 * np.cos(phase * 0.9 + k)], 1)
        video, _ = moving_clip(angles, scales, shifts)
        wave = synthesize_speech(rng, frames).waveform
        write_video(folder / "dev" / f"id{k:05d}" / "vid" / "00001.mp4", video, fps=25, audio=wave)


def stage_times(source, settings: ClipSettings, detector, out: Path) -> dict[str, float]:
    """Seconds of each step on one clip (the steps of :func:`process_clip`, run one by one)."""
    times = {}
    t = time.perf_counter()
    decoded = decode_clip(source, settings)
    times["decode"] = time.perf_counter() - t
    t = time.perf_counter()
    found = detector.detect(decoded.frames)
    times["detect"] = time.perf_counter() - t
    t = time.perf_counter()
    track = check_faces(found.landmarks, found.face_counts, settings.limits)
    aligned = align_clip(decoded.frames, track, settings)
    times["align"] = time.perf_counter() - t
    t = time.perf_counter()
    eye_state(aligned.frames, aligned.landmarks, ~track.interpolated)
    times["eyes"] = time.perf_counter() - t
    t = time.perf_counter()
    pose_labels(aligned.frames, aligned.landmarks)
    times["pose"] = time.perf_counter() - t
    t = time.perf_counter()
    audio_fe.mel_spectrogram(decoded.waveform)
    times["mel"] = time.perf_counter() - t
    t = time.perf_counter()
    process_clip(source, detector, settings, out, out / ".scratch")
    total = time.perf_counter() - t
    times["write"] = max(total - sum(times.values()), 0.0)  # the rest of a whole process_clip
    times["total"] = total
    return {k: v / len(decoded.frames) for k, v in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length (VoxCeleb2 averages ~8 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_clips(tmp / "in", args.clips, args.seconds)
        settings = ClipSettings()
        detector = build_landmark_detector("dlib")
        source = discover_clips(tmp / "in")[0]
        stages = [stage_times(source, settings, detector, tmp / f"stages{r}") for r in range(args.repeats)]
        rates = []
        for r in range(args.repeats):
            config = PreprocessConfig(input_dir=str(tmp / "in"), output_dir=str(tmp / f"out{r}"), progress=False,
                                      num_workers=args.workers, landmarks={"backend": "dlib", "dlib": {}})
            summary = run(config)
            rates.append((summary.clips_per_second, summary.frames_per_second))
    clips_s = statistics.median(r[0] for r in rates)
    frames_s = statistics.median(r[1] for r in rates)
    cores = max(args.workers, 1)
    ms = {k: 1000 * statistics.median(s[k] for s in stages) for k in stages[0]}
    if args.header:
        print(HEADER)
    print(f"| {datetime.date.today()} | {machine_name(torch.device('cpu'))} | {load_line()} | {args.clips} x "
          f"{args.seconds:g} | {args.workers} | {clips_s:.2f} | {frames_s:.1f} | {frames_s / cores:.1f} | "
          + " | ".join(f"{ms[k]:.1f}" for k in ("decode", "detect", "align", "eyes", "pose", "mel", "write"))
          + f" | {ms['total']:.1f} |")
    return {"clips_per_second": clips_s, "frames_per_second": frames_s, "ms_per_frame": ms}


if __name__ == "__main__":
    main()
