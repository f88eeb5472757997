"""SynthTalk as a LightningDataModule: the samples each stage needs, with ground truth.

Yields exactly the keys of the VoxCeleb2 datamodule (docs/design.md, "Samples") for the
configured ``mode``, plus ground truth under ``gt_*`` keys, so a stage cannot tell them apart.
Every sample is a pure function of ``(seed, index)``: runs are reproducible and DDP ranks,
which get different indices from the distributed sampler, see different data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.clip_reader import gaze_offset
from datamodules.resumable import ResumableLoader
from pdfgc.distributed import per_device_batch_size
from pdfgc.synthtalk.world import ClipPool, WorldConfig, load_or_render_pool

log = logging.getLogger(__name__)

MODES = ("reconstruction", "fine_motion", "emotion", "landmarks")
SOURCE_FROM = ("clip", "speaker")


def to_image(u8: np.ndarray) -> torch.Tensor:
    """(…, S, S, 3) uint8 -> (…, 3, S, S) float32 in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(u8)).float().div_(127.5).sub_(1.0)
    return t.movedim(-1, -3)


def eye_state_row(blink: np.ndarray, gaze: np.ndarray) -> np.ndarray:
    """One frame's eye state as the VoxCeleb2 reader gives it, ``(6,)`` float32: openness of
    each eye (1 - closure) and the iris offsets of ``eyes.npy`` (eye widths)."""
    from pdfgc.synthtalk.export import eye_state

    row = eye_state(np.asarray(blink)[None], np.asarray(gaze)[None])[0]
    row[:2] = 1.0 - np.asarray(blink, np.float32)
    return row


