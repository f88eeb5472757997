"""The output folder's JSON-lines files: the clip index, the rejected log, shard files and merging.

One run (one shard) is the only writer of its files: ``index.jsonl`` and ``rejected.jsonl``
for an unsharded run, ``index.shard-0003-of-0016.jsonl`` etc. for shard 3 of 16, so machines
sharing an output folder (NFS, where concurrent appends are not safe) never write the same
file. Every line is flushed and fsynced as its clip finishes; a partial last line (a killed
writer) is cut off when the file is opened again. :func:`merge_shards` writes the shards'
lines into ``index.jsonl`` / ``rejected.jsonl``; the last shard to finish runs it itself.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator

from datamodules.clip_index import INDEX_NAME
from pdfgc.errors import PdfgcError
from pdfgc.io import atomic_write_text

log = logging.getLogger(__name__)

REJECTED_NAME = "rejected.jsonl"
SUMMARY_NAME = "summary.json"
SCRATCH_NAME = ".partial"  # clips being written, one folder per shard; emptied when a shard starts
_SHARD_RE = re.compile(r"^(index|rejected)\.shard-(\d+)-of-(\d+)\.jsonl$")


def shard_suffix(shard: int, num_shards: int) -> str:
    """``""`` for an unsharded run, else ``.shard-0003-of-0016``."""
    if num_shards == 1:
        return ""
    width = max(4, len(str(num_shards)))
    return f".shard-{shard:0{width}d}-of-{num_shards:0{width}d}"


def shard_file(root: Path, stem: str, shard: int, num_shards: int, ext: str = ".jsonl") -> Path:
    """``root/<stem><shard suffix><ext>``: e.g. ``index.shard-0003-of-0016.jsonl``."""
    return Path(root) / f"{stem}{shard_suffix(shard, num_shards)}{ext}"


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file; malformed lines (a partial last line) are skipped."""
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            log.warning("%s line %d is not JSON (an interrupted write): ignored", path, number)
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def entry_key(entry: dict) -> str:
    """``speaker/clip`` of an index or rejected line."""
    return f"{entry['speaker']}/{entry['clip']}"


def _files(root: Path, kind: str) -> list[Path]:
    """``index.jsonl`` (``rejected.jsonl``) and every shard file of that kind, sorted."""
    shards = sorted(p for p in Path(root).glob(f"{kind}.shard-*.jsonl") if _SHARD_RE.match(p.name))
    return [Path(root) / f"{kind}.jsonl", *shards]


def _keys(root: Path, kind: str) -> set[str]:
    return {entry_key(e) for path in _files(root, kind) for e in read_jsonl(path) if "speaker" in e and "clip" in e}


def finished_keys(root: Path) -> set[str]:
    """Keys of the clips in the index or any shard index of ``root``."""
    return _keys(root, "index")


def rejected_keys(root: Path) -> set[str]:
    """Keys of the clips in the rejected log or any shard's."""
    return _keys(root, "rejected")


class JsonlAppender:
    """Append-only JSON-lines file with one writer: each :meth:`append` is one line, flushed
    and fsynced, so a killed run loses at most the line being written.

    Opening cuts a partial last line left by a killed writer (else the next line would be glued
    to it) and takes an exclusive lock: a second run writing the same file fails at once.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+b")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            raise PdfgcError(f"another preprocess run is writing {self.path} (same output_dir and shard)") from None
        self._cut_partial_line()

    def _cut_partial_line(self) -> None:
        self._fh.seek(0, os.SEEK_END)
        size = self._fh.tell()
        if size == 0:
            return
        self._fh.seek(0)
        data = self._fh.read()
        keep = data.rfind(b"\n") + 1
        if keep < size:
            log.warning("%s: partial last line (%d bytes, an interrupted write) removed", self.path, size - keep)
            self._fh.truncate(keep)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def append(self, entry: dict) -> None:
        self._fh.write((json.dumps(entry) + "\n").encode())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _merged(paths: Iterable[Path]) -> Iterator[dict]:
    """Lines of ``paths`` in order, one per key (the last one wins, as the datamodule reads it)."""
    latest: dict[str, dict] = {}
    for path in paths:
        for entry in read_jsonl(path):
            if "speaker" in entry and "clip" in entry:
                latest.pop(entry_key(entry), None)
                latest[entry_key(entry)] = entry
    return iter(latest.values())


def merge_shards(root: Path) -> tuple[int, int]:
    """Write every shard's lines into ``index.jsonl`` and ``rejected.jsonl`` (atomically).

    Keeps the lines already there, one line per clip, and drops rejected lines of clips that
    were processed since. Idempotent; the shard files stay (a shard's resume reads them).

    Returns:
        (clips in the index, clips in the rejected log).
    """
    root = Path(root)
    index = list(_merged(_files(root, "index")))
    done = {entry_key(e) for e in index}
    rejected = [e for e in _merged(_files(root, "rejected")) if entry_key(e) not in done]
    for name, entries in ((INDEX_NAME, index), (REJECTED_NAME, rejected)):
        atomic_write_text(root / name, "".join(json.dumps(e) + "\n" for e in entries))
    return len(index), len(rejected)


def shards_finished(root: Path, num_shards: int) -> bool:
    """Whether every shard of ``num_shards`` has written its summary (finished its list)."""
    return all(shard_file(root, "summary", i, num_shards, ".json").is_file() for i in range(num_shards))
