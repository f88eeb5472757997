"""The clip index of a processed-data root: ``index.jsonl`` or a scan of the PC-AVS layout.

Two layouts are read (docs/design.md, "Processed-data layout"):

* ours, written by ``preprocess.py`` and SynthTalk's export: ``root/index.jsonl``, one JSON
  object per clip with paths relative to ``root``;
* PC-AVS / the official release's: no index, one folder per clip holding ``spectrograms.npy``
  and its frames ``{:04d}.jpg`` / ``{:06d}.jpg`` (directly or in ``frames/`` / ``images/``).
  The folders are scanned once; the result is cached as ``root/index_scanned.jsonl`` when the
  root is writable (atomically), so later runs start at once.

Splits are by speaker. An index carries ``split`` (``train`` | ``test``); a scanned tree takes
it from a top-level ``test`` / ``dev`` / ``train`` folder (the VoxCeleb2 download layout), and
a tree with no held-out speakers at all holds out a fixed share of speakers chosen by a hash of
their name. Validation and test speakers are disjoint halves of the held-out speakers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pdfgc.errors import PdfgcError
from pdfgc.io import atomic_write_text
from pdfgc.video import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
SCANNED_INDEX_NAME = "index_scanned.jsonl"
SPLIT_FOLDERS = {"test": "test", "dev": "train", "train": "train"}  # top-level folders of VoxCeleb2
FRAME_SUBFOLDERS = ("frames", "images")


@dataclass(frozen=True)
class ClipRecord:
    """One clip of the index; paths are absolute (``None`` where the file is not provided)."""

    speaker: str
    clip: str
    split: str
    num_frames: int
    frames_dir: str
    spectrogram: str
    pose: str | None = None
    eyes: str | None = None
    landmarks: str | None = None
    emotion: int | None = None  # class id of an emotion-labelled corpus (MEAD order), None = unlabelled


class PackedRecords(Sequence):
    """Clip records packed in one byte buffer (JSON per record) with offsets.

    VoxCeleb2 has ~1.1 M clips: as a list of Python objects, every DataLoader worker would end
    up with its own copy (reference counting writes to the forked pages); one numpy buffer is
    shared as it is. A record is parsed on access (microseconds, next to a JPEG decode).
    """

    def __init__(self, records: list[ClipRecord]) -> None:
        blobs = [json.dumps(asdict(r), separators=(",", ":")).encode() for r in records]
        self.offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self.buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> ClipRecord:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return ClipRecord(**json.loads(self.buffer[self.offsets[i]:self.offsets[i + 1]].tobytes()))


def _absolute(root: Path, value) -> str | None:
    return str(root / value) if value else None


def parse_index(root: Path, path: Path) -> list[ClipRecord]:
    """Records of ``index.jsonl`` (later lines win for a repeated clip: a re-processed clip).

    Malformed lines are skipped with a warning (an interrupted writer can leave a partial line).
    """
    records: dict[str, ClipRecord] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            record = ClipRecord(
                speaker=str(entry["speaker"]), clip=str(entry["clip"]), split=str(entry.get("split") or "train"),
                num_frames=int(entry["num_frames"]), frames_dir=str(root / entry["frames_dir"]),
                spectrogram=str(root / entry["spectrogram"]), pose=_absolute(root, entry.get("pose")),
                eyes=_absolute(root, entry.get("eyes")), landmarks=_absolute(root, entry.get("landmarks")),
                emotion=None if entry.get("emotion") is None else int(entry["emotion"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s line %d skipped (%s: %s)", path, number, type(exc).__name__, exc)
            continue
        records[f"{record.speaker}/{record.clip}"] = record
    return list(records.values())


def _frame_folder(clip_dir: Path) -> tuple[Path, int] | None:
    """The folder holding a clip's frames and their count, or None when there are none."""
    for folder in (clip_dir, *(clip_dir / name for name in FRAME_SUBFOLDERS)):
        if folder.is_dir():
            count = sum(1 for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS)
                        and not name.startswith("."))
            if count:
                return folder, count
    return None


