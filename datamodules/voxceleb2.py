"""VoxCeleb2 (or any processed talking-face data) as a LightningDataModule.

Reads the processed-data layout of ``preprocess.py`` (``root/index.jsonl``) or the PC-AVS /
official layout (frame folders + ``spectrograms.npy``, scanned; see
:mod:`datamodules.clip_index`) and yields, per ``mode``, exactly the samples of
:class:`datamodules.synthtalk.SynthTalkDataModule` without the ``gt_*`` keys (docs/design.md,
"Samples"), so no stage can tell the two apart. Sample ``i`` is a pure function of
``(seed, i)`` and of the data: with the same clips in the same order (a SynthTalk export read
back) it draws the same clips and frames as SynthTalk does.

Robustness: a clip whose files are missing, truncated or inconsistent is skipped with one
warning naming it and the reason; its draws are counted and redrawn, and the count is logged
at the end of every epoch and of training. Training goes on.
"""

from __future__ import annotations

import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.clip_index import ClipRecord, PackedRecords, load_index, split_speakers
from datamodules.clip_reader import ClipReader, CorruptClip, gaze_offset
from datamodules.resumable import ResumableLoader
from pdfgc.distributed import per_device_batch_size
from pdfgc.errors import PdfgcError
from pdfgc.losses.masks import EYE_STRIP, paste_strip
from pdfgc.video import official_crop

log = logging.getLogger(__name__)

MODES = ("reconstruction", "fine_motion", "emotion", "landmarks")
READER_CACHE = 512  # clip readers kept per worker (a reader holds the mel, labels and landmarks: ~100-200 KB)


def lip_steps(rng: np.random.Generator, num_frames: int, steps: int, min_gap: int) -> np.ndarray:
    """``steps`` sorted distinct frames at least ``min_gap`` apart, uniformly at random."""
    base = np.sort(rng.choice(num_frames - (steps - 1) * (min_gap - 1), steps, replace=False))
    return base + np.arange(steps) * (min_gap - 1)


def worker_init(worker_id: int) -> None:
    """Decoding workers: one torch thread each (workers are the parallelism), and Lightning's
    per-worker seeding (samples themselves depend only on ``(seed, index)``). OpenCV is made
    single-threaded in the parent before the fork (see ``_loader_options``): touching its thread
    pool in a forked child can deadlock on a lock a parent pool thread held at fork time."""
    from lightning_fabric.utilities.seed import pl_worker_init_function

    torch.set_num_threads(1)
    pl_worker_init_function(worker_id)


def emotion_label(record: ClipRecord) -> torch.Tensor:
    """The clip's emotion class as an int64 scalar; -1 for an unlabelled clip."""
    return torch.tensor(-1 if record.emotion is None else record.emotion, dtype=torch.int64)


def frame_label(labels: np.ndarray | None, t: int, width: int = 6) -> torch.Tensor:
    """Row ``t`` of a clip's per-frame labels ``(F, width)`` (the reader's ``pose`` or ``eyes``)
    as float32 ``(width,)``; NaN where the clip has no such file."""
    if labels is None:
        return torch.full((width,), float("nan"))
    return torch.from_numpy(np.asarray(labels[t], dtype=np.float32))