def paste_eyes(negative: np.ndarray, positive: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The eye-triplet anchor: ``negative`` with ``positive``'s eye strip pasted in.

    :param boxes: (K, 4) pixel boxes (x0, y0, x1, y1) of the eyes of both frames; the strip is
        their union, so it covers both eyes of both frames.
    """
    x0, y0 = np.floor(boxes[:, :2].min(0)).astype(int)
    x1, y1 = np.ceil(boxes[:, 2:].max(0)).astype(int)
    h, w = negative.shape[:2]
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    anchor = negative.copy()
    anchor[y0:y1, x0:x1] = positive[y0:y1, x0:x1]
    return anchor


class SynthTalkDataset(Dataset):
    """Random samples of one mode drawn from a :class:`ClipPool`.

    :param pool: the rendered split
    :param mode: ``reconstruction`` | ``fine_motion`` | ``emotion``
    :param length: samples per epoch
    :param seed: sample ``i`` depends only on ``(seed, i)``
    :param num_lip_steps: N time steps per clip in ``fine_motion`` (1 positive + N-1 negatives each)
    :param emotion_window: K consecutive frames in ``emotion``
    :param eye_gap: (min, max) frames between the eye triplet's positive and negative
    :param lip_min_gap: minimum distance in frames between the N lip time steps, so that no
        negative is a near-copy of its positive (adjacent frames look and sound alike)
    :param eye_blink_prob: probability that an eye triplet is built around a blink (lid closed
        > 50 % in the positive or the negative), and that a ``landmarks`` sample is a blink frame
        of its clip; blinks cover only ~3 % of frames otherwise
    :param source_from: where the ``source`` frame (``reconstruction``, ``emotion``) comes from:
        ``clip``, another frame of the driver's clip (the release), or ``speaker``, a frame of
        another clip of the same speaker. SynthTalk draws emotion and the pose range per clip, so a
        same-clip source already shows them and the generator need not read them from the codes.
    """

    def __init__(self, pool: ClipPool, mode: str, length: int, seed: int = 0, num_lip_steps: int = 5,
                 emotion_window: int = 5, eye_gap: tuple[int, int] = (2, 10), lip_min_gap: int = 3,
                 eye_blink_prob: float = 0.3, source_from: str = "clip") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        if source_from not in SOURCE_FROM:
            raise ValueError(f"unknown source_from {source_from!r}; one of {SOURCE_FROM}")
        lip_min_gap = max(int(lip_min_gap), 1)
        need = max((num_lip_steps - 1) * lip_min_gap + 1, emotion_window, eye_gap[1] + 1)
        if pool.num_frames < need:
            raise ValueError(f"clips of {pool.num_frames} frames are too short for this sampling (need {need})")
        self.pool, self.mode, self.length, self.seed = pool, mode, int(length), int(seed)
        self.num_lip_steps, self.emotion_window, self.eye_gap = num_lip_steps, emotion_window, tuple(eye_gap)
        self.lip_min_gap, self.eye_blink_prob = lip_min_gap, float(eye_blink_prob)
        self.source_from = source_from

    def __len__(self) -> int:
        return self.length

    def source_clip(self, rng: np.random.Generator, c: int) -> int:
        """The clip the source frame comes from: ``c`` itself, or (``source_from=speaker``) another
        clip of ``c``'s speaker (``c`` when the speaker has one clip)."""
        if self.source_from == "clip":
            return c
        speakers = np.asarray(self.pool.speakers)
        others = np.nonzero(speakers == speakers[c])[0]
        others = others[others != c]
        return int(others[rng.integers(len(others))]) if len(others) else c

    def ground_truth(self, c: int, t) -> dict[str, torch.Tensor]:
        p = self.pool
        t = np.asarray(t)
        out = {f"gt_{k}": torch.as_tensor(np.array(getattr(p, k)[c, t]))
               for k in ("pose", "gaze", "blink", "mouth", "emotion_intensity")}
        out["gt_emotion"] = torch.full(t.shape, int(p.emotion[c]), dtype=torch.int64)
        return out

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])
        p = self.pool
        c = int(rng.integers(len(p)))
        F = p.num_frames
        sample = {"speaker": torch.tensor(int(p.speakers[c])), "clip": p.name(c)}
        if self.mode == "landmarks":
            t = int(rng.integers(F))
            closed = np.nonzero(p.blink[c].max(1) > 0.5)[0]
            if len(closed) and rng.uniform() < self.eye_blink_prob:  # lids shut are rare: show them more
                t = int(closed[rng.integers(len(closed))])
            sample.update(image=to_image(p.images[c, t]), landmarks=torch.from_numpy(p.landmarks[c, t]),
                          emotion=torch.tensor(int(p.emotion[c])), pose=torch.from_numpy(p.pose[c, t]),
                          eyes=torch.from_numpy(eye_state_row(p.blink[c, t], p.gaze[c, t])))
            sample.update(self.ground_truth(c, t))
        elif self.mode == "reconstruction":
            src, drv = rng.choice(F, 2, replace=False)
            sample.update(source=to_image(p.images[self.source_clip(rng, c), src]), driver=to_image(p.images[c, drv]))
            sample.update(self.ground_truth(c, drv))
        elif self.mode == "fine_motion":
            ts = self.lip_steps(rng, F)
            sample.update(frames=to_image(p.images[c, ts]), mels=torch.from_numpy(p.windows[c, ts]),
                          pose=torch.from_numpy(p.pose[c, ts]), emotion=torch.tensor(int(p.emotion[c])))
            sample.update(self.eye_triplet(rng, c))
            sample.update(self.ground_truth(c, ts))
        else:
            k = self.emotion_window
            start = int(rng.integers(F - k + 1))
            ts = np.arange(start, start + k)
            src = int(rng.integers(F))
            sample.update(frames=to_image(p.images[c, ts]), mels=torch.from_numpy(p.windows[c, ts]),
                          source=to_image(p.images[self.source_clip(rng, c), src]),
                          emotion=torch.tensor(int(p.emotion[c])))
            sample.update(self.ground_truth(c, ts))
        return sample

    def lip_steps(self, rng: np.random.Generator, num_frames: int) -> np.ndarray:
        """N sorted distinct frame indices at least ``lip_min_gap`` apart, uniformly at random."""
        n, g = self.num_lip_steps, self.lip_min_gap
        base = np.sort(rng.choice(num_frames - (n - 1) * (g - 1), n, replace=False))
        return base + np.arange(n) * (g - 1)

    def eye_triplet(self, rng: np.random.Generator, c: int) -> dict[str, torch.Tensor]:
        """Positive and negative from the same clip, close in time, with similar pose and the
        most different eye state among the candidates; anchor = negative + positive's eyes.

        With probability ``eye_blink_prob`` one of the two is a blink frame (the positive or the
        negative, at random), since blinks are otherwise rare.
        """
        p = self.pool
        F = p.num_frames
        pos = int(rng.integers(F))
        closed = np.nonzero(p.blink[c].max(1) > 0.5)[0]
        if len(closed) and rng.uniform() < self.eye_blink_prob:
            pos = int(closed[rng.integers(len(closed))])
        lo, hi = self.eye_gap
        candidates = np.array([t for t in range(max(0, pos - hi), min(F, pos + hi + 1)) if abs(t - pos) >= lo])
        # Eye difference (gaze in rad + blink, weighted up) minus a penalty on the pose change.
        eye = np.abs(p.gaze[c, candidates] - p.gaze[c, pos]).sum(1) \
            + 2.0 * np.abs(p.blink[c, candidates] - p.blink[c, pos]).sum(1)
        pose = np.abs(p.pose[c, candidates, :3] - p.pose[c, pos, :3]).sum(1) \
            + 10.0 * np.abs(p.pose[c, candidates, 3:5] - p.pose[c, pos, 3:5]).sum(1)
        neg = int(candidates[int(np.argmax(eye - 2.0 * pose + rng.uniform(0, 0.05, len(eye))))])
        if rng.uniform() < 0.5:  # the blink (or the larger gaze excursion) is not always the positive
            pos, neg = neg, pos
        boxes = np.concatenate([p.eye_boxes[c, pos], p.eye_boxes[c, neg]])
        anchor = paste_eyes(p.images[c, neg], p.images[c, pos], boxes)
        return {"eye_positive": to_image(p.images[c, pos]), "eye_negative": to_image(p.images[c, neg]),
                "eye_anchor": to_image(anchor), "eye_open": torch.from_numpy(1.0 - p.blink[c, pos]),
                "eye_gaze": torch.from_numpy(gaze_offset(eye_state_row(p.blink[c, pos], p.gaze[c, pos])))}


