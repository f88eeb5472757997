"""Finding the clips to preprocess: videos and frame folders below the input path, with their
speaker, clip id, split and shard.

Naming (docs/preprocessing.md, "Inputs"): a clip's path below the input folder, without the
extension, is ``[split folder /] [mp4 /] speaker / clip...``. VoxCeleb2's
``dev/mp4/id00012/abc/00001.mp4`` is speaker ``id00012``, clip ``abc/00001``, split ``train``
(also when the input is ``.../dev`` or ``.../dev/mp4`` itself); ``alice/talk.mov`` is speaker
``alice``, clip ``talk``; a video directly in the input folder (or given alone) is its own
speaker. A frame folder is a folder of images; its audio is the audio file inside it, or the
file of the same name beside it (``clip/`` + ``clip.wav``); a ``frames/`` or ``images/``
folder (the PC-AVS layout) is named by its parent and may take its audio from there.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

from datamodules.clip_index import FRAME_SUBFOLDERS, SPLIT_FOLDERS, hash_unit
from pdfgc.errors import PdfgcError
from pdfgc.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")


@dataclass(frozen=True)
class ClipSource:
    """One input clip.

    Attributes:
        path: the video file or the frame folder.
        speaker: speaker id (first folder below the input, below a split folder).
        clip: clip id within the speaker, ``/``-separated; also its output folder.
        split: ``train`` | ``test``.
        is_video: True for a video file, False for a frame folder.
        audio: a frame folder's audio file (None for videos, which carry their own, or when
            none was found).
    """

    path: str
    speaker: str
    clip: str
    split: str
    is_video: bool
    audio: Optional[str] = None

    @property
    def key(self) -> str:
        """``speaker/clip``: unique in a run, the key of the index and of the shard."""
        return f"{self.speaker}/{self.clip}"


@dataclass(frozen=True)
class SplitRule:
    """Split of the clips that no ``dev``/``train``/``test`` top folder places.

    Attributes:
        test_speakers: speakers held out for testing.
        test_fraction: hold out the speakers whose stable hash (the one the datamodule uses)
            is below this; None with no ``test_speakers`` = every such clip is ``train`` and
            the datamodule holds out its own ``heldout_fraction`` of speakers.
    """

    test_speakers: frozenset = frozenset()
    test_fraction: Optional[float] = None

    def split_of(self, speaker: str) -> str:
        if speaker in self.test_speakers:
            return "test"
        if self.test_fraction is not None and hash_unit(speaker) < self.test_fraction:
            return "test"
        return "train"


def load_split_rule(test_speakers, test_fraction: Optional[float]) -> SplitRule:
    """A :class:`SplitRule` from the config: ``test_speakers`` is a list of ids or the path of
    a text file with one id per line (``#`` comments allowed), or None."""
    names: Iterable[str] = ()
    if isinstance(test_speakers, (str, os.PathLike)):
        path = Path(test_speakers).expanduser()
        if not path.is_file():
            raise PdfgcError(f"test_speakers file not found: {path}")
        names = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    elif test_speakers is not None:
        names = [str(s) for s in test_speakers]
    if test_fraction is not None and not 0.0 <= float(test_fraction) <= 1.0:
        raise PdfgcError(f"test_fraction must be in [0, 1], got {test_fraction}")
    return SplitRule(frozenset(n for n in names if n),
                     None if test_fraction is None else float(test_fraction))


def shard_of(key: str, num_shards: int) -> int:
    """The shard a clip belongs to: its key's SHA-1 modulo ``num_shards``.

    Depends on the clip's own name only, so machines that list the input at different times
    (or in a different order) agree, and clips added later never move other clips.
    """
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) % int(num_shards)


