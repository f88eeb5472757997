"""Write SynthTalk to disk: the processed-data layout (docs/design.md) or raw mp4 clips.

``python -m pdfgc.synthtalk.export output_dir=DIR [format=processed|mp4] [split=all|train|test]
[num_speakers=N] [heldout_speakers=N] [clips_per_speaker=N] [clip_seconds=S] [image_size=S] [seed=N]``

The processed layout is what ``preprocess.py`` writes for real videos, so the real-data
datamodule and preprocessing are tested on SynthTalk; the mp4 clips (H.264 + AAC) are what a
user's own videos look like. Clips are appended to ``index.jsonl`` as they finish and every file
is written atomically, so an interrupted export keeps all finished clips.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from pdfgc.errors import PdfgcError, cli_guard
from pdfgc.io import atomic_path, atomic_write_bytes
from pdfgc.synthtalk.clips import Clip, render_clip
from pdfgc.synthtalk.world import WorldConfig

FORMATS = ("processed", "mp4")

# eyes.npy on the scale preprocessing measures on real faces (docs/design.md, "Processed-data
# layout"): an open eye's eye aspect ratio (iBUG 36-41 / 42-47) is ~0.3 and a closed one ~0, so
# SynthTalk's lid closure b in [0, 1] maps to EAR = OPEN_EYE_ASPECT_RATIO * (1 - b). The iris
# offset from the eye centre, in eye widths, is EYEBALL_RADIUS * sin(gaze) / (2 * eye half-width);
# a nominal half-width stands in for each identity's (0.19-0.23 head units).
OPEN_EYE_ASPECT_RATIO = 0.3
NOMINAL_EYE_HALF_WIDTH = 0.21


def eye_state(blink: np.ndarray, gaze: np.ndarray) -> np.ndarray:
    """SynthTalk ground truth -> ``eyes.npy`` rows ``(F, 6)`` float32:
    ``[EAR eye A, EAR eye B, iris A x, iris A y, iris B x, iris B y]``.

    :param blink: (F, 2) lid closure per eye, 0 open .. 1 closed (eye A = image-left = iBUG 36-41)
    :param gaze: (F, 4) eye-in-head rotation (x0, y0, x1, y1) in radians
    """
    from pdfgc.synthtalk.render import EYEBALL_RADIUS

    ear = OPEN_EYE_ASPECT_RATIO * (1.0 - np.asarray(blink, np.float32))
    iris = EYEBALL_RADIUS * np.sin(np.asarray(gaze, np.float32)) / (2.0 * NOMINAL_EYE_HALF_WIDTH)
    return np.concatenate([ear, iris], axis=1).astype(np.float32)


def write_wav(path: Path, waveform: np.ndarray, rate: int = 16000) -> None:
    """16 kHz mono PCM16 wav, atomically."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(waveform, np.float32), rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def write_processed_clip(root: Path, clip: Clip, split: str) -> dict:
    """One clip in the processed layout; returns its index entry (paths relative to ``root``)."""
    import cv2

    rel = Path(f"{clip.speaker:04d}") / f"{clip.clip:02d}"
    folder = root / rel
    frames_dir = folder / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(clip.frames):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise PdfgcError(f"could not encode frame {i} of {clip.name}")
        atomic_write_bytes(frames_dir / f"{i:04d}.jpg", buf.tobytes())
    write_wav(folder / "audio.wav", clip.waveform)
    arrays = (("spectrograms.npy", clip.mel), ("pose.npy", clip.pose), ("eyes.npy", eye_state(clip.blink, clip.gaze)),
              ("landmarks.npy", clip.landmarks[:, :68]))
    for name, array in arrays:
        with atomic_path(folder / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(array, np.float32))
    with atomic_path(folder / "gt.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, pose=clip.pose, gaze=clip.gaze, blink=clip.blink, mouth=clip.mouth,
                 mouth_drawn=clip.mouth_drawn, emotion=np.int64(clip.emotion),
                 emotion_intensity=clip.emotion_intensity, eye_boxes=clip.eye_boxes, mouth_box=clip.mouth_box)
    return {
        "speaker": f"{clip.speaker:04d}", "clip": clip.name, "split": split, "num_frames": clip.num_frames,
        "fps": 25, "duration": clip.num_frames / 25, "frames_dir": str(rel / "frames"),
        "audio": str(rel / "audio.wav"), "spectrogram": str(rel / "spectrograms.npy"), "pose": str(rel / "pose.npy"),
        "eyes": str(rel / "eyes.npy"), "landmarks": str(rel / "landmarks.npy"), "gt": str(rel / "gt.npz"), "flags": [],
        "emotion": int(clip.emotion),  # the clip's class, as an emotion-labelled corpus (MEAD) lists it
    }


def write_mp4_clip(root: Path, clip: Clip) -> Path:
    """One clip as ``<speaker>/<clip>.mp4`` with its speech (and the wav beside it)."""
    from pdfgc.video import write_video

    folder = root / f"{clip.speaker:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    wav = folder / f"{clip.clip:02d}.wav"
    write_wav(wav, clip.waveform)
    return write_video(folder / f"{clip.clip:02d}.mp4", clip.frames, fps=25, audio_path=wav)


def export(output_dir: str | Path, world: WorldConfig, split: str = "train", fmt: str = "processed",
           progress: bool = True) -> Path:
    """Render ``split`` (train | test | all) of ``world`` into ``output_dir`` (``fmt``: processed | mp4).

    Resumable: processed clips already in ``index.jsonl`` and mp4 files that exist are skipped.
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise PdfgcError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if split == "all":
        for one in ("train", "test"):
            export(output_dir, world, one, fmt, progress)
        return Path(output_dir)
    if split not in ("train", "test"):
        raise PdfgcError(f"unknown split {split!r} (train, test or all)")
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    index = root / "index.jsonl"
    done = set()
    if index.exists():  # resume: clips already in the index are kept
        done = {json.loads(line)["clip"] for line in index.read_text().splitlines() if line.strip()}
    for speaker, c in tqdm(world.clip_ids(split), desc=f"export {split}", unit="clip", disable=not progress):
        if fmt == "mp4":
            if not (root / f"{speaker:04d}" / f"{c:02d}.mp4").exists():
                write_mp4_clip(root, render_clip(world.seed, speaker, c, world.num_frames, world.image_size))
            continue
        if f"s{speaker:04d}_c{c:02d}" in done:
            continue
        clip = render_clip(world.seed, speaker, c, world.num_frames, world.image_size)
        entry = write_processed_clip(root, clip, split)
        with open(index, "a") as fh:  # one line per finished clip: survives interruption
            fh.write(json.dumps(entry) + "\n")
    return root


@cli_guard
def main(argv: list[str] | None = None) -> None:
    """``key=value`` arguments (see the module docstring)."""
    args = dict(a.split("=", 1) for a in (argv if argv is not None else sys.argv[1:]) if "=" in a)
    if "output_dir" not in args:
        raise PdfgcError("output_dir=... is required")
    ints = ("seed", "num_speakers", "heldout_speakers", "clips_per_speaker", "image_size")
    world = WorldConfig(**{k: int(args[k]) for k in ints if k in args},
                        **({"clip_seconds": float(args["clip_seconds"])} if "clip_seconds" in args else {}))
    out = export(args["output_dir"], world, args.get("split", "all"), args.get("format", "processed"))
    print(out)


if __name__ == "__main__":
    main()