class VoxCeleb2Dataset(Dataset):
    """Random samples of one mode from processed clips.

    :param records: the clips to draw from (one split)
    :param speaker_ids: speaker name -> int64 label (identity classes: training speakers first)
    :param mode: ``reconstruction`` | ``fine_motion`` | ``emotion``
    :param length: samples per epoch
    :param seed: sample ``i`` depends only on ``(seed, i)``
    :param image_size: network input side S
    :param num_lip_steps: N time steps per clip in ``fine_motion``
    :param emotion_window: K consecutive frames in ``emotion``
    :param lip_min_gap: minimum distance in frames between the N lip time steps
    :param eye_gap: (min, max) frames between an eye triplet's positive and negative
    :param eye_blink_prob: share of eye triplets built around a closed eye (openness < 0.5), and of
        ``landmarks`` samples taken at one
    :param eye_min_difference: eye-state difference a triplet's two frames should reach
        (2 x summed openness change + summed iris shift in eye widths); the most different
        candidate is taken when none does
    :param max_redraws: draws per sample before giving up (each skipped draw is counted)
    """

    def __init__(self, records: list[ClipRecord], speaker_ids: dict[str, int], mode: str, length: int,
                 seed: int = 0, image_size: int = 224, num_lip_steps: int = 5, emotion_window: int = 5,
                 lip_min_gap: int = 3, eye_gap: tuple[int, int] = (2, 10), eye_blink_prob: float = 0.3,
                 eye_min_difference: float = 0.3, max_redraws: int = 20) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        self.records, self.speaker_ids, self.mode = PackedRecords(records), speaker_ids, mode
        self.length, self.seed, self.image_size = int(length), int(seed), int(image_size)
        self.num_lip_steps, self.emotion_window = int(num_lip_steps), int(emotion_window)
        self.lip_min_gap, self.eye_gap = max(int(lip_min_gap), 1), tuple(int(g) for g in eye_gap)
        self.eye_blink_prob, self.eye_min_difference = float(eye_blink_prob), float(eye_min_difference)
        self.max_redraws = int(max_redraws)
        # Eye openness is yielded only when every clip can give it (one key set per batch).
        self.with_eye_open = all(r.eyes or r.landmarks for r in records)
        # Shared memory: worker processes add to the same count the main process reports.
        self.skipped = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._readers: dict[int, ClipReader] = {}
        self._bad: dict[int, str] = {}

    def __len__(self) -> int:
        return self.length

    # ---- clips -----------------------------------------------------------------------------
    def reader(self, c: int) -> ClipReader:
        """The checked reader of clip ``c`` (cached); raises :class:`CorruptClip`."""
        if c in self._bad:
            raise CorruptClip(self._bad[c])
        if c not in self._readers:
            if len(self._readers) >= READER_CACHE:
                self._readers.pop(next(iter(self._readers)))
            self._readers[c] = ClipReader(self.records[c], self.image_size)
        return self._readers[c]

    def _skip(self, c: int, reason: str) -> None:
        self.skipped += 1
        if c not in self._bad:  # one warning per bad clip (per worker process)
            self._bad[c] = reason
            self._readers.pop(c, None)
            r = self.records[c]
            log.warning("skipping clip %s/%s: %s", r.speaker, r.clip, reason)

    # ---- samples ---------------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, int(index)])  # drawn exactly as SynthTalk draws
        c = int(rng.integers(len(self.records)))
        for attempt in range(1, self.max_redraws + 1):
            if c not in self._bad:
                try:
                    return self.sample(c, rng)
                except CorruptClip as exc:
                    self._skip(c, str(exc))
            else:
                self.skipped += 1
            if len(self._bad) >= len(self.records):
                break
            rng = np.random.default_rng([self.seed, int(index), attempt])
            if 2 * len(self._bad) < len(self.records):  # mostly good data: a uniform redraw is cheap
                c = int(rng.integers(len(self.records)))
            else:  # mostly bad: redraw among the clips not (yet) known to be bad in this process
                good = [k for k in range(len(self.records)) if k not in self._bad]
                c = good[int(rng.integers(len(good)))]
        raise PdfgcError(f"no usable clip found in {self.max_redraws} draws (last: {self._bad.get(c)}); "
                         f"{len(self._bad)} of {len(self.records)} clips are unusable: check the data root")

    def sample(self, c: int, rng: np.random.Generator) -> dict:
        """The sample of the dataset's mode from clip ``c`` with frames drawn from ``rng``."""
        reader = self.reader(c)
        record, F = self.records[c], reader.num_frames
        sample = {"speaker": torch.tensor(self.speaker_ids[record.speaker], dtype=torch.int64), "clip": record.clip}
        if self.mode == "landmarks":
            t = int(rng.integers(F))
            closed = np.nonzero(reader.eyes[:, :2].min(1) < 0.5)[0] if reader.eyes is not None else []
            if len(closed) and rng.uniform() < self.eye_blink_prob:  # shut lids are rare: show them more
                t = int(closed[rng.integers(len(closed))])
            frame = reader.image(t)
            sample.update(image=official_crop(frame, self.image_size),
                          landmarks=torch.from_numpy(reader.landmarks_at([t], frame.shape[:2])[0]),
                          emotion=emotion_label(record), pose=frame_label(reader.pose, t),
                          eyes=frame_label(reader.eyes, t))
        elif self.mode == "reconstruction":
            src, drv = rng.choice(F, 2, replace=False)
            images = reader.images([src, drv])
            sample.update(source=images[0], driver=images[1])
        elif self.mode == "fine_motion":
            ts = lip_steps(rng, F, self.num_lip_steps, self.lip_min_gap)
            sample.update(frames=reader.images(ts), mels=reader.windows(ts), pose=torch.from_numpy(reader.pose[ts]),
                          emotion=emotion_label(record))
            sample.update(self.eye_triplet(rng, reader))
        else:
            k = self.emotion_window
            start = int(rng.integers(F - k + 1))
            ts = np.arange(start, start + k)
            src = int(rng.integers(F))
            sample.update(frames=reader.images(ts), mels=reader.windows(ts), source=reader.images([src])[0],
                          emotion=emotion_label(record))
        return sample

    def eye_frames(self, rng: np.random.Generator, reader: ClipReader) -> tuple[int, int]:
        """Positive and negative frame of an eye triplet: close in time (``eye_gap``), the most
        different eye state (at least ``eye_min_difference`` where possible), a similar pose.
        Without eye state: a random frame in the gap."""
        F, eyes, pose = reader.num_frames, reader.eyes, reader.pose
        pos = int(rng.integers(F))
        if eyes is not None:
            closed = np.nonzero(eyes[:, :2].min(1) < 0.5)[0]
            if len(closed) and rng.uniform() < self.eye_blink_prob:
                pos = int(closed[rng.integers(len(closed))])
        lo, hi = self.eye_gap
        candidates = np.array([t for t in range(max(0, pos - hi), min(F, pos + hi + 1)) if abs(t - pos) >= lo])
        if eyes is None:
            neg = int(candidates[rng.integers(len(candidates))])
        else:
            diff = np.abs(eyes[candidates] - eyes[pos])
            eye = 2.0 * diff[:, :2].sum(1) + np.nan_to_num(diff[:, 2:], nan=0.0).sum(1)
            score = eye + rng.uniform(0, 0.05, len(eye))
            if pose is not None:  # pose change in rad (+ translation in side fractions x 10)
                score -= 2.0 * (np.abs(pose[candidates, :3] - pose[pos, :3]).sum(1)
                                + 10.0 * np.abs(pose[candidates, 3:5] - pose[pos, 3:5]).sum(1))
            score[eye < self.eye_min_difference] -= 1e3  # clearly different eyes first
            neg = int(candidates[int(np.argmax(score))])
        if rng.uniform() < 0.5:  # the blink (or the larger excursion) is not always the positive
            pos, neg = neg, pos
        return pos, neg

    def eye_triplet(self, rng: np.random.Generator, reader: ClipReader) -> dict[str, torch.Tensor]:
        """``eye_positive``, ``eye_negative`` (3, S, S) of :meth:`eye_frames`, ``eye_anchor`` = the
        negative with the positive's eye strip (:data:`pdfgc.losses.masks.EYE_STRIP`, where the
        alignment puts the eyes) pasted in, and ``eye_open`` (2,) of the positive when known."""
        pos, neg = self.eye_frames(rng, reader)
        positive, negative = reader.images([pos, neg])
        out = {"eye_positive": positive, "eye_negative": negative,
               "eye_anchor": paste_strip(negative, positive, EYE_STRIP)}
        if self.with_eye_open:
            out["eye_open"] = torch.from_numpy(np.ascontiguousarray(reader.eyes[pos, :2]))
            out["eye_gaze"] = torch.from_numpy(gaze_offset(reader.eyes[pos]))
        return out