def select_shard(sources: Sequence[ClipSource], shard: int, num_shards: int) -> list[ClipSource]:
    """The clips of shard ``shard`` of ``num_shards``, in the input order."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise PdfgcError(f"shard must be in [0, num_shards) with num_shards >= 1, got shard={shard} "
                         f"num_shards={num_shards}")
    return [s for s in sources if shard_of(s.key, num_shards) == shard]


def _audio_of(folder: Path, files: Sequence[str]) -> Optional[Path]:
    """The audio of a frame folder: ``audio.*`` or the only audio file inside, else a file named
    like the folder beside it (``clip/`` + ``clip.wav``)."""
    inside = sorted(f for f in files if f.lower().endswith(AUDIO_EXTENSIONS) and not f.startswith("."))
    named_audio = [f for f in inside if Path(f).stem.lower() == "audio"]
    if named_audio or len(inside) == 1:
        return folder / (named_audio or inside)[0]
    for ext in AUDIO_EXTENSIONS:
        beside = folder.with_name(folder.name + ext)
        if beside.is_file():
            return beside
    return None


MEDIA_FOLDER = "mp4"  # VoxCeleb2 as downloaded: dev/mp4/<speaker>/..., test/mp4/<speaker>/...


def _root_split(root: Path) -> Optional[str]:
    """The split of a VoxCeleb2 download given below its split folder (``.../dev/mp4`` or
    ``.../dev`` holding ``mp4/``); None for any other folder (a folder merely named ``test``
    says nothing)."""
    if root.name.lower() == MEDIA_FOLDER and root.parent.name.lower() in SPLIT_FOLDERS:
        return SPLIT_FOLDERS[root.parent.name.lower()]
    if root.name.lower() in SPLIT_FOLDERS and (root / MEDIA_FOLDER).is_dir():
        return SPLIT_FOLDERS[root.name.lower()]
    return None


def _named(parts: Sequence[str], split_rule: SplitRule, root_split: Optional[str] = None) -> tuple[str, str, str]:
    """(speaker, clip, split) of a clip's path parts below the input folder."""
    parts = list(parts)
    split = root_split
    if len(parts) > 1 and parts[0].lower() in SPLIT_FOLDERS:
        split, parts = SPLIT_FOLDERS[parts[0].lower()], parts[1:]
    if len(parts) > 2 and parts[0].lower() == MEDIA_FOLDER:
        parts = parts[1:]
    speaker = parts[0]
    clip = "/".join(parts[1:]) if len(parts) > 1 else parts[0]
    return speaker, clip, split or split_rule.split_of(speaker)


def _frame_folder_source(folder: Path, files: Sequence[str], parts: Sequence[str], split_rule: SplitRule,
                         root_split: Optional[str]) -> ClipSource:
    audio = _audio_of(folder, files)
    if folder.name.lower() in FRAME_SUBFOLDERS and len(parts) > 1:  # PC-AVS: <clip>/frames/*.jpg
        parts = parts[:-1]
        if audio is None:
            parent_files = [p.name for p in folder.parent.iterdir() if p.is_file()]
            audio = _audio_of(folder.parent, parent_files)
    speaker, clip, split = _named(parts, split_rule, root_split)
    return ClipSource(str(folder), speaker, clip, split, is_video=False, audio=str(audio) if audio else None)


def _has_images(files: Sequence[str]) -> bool:
    return any(f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".") for f in files)


def _unique(sources: list[ClipSource]) -> list[ClipSource]:
    """Clips whose names collide (``a.mp4`` and ``a.mov``) keep their extension in the clip id."""
    by_key = defaultdict(list)
    for s in sources:
        by_key[s.key].append(s)
    out = []
    for key, group in by_key.items():
        if len(group) == 1:
            out.extend(group)
            continue
        log.warning("%d inputs are named %s: their clip ids keep the file extension", len(group), key)
        for s in group:
            suffix = Path(s.path).suffix.lower().lstrip(".") or "frames"
            out.append(replace(s, clip=f"{s.clip}.{suffix}"))
    return out


def discover_clips(input_path: str | os.PathLike, split_rule: SplitRule = SplitRule(),
                   exclude: Optional[str | os.PathLike] = None) -> list[ClipSource]:
    """Every clip under ``input_path`` (a folder, a video file or one frame folder), sorted by key.

    Hidden files and folders are skipped, and so is ``exclude`` (the output folder when it lies
    inside the input).

    Raises:
        PdfgcError: ``input_path`` does not exist, or holds no video and no frame folder.
    """
    root = Path(input_path).expanduser()
    if not root.exists():
        raise PdfgcError(f"input_dir not found: {root}")
    if root.is_file():
        if root.suffix.lower() not in VIDEO_EXTENSIONS:
            raise PdfgcError(f"not a video file ({'/'.join(e[1:] for e in VIDEO_EXTENSIONS)}): {root}")
        speaker, clip, split = _named([root.stem], split_rule)
        return [ClipSource(str(root), speaker, clip, split, is_video=True)]
    excluded = Path(exclude).expanduser().resolve() if exclude is not None else None
    root_split = _root_split(root.resolve())
    sources: list[ClipSource] = []
    for dirpath, dirnames, filenames in os.walk(root):
        folder = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (excluded is None or (folder / d).resolve() != excluded))
        parts = folder.relative_to(root).parts
        for name in sorted(filenames):
            if name.startswith(".") or not name.lower().endswith(VIDEO_EXTENSIONS):
                continue
            speaker, clip, split = _named([*parts, Path(name).stem], split_rule, root_split)
            sources.append(ClipSource(str(folder / name), speaker, clip, split, is_video=True))
        if _has_images(filenames):
            sources.append(_frame_folder_source(folder, filenames, parts or (root.name,), split_rule, root_split))
    if not sources:
        raise PdfgcError(f"no videos ({'/'.join(e[1:] for e in VIDEO_EXTENSIONS)}) or frame folders in: {root}")
    return sorted(_unique(sources), key=lambda s: s.key)