def scan_frame_folders(root: Path) -> list[ClipRecord]:
    """Every folder under ``root`` with a ``spectrograms.npy`` and frames is one clip.

    The speaker is the first path component below ``root`` (below a split folder when the tree
    starts with ``dev``/``test``/``train``); the clip is the rest of the path.
    """
    records = []
    for spectrogram in sorted(root.rglob("spectrograms.npy")):
        clip_dir = spectrogram.parent
        parts = clip_dir.relative_to(root).parts
        split = "train"
        if parts and parts[0].lower() in SPLIT_FOLDERS:
            split, parts = SPLIT_FOLDERS[parts[0].lower()], parts[1:]
        frames = _frame_folder(clip_dir)
        if len(parts) < 2 or frames is None:
            log.warning("%s skipped: no speaker/clip folder or no frames beside spectrograms.npy", clip_dir)
            continue
        pose, eyes, landmarks = (clip_dir / n for n in ("pose.npy", "eyes.npy", "landmarks.npy"))
        records.append(ClipRecord(
            speaker=parts[0], clip="/".join(parts[1:]), split=split, num_frames=frames[1],
            frames_dir=str(frames[0]), spectrogram=str(spectrogram), pose=str(pose) if pose.exists() else None,
            eyes=str(eyes) if eyes.exists() else None, landmarks=str(landmarks) if landmarks.exists() else None))
    return records


def _cache_scan(root: Path, records: list[ClipRecord]) -> None:
    lines = []
    for r in records:
        entry = asdict(r)
        for key in ("frames_dir", "spectrogram", "pose", "eyes", "landmarks"):
            entry[key] = os.path.relpath(entry[key], root) if entry[key] else None
        lines.append(json.dumps(entry))
    try:
        atomic_write_text(root / SCANNED_INDEX_NAME, "\n".join(lines) + "\n")
    except OSError as exc:  # a read-only data root is fine: the scan is redone next time
        log.info("scanned index not cached in %s (%s)", root, exc.strerror or exc)


def load_index(root: str | os.PathLike | None) -> list[ClipRecord]:
    """All clip records under ``root`` (see the module docstring for the two layouts).

    Raises:
        PdfgcError: ``root`` not given, missing, or holding neither an index nor clip folders.
    """
    if root is None or str(root) in ("", "???"):
        raise PdfgcError("data.root is required: the folder written by preprocess.py (with index.jsonl), "
                         "e.g. data.root=/data/voxceleb2_processed")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise PdfgcError(f"data.root not found: {root}")
    if (root / INDEX_NAME).is_file():
        records = parse_index(root, root / INDEX_NAME)
        source = root / INDEX_NAME
    elif (root / SCANNED_INDEX_NAME).is_file():
        records = parse_index(root, root / SCANNED_INDEX_NAME)
        source = root / SCANNED_INDEX_NAME
    else:
        records = scan_frame_folders(root)
        source = root
        if records:
            log.info("no %s in %s: scanned %d clip folders (PC-AVS layout)", INDEX_NAME, root, len(records))
            _cache_scan(root, records)
    if not records:
        raise PdfgcError(f"no clips in {source}: expected {INDEX_NAME} (written by preprocess.py) or clip "
                         "folders with frames and spectrograms.npy")
    return records


def hash_unit(text: str, salt: str = "") -> float:
    """A fixed number in [0, 1) per string (stable across runs and machines, unlike hash())."""
    return int(hashlib.sha1(f"{salt}{text}".encode()).hexdigest()[:12], 16) / 16 ** 12


def split_speakers(records: list[ClipRecord], heldout_fraction: float = 0.02) -> dict[str, list[str]]:
    """Speakers of ``train``, ``val`` and ``test``, disjoint, each sorted.

    Held-out speakers are those with clips outside the ``train`` split; without any, the share
    ``heldout_fraction`` of speakers (at least one when there are two or more) chosen by hash.
    Validation gets about half the held-out speakers, test the rest; a single held-out speaker
    serves both (logged).
    """
    speakers = sorted({r.speaker for r in records})
    heldout = sorted({r.speaker for r in records if r.split != "train"})  # test (or val) clips
    if not heldout and len(speakers) > 1:
        ranked = sorted(speakers, key=hash_unit)
        heldout = sorted(ranked[:max(1, int(round(heldout_fraction * len(speakers))))])
        log.info("the index has no test split: holding out %d of %d speakers by hash", len(heldout), len(speakers))
    train = [s for s in speakers if s not in set(heldout)]
    if len(heldout) < 2:
        if heldout:
            log.warning("only one held-out speaker (%s): validation and test share it", heldout[0])
        return {"train": train, "val": heldout, "test": heldout}
    val = sorted(s for s in heldout if hash_unit(s, "val") < 0.5) or heldout[:1]
    if len(val) == len(heldout):
        val = val[:-1]
    return {"train": train, "val": val, "test": [s for s in heldout if s not in set(val)]}
