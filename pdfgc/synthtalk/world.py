"""The SynthTalk world: speakers, splits, and the rendered clip pool with its disk cache.

Rendering is the only costly part of SynthTalk, so each split is rendered once into a
:class:`ClipPool` (frames already through the official crop, audio windows precomputed) and
cached on disk under a key of every setting; stages, evaluation and later runs reuse it and
training stays compute-bound.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import multiprocessing as mp
import numpy as np
import torch

from pdfgc import audio as audio_fe
from pdfgc.io import atomic_path
from pdfgc.synthtalk.clips import Clip, render_clip

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CACHE_VERSION = 6  # bump when rendering changes, so stale caches are not reused


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the rendered data.

    :param seed: world seed (identities and every factor stream)
    :param num_speakers: training speakers (ids 0 .. num_speakers-1)
    :param heldout_speakers: evaluation speakers, disjoint (ids after the training ones)
    :param clips_per_speaker: clips per speaker
    :param clip_seconds: clip length (frames = round(seconds * 25))
    :param image_size: side of the network input (frames are rendered at this size, then cropped)
    """

    seed: int = 0
    num_speakers: int = 200
    heldout_speakers: int = 40
    clips_per_speaker: int = 4
    clip_seconds: float = 1.0
    image_size: int = 64

    @property
    def num_frames(self) -> int:
        return int(round(self.clip_seconds * 25))

    def speakers(self, split: str) -> range:
        if split == "train":
            return range(self.num_speakers)
        if split == "test":
            return range(self.num_speakers, self.num_speakers + self.heldout_speakers)
        raise ValueError(f"unknown split {split!r} (train | test)")

    def clip_ids(self, split: str) -> list[tuple[int, int]]:
        return [(s, c) for s in self.speakers(split) for c in range(self.clips_per_speaker)]

    def render_clip(self, speaker: int, clip: int) -> Clip:
        """Clip ``clip`` of ``speaker``: aligned frames (F, S, S, 3) uint8, waveform, mel, ground
        truth and eye/mouth boxes (see :class:`pdfgc.synthtalk.clips.Clip`)."""
        return render_clip(self.seed, speaker, clip, self.num_frames, self.image_size)

    def clips(self, split: str) -> Iterator[Clip]:
        """Every clip of ``split`` in order (rendered lazily, one at a time)."""
        for speaker, clip in self.clip_ids(split):
            yield self.render_clip(speaker, clip)

    def cache_key(self, split: str) -> str:
        blob = json.dumps({**asdict(self), "split": split, "version": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def crop_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """Map pixel boxes (..., 4) of the aligned frame into the officially cropped frame."""
    from pdfgc.video import crop_box

    top, left, side = crop_box(size)
    scale = size / side
    out = boxes.astype(np.float32).copy()
    out[..., 0::2] = (out[..., 0::2] - left) * scale
    out[..., 1::2] = (out[..., 1::2] - top) * scale
    return out


def crop_points(points: np.ndarray, size: int) -> np.ndarray:
    """Map pixel points (..., 2) (x, y) of the aligned ``size`` frame into the officially cropped frame."""
    from pdfgc.video import crop_points as crop

    return crop(points, (size, size), size)


class ClipPool:
    """All clips of one split as stacked arrays (C clips, F frames each).

    ``images (C, F, S, S, 3)`` uint8 after the official crop, ``windows (C, F, 1, 80, 20)``
    float32 (``frame_windows``), ground truth ``(C, F, ...)``, ``emotion (C,)``,
    ``eye_boxes (C, F, 2, 4)``, ``mouth_box (C, F, 4)`` and ``landmarks (C, F, 70, 2)`` in
    cropped-frame pixels,
    ``speakers``/``clips (C,)``.
    """

    ARRAYS = ("images", "windows", "pose", "gaze", "blink", "mouth", "mouth_drawn", "emotion_intensity",
              "emotion", "eye_boxes", "mouth_box", "landmarks", "speakers", "clips")

    def __init__(self, arrays: dict[str, np.ndarray]):
        missing = [k for k in self.ARRAYS if k not in arrays]
        if missing:
            raise ValueError(f"clip pool lacks {missing}")
        for k in self.ARRAYS:
            setattr(self, k, arrays[k])

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_frames(self) -> int:
        return self.images.shape[1]

    def name(self, c: int) -> str:
        return f"s{int(self.speakers[c]):04d}_c{int(self.clips[c]):02d}"

    @classmethod
    def from_clips(cls, clips: list[Clip], image_size: int) -> "ClipPool":
        from pdfgc.video import official_crop

        def crop_u8(frames: np.ndarray) -> np.ndarray:
            t = torch.stack([official_crop(f, image_size) for f in frames])
            return ((t.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()

        arrays = {
            "images": np.stack([crop_u8(c.frames) for c in clips]),
            "windows": np.stack([audio_fe.frame_windows(c.mel, c.num_frames).numpy() for c in clips]),
            "emotion": np.array([c.emotion for c in clips], np.int64),
            "eye_boxes": np.stack([crop_boxes(c.eye_boxes, image_size) for c in clips]),
            "mouth_box": np.stack([crop_boxes(c.mouth_box, image_size) for c in clips]),
            "landmarks": np.stack([crop_points(c.landmarks, image_size) for c in clips]),
            "speakers": np.array([c.speaker for c in clips], np.int64),
            "clips": np.array([c.clip for c in clips], np.int64),
        }
        for key in ("pose", "gaze", "blink", "mouth", "mouth_drawn", "emotion_intensity"):
            arrays[key] = np.stack([getattr(c, key) for c in clips]).astype(np.float32)
        return cls(arrays)

    def save(self, path: Path) -> None:
        """Write the pool as one torch file of tensors (atomically: an interrupted write leaves
        no file under ``path``)."""
        with atomic_path(path) as tmp:
            torch.save({k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in self.ARRAYS}, tmp)

    @classmethod
    def load(cls, path: Path) -> "ClipPool":
        """Memory-map a saved pool: instant whatever its size (the train pool of the demo is 1.1 GB;
        ``np.load`` of an ``.npz`` took 11 s, twice per stage), pages read when a sample needs
        them, shared with forked loader workers; copy-on-write, so the arrays stay writable."""
        arrays = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        return cls({k: v.numpy() for k, v in arrays.items()})


def _render_job(args) -> Clip:
    seed, speaker, clip, num_frames, size = args
    return render_clip(seed, speaker, clip, num_frames, size)


def render_clips(cfg: WorldConfig, split: str, workers: int = 1, progress: bool = True) -> Iterator[Clip]:
    """Render every clip of ``split`` (in order), in ``workers`` processes, with a progress bar."""
    jobs = [(cfg.seed, s, c, cfg.num_frames, cfg.image_size) for s, c in cfg.clip_ids(split)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"SynthTalk {split} clips", unit="clip", leave=False)
    try:
        if workers <= 1:
            for job in jobs:
                yield _render_job(job)
                if bar:
                    bar.update()
        else:
            # fork: the workers only run numpy; no CUDA context exists in a data-prep process.
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                for clip in pool.map(_render_job, jobs, chunksize=4):
                    yield clip
                    if bar:
                        bar.update()
    finally:
        if bar:
            bar.close()


def load_or_render_pool(cfg: WorldConfig, split: str, cache_dir: str | os.PathLike | None,
                        workers: int = 1) -> ClipPool:
    """The split's pool from ``cache_dir`` when cached, else rendered (and cached)."""
    path = Path(cache_dir) / f"synthtalk_{split}_{cfg.cache_key(split)}.pt" if cache_dir else None
    if path is not None and path.exists():
        try:
            return ClipPool.load(path)
        except Exception as exc:  # a damaged cache is re-rendered, not fatal
            log.warning("SynthTalk cache %s unreadable (%s); re-rendering", path, exc.__class__.__name__)
    pool = ClipPool.from_clips(list(render_clips(cfg, split, workers)), cfg.image_size)
    if path is not None:
        pool.save(path)
        log.info("SynthTalk %s pool cached at %s", split, path)
    return pool