class SynthTalkDataModule(pl.LightningDataModule):
    """SynthTalk for the training stages (train speakers) and validation/test (held-out speakers).

    World arguments (``seed``, ``num_speakers``, ``heldout_speakers``, ``clips_per_speaker``,
    ``clip_seconds``, ``image_size``) are those of :class:`WorldConfig`; see
    ``configs/data/synthtalk.yaml`` for every field. ``batch_size`` is global: each of the
    trainer's ``world_size`` processes loads ``batch_size // world_size`` samples per step.
    """

    def __init__(self, mode: str = "reconstruction", image_size: int = 64, seed: int = 0,
                 num_speakers: int = 200, heldout_speakers: int = 40, clips_per_speaker: int = 4,
                 clip_seconds: float = 1.0, batch_size: int = 16, num_workers: int = 0,
                 samples_per_epoch: int = 100_000, val_samples: int = 64, num_lip_steps: int = 5,
                 emotion_window: int = 5, cache_dir: str | None = None, render_workers: int = 2,
                 pin_memory: bool = False, lip_min_gap: int = 3, eye_blink_prob: float = 0.3,
                 source_from: str = "clip") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown data mode {mode!r}; one of {MODES}")
        self.world = WorldConfig(seed, num_speakers, heldout_speakers, clips_per_speaker, clip_seconds, image_size)
        self.mode, self.batch_size, self.num_workers = mode, batch_size, num_workers
        self.batch_size_per_device = batch_size
        self.samples_per_epoch, self.val_samples = samples_per_epoch, val_samples
        self.num_lip_steps, self.emotion_window = num_lip_steps, emotion_window
        self.cache_dir, self.render_workers, self.pin_memory = cache_dir, render_workers, pin_memory
        self.lip_min_gap, self.eye_blink_prob = lip_min_gap, eye_blink_prob
        self.source_from = source_from
        self.pools: dict[str, ClipPool] = {}

    def prepare_data(self) -> None:
        # Rank 0 renders and caches; the other ranks load the cache in setup().
        if self.cache_dir:
            for split in ("train", "test"):
                load_or_render_pool(self.world, split, self.cache_dir, self.render_workers)

    def setup(self, stage: str | None = None) -> None:
        # Under DDP every process runs setup() with the trainer attached; the split keeps the
        # global batch (and so the recipe) the same on 1, 8 or 64 devices.
        world_size = self.trainer.world_size if self.trainer is not None else 1
        self.batch_size_per_device = per_device_batch_size(self.batch_size, world_size)

    def pool(self, split: str) -> ClipPool:
        if split not in self.pools:
            self.pools[split] = load_or_render_pool(self.world, split, self.cache_dir, self.render_workers)
        return self.pools[split]

    def dataset(self, split: str, length: int, seed_offset: int = 0) -> SynthTalkDataset:
        return SynthTalkDataset(self.pool(split), self.mode, length, self.world.seed * 1000 + seed_offset,
                                self.num_lip_steps, self.emotion_window,
                                lip_min_gap=self.lip_min_gap, eye_blink_prob=self.eye_blink_prob,
                                source_from=self.source_from)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size_per_device, shuffle=shuffle, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, drop_last=shuffle,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        # Samples are already random per index; the resumable loader walks indices in order
        # and restarts exactly where a checkpoint left it (and splits them across DDP ranks).
        return ResumableLoader(self.dataset("train", self.samples_per_epoch), batch_size=self.batch_size_per_device,
                               num_workers=self.num_workers, pin_memory=self.pin_memory, drop_last=True,
                               persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", self.val_samples, seed_offset=1), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test", self.val_samples, seed_offset=2), shuffle=False)
