"""Test clips of a processed-data root (docs/design.md) for evaluation: the clips of one split
(through the datamodules' clip index), their frames as the generator sees them (official crop at
its side) and their audio. Broken clips (no frames, no audio) are skipped, counted and logged.
"""

from __future__ import annotations

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
    """Clips of ``split`` (``None``: all) of a processed root, in index order.

    The clip index is the datamodules' (``datamodules.clip_index.load_index``: ``index.jsonl``,
    or a scan of the PC-AVS layout); each clip's audio is ``audio.wav`` in its clip folder.

    Raises:
        PdfgcError: no such folder, no index / clip folders, or no usable clip of that split.
    """
    from datamodules.clip_index import FRAME_SUBFOLDERS, load_index

    root = Path(root)
    if not root.is_dir():
        raise PdfgcError(f"test set not found: {root} (a processed-data folder: preprocess.py or the SynthTalk export)")
    clips, skipped = [], 0
    for r in load_index(root):
        if split is not None and r.split != split:
            continue
        frames_dir = Path(r.frames_dir)
        clip_dir = frames_dir.parent if frames_dir.name in FRAME_SUBFOLDERS else frames_dir
        audio = clip_dir / "audio.wav"
        if not frames_dir.is_dir() or not audio.is_file() or r.num_frames < 1:
            skipped += 1
            log.warning("skipping test clip %s/%s: no frames or no %s", r.speaker, r.clip, audio)
            continue
        clips.append(EvalClip(f"{r.speaker}/{r.clip}", r.speaker, frames_dir, audio, r.num_frames))
        if max_clips is not None and len(clips) >= max_clips:
            break
    if skipped:
        log.warning("%d test clips without frames or audio skipped", skipped)
    if not clips:
        raise PdfgcError(f"no usable {split + ' ' if split else ''}clips in {root}")
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