class CountingLoader(ResumableLoader):
    """The resumable training loader, logging the skipped-sample count at the end of each epoch."""

    def __iter__(self):
        dataset, before = self.dataset, int(self.dataset.skipped)
        yield from super().__iter__()
        log.info("epoch done: %d draws of unusable clips skipped and redrawn (%d in all)",
                 int(dataset.skipped) - before, int(dataset.skipped))


class VoxCeleb2DataModule(pl.LightningDataModule):
    """Processed real data for the training stages; validation and test on held-out speakers.

    Every argument is documented in ``configs/data/voxceleb2.yaml``; the sampling ones are those
    of :class:`VoxCeleb2Dataset`. ``root`` is required (``preprocess.py``'s output folder).
    ``batch_size`` is global: each of the trainer's processes loads ``batch_size // world_size``.
    """

    def __init__(self, root: str | None = None, mode: str = "reconstruction", image_size: int = 224,
                 seed: int = 0, batch_size: int = 32, num_workers: int = 8, samples_per_epoch: int = 1_000_000,
                 val_samples: int = 256, num_lip_steps: int = 5, emotion_window: int = 5, lip_min_gap: int = 3,
                 eye_gap: tuple[int, int] = (2, 10), eye_blink_prob: float = 0.3, eye_min_difference: float = 0.3,
                 heldout_fraction: float = 0.02, pin_memory: bool = True, persistent_workers: bool = True,
                 prefetch_factor: int = 4) -> None:
        super().__init__()
        if mode not in MODES:
            raise PdfgcError(f"unknown data mode {mode!r}; one of {', '.join(MODES)}")
        self.root, self.mode, self.image_size, self.seed = root, mode, int(image_size), int(seed)
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.batch_size_per_device = self.batch_size
        self.samples_per_epoch, self.val_samples = int(samples_per_epoch), int(val_samples)
        self.sampling = dict(num_lip_steps=num_lip_steps, emotion_window=emotion_window, lip_min_gap=lip_min_gap,
                             eye_gap=tuple(eye_gap), eye_blink_prob=eye_blink_prob,
                             eye_min_difference=eye_min_difference)
        self.heldout_fraction = float(heldout_fraction)
        self.pin_memory, self.persistent_workers, self.prefetch_factor = pin_memory, persistent_workers, prefetch_factor
        self.splits: dict[str, list[ClipRecord]] = {}
        self.speaker_ids: dict[str, int] = {}
        self.datasets: dict[str, VoxCeleb2Dataset] = {}

    # ---- index -----------------------------------------------------------------------------
    def min_frames(self) -> int:
        """Shortest clip the mode can sample from."""
        s = self.sampling
        if self.mode == "fine_motion":
            return max((s["num_lip_steps"] - 1) * max(s["lip_min_gap"], 1) + 1, s["eye_gap"][0] + 1)
        if self.mode == "emotion":
            return s["emotion_window"]
        return 2

    def usable(self, records: list[ClipRecord]) -> list[ClipRecord]:
        """Records the mode can use; the others are counted and logged."""
        need = self.min_frames()
        short = [r for r in records if r.num_frames < need]
        no_pose = [r for r in records if r.pose is None] if self.mode == "fine_motion" else []
        no_landmarks = [r for r in records if r.landmarks is None] if self.mode == "landmarks" else []
        if short:
            log.warning("%d clips shorter than the %d frames %s sampling needs are left out", len(short), need, self.mode)
        if no_pose:
            log.warning("%d clips without pose.npy are left out of fine_motion (pose labels; run preprocess.py)",
                        len(no_pose))
        if no_landmarks:
            log.warning("%d clips without landmarks.npy are left out of landmark pre-training (run preprocess.py)",
                        len(no_landmarks))
        left_out = {id(r) for r in short + no_pose + no_landmarks}
        return [r for r in records if id(r) not in left_out]

    def setup(self, stage: str | None = None) -> None:
        # The global batch split over the trainer's processes (same recipe on 1 or 64 GPUs).
        self.batch_size_per_device = per_device_batch_size(
            self.batch_size, self.trainer.world_size if self.trainer is not None else 1)
        if self.splits:
            return
        records = load_index(self.root)
        speakers = split_speakers(records, self.heldout_fraction)
        ordered = [*speakers["train"], *speakers["val"], *[s for s in speakers["test"] if s not in speakers["val"]]]
        self.speaker_ids = {s: i for i, s in enumerate(ordered)}
        usable = self.usable(sorted(records, key=lambda r: (r.speaker, r.clip)))
        for split, names in speakers.items():
            names = set(names)
            self.splits[split] = [r for r in usable if r.speaker in names]
        if not self.splits["train"]:
            raise PdfgcError(f"no usable training clips in {self.root} for mode {self.mode} "
                             f"({len(records)} clips indexed; see the warnings above)")
        if not any(r.eyes or r.landmarks for r in self.splits["train"]) and self.mode == "fine_motion":
            log.warning("no eyes.npy or landmarks.npy: eye triplets use a random frame %s apart and no eye "
                        "openness target (PC-AVS layout)", self.sampling["eye_gap"])
        log.info("%s: %s", self.root, ", ".join(
            f"{k} {len(v)} clips / {len(speakers[k])} speakers" for k, v in self.splits.items()))

    def dataset(self, split: str, length: int, seed_offset: int = 0) -> VoxCeleb2Dataset:
        """The ``split`` samples (cached per split); seeds as SynthTalk's (``seed * 1000 + offset``)."""
        self.setup()
        if split not in self.datasets:
            records = self.splits[split] or self.splits["train"]
            if not self.splits[split]:
                log.warning("no %s speakers: %s uses training clips", split, split)
            self.datasets[split] = VoxCeleb2Dataset(records, self.speaker_ids, self.mode, length,
                                                    self.seed * 1000 + seed_offset, self.image_size, **self.sampling)
        return self.datasets[split]

    # ---- loaders ---------------------------------------------------------------------------
    def _loader_options(self) -> dict:
        workers = self.num_workers > 0
        if workers:
            import cv2

            # Workers are the decoding parallelism; a single-threaded OpenCV in the parent also
            # means forked workers inherit no thread pool (resizing one in a child can deadlock).
            cv2.setNumThreads(1)
        return dict(batch_size=self.batch_size_per_device, num_workers=self.num_workers, pin_memory=self.pin_memory,
                    persistent_workers=self.persistent_workers and workers, worker_init_fn=worker_init,
                    prefetch_factor=self.prefetch_factor if workers else None)

    def train_dataloader(self) -> DataLoader:
        # The resumable loader walks indices in order, restarts where a checkpoint left it and
        # gives DDP rank r the indices r, r + world, ... (samples are random per index).
        return CountingLoader(self.dataset("train", self.samples_per_epoch), drop_last=True, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("val", self.val_samples, seed_offset=1), shuffle=False,
                          **self._loader_options())

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("test", self.val_samples, seed_offset=2), shuffle=False,
                          **self._loader_options())

    def teardown(self, stage: str | None = None) -> None:
        for split, ds in self.datasets.items():
            if int(ds.skipped):
                log.warning("%s: %d draws of unusable clips were skipped", split, int(ds.skipped))
