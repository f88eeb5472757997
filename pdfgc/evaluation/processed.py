"""Read test clips of the processed-data layout (docs/design.md) for evaluation.

A small reader of its own (the VoxCeleb2 datamodule is not merged yet): ``index.jsonl`` entries
of one split, the frames as the generator sees them (official crop at its side) and the audio.
Broken entries (missing folder, no frames, no audio) are skipped, counted and logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pdfgc.errors import PdfgcError

log = logging.getLogger("pdfgc.evaluate")


@dataclass(frozen=True)
class EvalClip:
    """One clip of a processed test set (absolute paths)."""

    clip_id: str  # "<speaker>/<clip>", unique
    speaker: str
    frames_dir: Path
    audio: Path
    num_frames: int

    @property
    def portrait(self) -> Path:
        """The first frame: the appearance source when this clip is the source."""
        from pdfgc.video import list_frame_files

        return list_frame_files(self.frames_dir)[0]


def read_test_clips(root: str | Path, split: str | None = "test", max_clips: int | None = None) -> list[EvalClip]:
    """Clips of ``split`` (``None``: all) listed in ``root/index.jsonl``, in index order.

    Raises:
        PdfgcError: no index, or no usable clip of that split.
    """
    root = Path(root)
    index = root / "index.jsonl"
    if not index.is_file():
        raise PdfgcError(f"test set index not found: {index} (a processed-data folder: preprocess.py or "
                         "the SynthTalk export)")
    clips, skipped = [], 0
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            if split is not None and e.get("split") != split:
                continue
            frames_dir, audio = root / e["frames_dir"], root / e["audio"]
            if not frames_dir.is_dir() or not audio.is_file() or int(e["num_frames"]) < 1:
                raise FileNotFoundError(f"{frames_dir} or {audio}")
        except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
            skipped += 1
            log.warning("skipping test-set entry %d of %s: %s", n, index, exc)
            continue
        clips.append(EvalClip(f"{e['speaker']}/{e['clip']}", str(e["speaker"]), frames_dir, audio,
                              int(e["num_frames"])))
        if max_clips is not None and len(clips) >= max_clips:
            break
    if skipped:
        log.warning("%d broken test-set entries skipped", skipped)
    if not clips:
        raise PdfgcError(f"no usable {split or ''} clips in {index}".replace("  ", " "))
    return clips


def read_clip_frames(clip: EvalClip, size: int, max_frames: int | None = None) -> np.ndarray:
    """``(T, size, size, 3)`` uint8 RGB: the clip's frames through the official crop at ``size``
    (what the generator's output is compared with)."""
    from pdfgc.video import list_frame_files, official_crop, read_image, to_uint8

    files = list_frame_files(clip.frames_dir)[:max_frames]
    return np.stack([to_uint8(official_crop(read_image(f), size)) for f in files])


def cross_pairs(clips: list[EvalClip], num_pairs: int) -> list[tuple[EvalClip, EvalClip]]:
    """Deterministic (source, driver) pairs with different speakers: source ``i`` with the next
    clip of another speaker; at most ``num_pairs``."""
    pairs = []
    for i, src in enumerate(clips):
        for k in range(1, len(clips)):
            drv = clips[(i + k) % len(clips)]
            if drv.speaker != src.speaker:
                pairs.append((src, drv))
                break
        if len(pairs) >= num_pairs:
            break
    return pairs
