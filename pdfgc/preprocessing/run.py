"""The preprocessing run: find the clips, keep this shard's, skip finished ones, process the rest
in worker processes with a progress bar, log every outcome as it comes, and sum it up.

:func:`run` takes a :class:`PreprocessConfig` (the fields of ``configs/preprocess.yaml``);
:func:`run_from_config` is ``preprocess.py``'s entry (a Hydra config).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from pdfgc.errors import PdfgcError
from pdfgc.io import atomic_write_text
from pdfgc.preprocessing.clip import ClipSettings, build_pose, process_clip
from pdfgc.preprocessing.discover import ClipSource, discover_clips, load_split_rule, select_shard
from pdfgc.preprocessing.quality import QualityLimits
from pdfgc.preprocessing.records import (REJECTED_NAME, SCRATCH_NAME, JsonlAppender, finished_keys, merge_shards,
                                         rejected_keys, shard_file, shard_suffix, shards_finished)
from pdfgc.preprocessing.rejection import ClipRejected

log = logging.getLogger("pdfgc.preprocess")

LANDMARK_BACKENDS = ("auto", "dlib", "face_alignment")
# Measured with one thread (docs/preprocessing.md, "Landmark backends"): S3FD 0.22 s on a 224 px frame
# (it grows with the frame's pixels), 2D-FAN 0.36 s per face.
FACE_ALIGNMENT_CPU_SPEED = "about 1.7 frames/s per core on 224 px frames, fewer on larger ones (dlib: ~190)"


@dataclass
class PreprocessConfig:
    """Every option of ``preprocess.py`` (``configs/preprocess.yaml`` comments each one).

    The config file is flat; :meth:`from_mapping` puts the per-clip options (the fields of
    :class:`ClipSettings` and :class:`QualityLimits`) into ``clip``.
    """

    input_dir: Optional[str]
    output_dir: str
    clip: ClipSettings = field(default_factory=ClipSettings)
    landmarks: dict = field(default_factory=lambda: {"backend": "auto", "dlib": {}, "face_alignment": {}})
    test_speakers: Any = None
    test_fraction: Optional[float] = None
    shard: int = 0
    num_shards: int = 1
    num_workers: int = 0
    retry_rejected: bool = False
    merge: bool = False
    progress: bool = True

    @staticmethod
    def option_names() -> set[str]:
        """The flat option names (the keys of ``configs/preprocess.yaml``)."""
        return ({f.name for f in fields(PreprocessConfig)} - {"clip"} | {f.name for f in fields(ClipSettings)}
                - {"limits"} | {f.name for f in fields(QualityLimits)})

    @classmethod
    def from_mapping(cls, mapping: dict) -> "PreprocessConfig":
        """From flat options (a resolved Hydra config); unknown keys are an error."""
        unknown = sorted(set(mapping) - cls.option_names())
        if unknown:
            raise PdfgcError(f"unknown preprocess option(s): {', '.join(unknown)}")
        for key in ("input_dir", "output_dir"):
            if mapping.get(key) in (None, "", "???") and not (key == "input_dir" and mapping.get("merge")):
                raise PdfgcError(f"{key}=... is required (python preprocess.py input_dir=VIDEOS output_dir=OUT)")

        def picked(names) -> dict:
            return {k: mapping[k] for k in names if k in mapping}

        limits = QualityLimits(**picked(f.name for f in fields(QualityLimits)))
        clip = ClipSettings(**picked(f.name for f in fields(ClipSettings) if f.name != "limits"), limits=limits)
        return cls(clip=clip, **picked(f.name for f in fields(cls) if f.name != "clip"))


def landmark_backend(landmarks: dict) -> tuple[str, dict]:
    """(backend, its options) from the ``landmarks`` config.

    ``auto`` = face_alignment when it can run here without downloading (package installed, both
    weight files in ``weights_dir`` or torch's hub cache, or ``allow_download=true``) and on a GPU
    (its ``device`` is ``auto`` and CUDA is available, or a device is given); else dlib, with a
    one-line warning saying why. A face_alignment ``device: auto`` becomes cuda when available,
    else cpu (warned: about 100 times slower than dlib there).
    """
    from pdfgc.faces.landmarks import face_alignment_unavailable
    from pdfgc.faces.pose_backends import resolve_device

    backend = str(landmarks.get("backend", "auto"))
    if backend not in LANDMARK_BACKENDS:
        raise PdfgcError(f"unknown landmarks.backend {backend!r} (one of {', '.join(LANDMARK_BACKENDS)})")
    fa = dict(landmarks.get("face_alignment") or {})
    device = resolve_device(fa.get("device", "auto"))
    if backend == "auto":
        reason = face_alignment_unavailable(fa.get("weights_dir"), bool(fa.get("allow_download")))
        if not reason and fa.get("device", "auto") == "auto" and device == "cpu":
            reason = (f"no CUDA device, and face_alignment on the CPU runs at {FACE_ALIGNMENT_CPU_SPEED}; "
                      "landmarks.backend=face_alignment uses it anyway")
        if reason:
            log.warning("landmarks: dlib, not face_alignment: %s", reason)
        backend = "dlib" if reason else "face_alignment"
    if backend == "dlib":
        return backend, dict(landmarks.get("dlib") or {})
    if device == "cpu":
        log.warning("landmarks: face_alignment on the CPU runs at %s", FACE_ALIGNMENT_CPU_SPEED)
    return backend, {**fa, "device": device}


# --- the work of one process ------------------------------------------------------------------

_worker: dict = {}  # this process's detector and settings (set once per worker process)


def _init_worker(backend: str, options: dict, settings: ClipSettings, root: str, scratch: str,
                 single_thread: bool) -> None:
    from pdfgc.faces import build_landmark_detector

    if single_thread:  # a worker is one core's worth of work: no thread pools fighting each other
        import cv2
        import torch

        cv2.setNumThreads(1)
        torch.set_num_threads(1)
    _worker.update(detector=build_landmark_detector(backend, **options), pose=build_pose(settings), settings=settings,
                   root=Path(root), scratch=Path(scratch))


def _process(source: ClipSource) -> tuple[ClipSource, dict]:
    """``(source, outcome)``: ``{"status": "done", "entry": ...}`` or ``{"status": "rejected", ...}``."""
    try:
        entry = process_clip(source, _worker["detector"], _worker["settings"], _worker["root"], _worker["scratch"],
                             _worker["pose"])
        return source, {"status": "done", "entry": entry}
    except ClipRejected as exc:
        return source, {"status": "rejected", "reason": exc.reason, "detail": exc.detail}
    except Exception as exc:  # noqa: BLE001 - one broken clip must not end a week-long run
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return source, {"status": "rejected", "reason": "error", "detail": last, "traceback": traceback.format_exc()}


def _outcomes(todo: Sequence[ClipSource], num_workers: int, init_args: tuple, detector,
              pose) -> Iterator[tuple[ClipSource, dict]]:
    """(source, outcome) as clips finish: in this process with ``detector`` and ``pose``, or in
    ``num_workers`` spawned processes, each with its own (spawn, not fork: a forked child can
    deadlock on a thread pool lock the parent held)."""
    if num_workers == 0:
        _, _, settings, root, scratch = init_args
        _worker.update(detector=detector, pose=pose, settings=settings, root=Path(root), scratch=Path(scratch))
        for source in todo:
            yield _process(source)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_workers, initializer=_init_worker, initargs=(*init_args, True)) as pool:
        # In finishing order (a slow clip holds nothing up); chunksize 1: clips are seconds each.
        yield from pool.imap_unordered(_process, todo, chunksize=1)


# --- summary ----------------------------------------------------------------------------------


@dataclass
class Summary:
    """What a run did (also written as ``summary.json``).

    Attributes:
        found: clips under the input (all shards).
        in_shard: clips of this shard.
        processed: clips written by this run.
        skipped_done: clips already in the index (an earlier run).
        skipped_rejected: clips rejected by an earlier run (not retried).
        rejected: clips rejected by this run, per reason.
        frames: frames written by this run.
        seconds: wall time of the processing loop.
    """

    found: int = 0
    in_shard: int = 0
    processed: int = 0
    skipped_done: int = 0
    skipped_rejected: int = 0
    rejected: dict = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0
    output_dir: str = ""

    @property
    def clips_per_second(self) -> float:
        attempted = self.processed + sum(self.rejected.values())
        return attempted / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        rejected = sum(self.rejected.values())
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        return [f"preprocess: {self.processed} clips processed, {self.skipped_done} already done, "
                f"{self.skipped_rejected} rejected before (skipped), {rejected} rejected ({reasons})",
                f"preprocess: {self.in_shard} of {self.found} clips in this shard; {self.frames} frames in "
                f"{self.seconds:.1f} s ({self.clips_per_second:.2f} clips/s, {self.frames_per_second:.1f} frames/s); "
                f"output {self.output_dir}"]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "clips_per_second": round(self.clips_per_second, 4),
                           "frames_per_second": round(self.frames_per_second, 2)}, indent=1) + "\n"


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    # tqdm shows clips/s and the ETA; the postfix counts rejections as they come.
    return tqdm(total=total, unit="clip", desc="preprocess", disable=not enabled, dynamic_ncols=True, smoothing=0.05)


# --- the run ----------------------------------------------------------------------------------


def _check(config: PreprocessConfig) -> None:
    if config.num_workers < 0:
        raise PdfgcError(f"num_workers must be >= 0, got {config.num_workers}")
    clip = config.clip
    if clip.image_size < 32:
        raise PdfgcError(f"image_size must be at least 32, got {clip.image_size}")
    if clip.min_frames < 1:
        raise PdfgcError(f"min_frames must be >= 1, got {clip.min_frames}")
    if clip.max_frames is not None and clip.max_frames < clip.min_frames:
        raise PdfgcError(f"max_frames ({clip.max_frames}) is below min_frames ({clip.min_frames})")


def run(config: PreprocessConfig) -> Summary:
    """Preprocess ``config.input_dir`` into ``config.output_dir`` (this shard's clips).

    Raises:
        PdfgcError: bad options or input (missing folder, nothing to process, unknown backend,
            missing weights), or every clip of the run rejected (the message gives the reason of
            a single clip, the counts of several).
    """
    root = Path(config.output_dir).expanduser()
    if config.merge:
        if not root.is_dir():
            raise PdfgcError(f"output_dir not found: {root}")
        clips, rejected = merge_shards(root)
        print(f"merged shards: {clips} clips in {root / 'index.jsonl'}, {rejected} in {root / REJECTED_NAME}")
        return Summary(output_dir=str(root))
    _check(config)
    settings = config.clip
    pose = build_pose(settings)  # bad backend or checkpoint: fail before any work
    rule = load_split_rule(config.test_speakers, config.test_fraction)
    sources = discover_clips(config.input_dir, rule, exclude=root)
    mine = select_shard(sources, config.shard, config.num_shards)
    backend, options = landmark_backend(config.landmarks)
    from pdfgc.faces import build_landmark_detector

    detector = build_landmark_detector(backend, **options)  # bad backend or missing weights: fail before any work
    if config.num_workers > 0:
        del detector, pose  # the workers build their own (GPU memory: one model per process)
        detector = pose = None
    root.mkdir(parents=True, exist_ok=True)

    done = finished_keys(root)
    rejected_before = set() if config.retry_rejected else rejected_keys(root) - done
    todo = [s for s in mine if s.key not in done and s.key not in rejected_before]
    summary = Summary(found=len(sources), in_shard=len(mine), skipped_done=sum(s.key in done for s in mine),
                      skipped_rejected=sum(s.key in rejected_before for s in mine), output_dir=str(root))
    summary_path = shard_file(root, "summary", config.shard, config.num_shards, ".json")
    summary_path.unlink(missing_ok=True)  # present only once this shard has gone through its list
    scratch = root / SCRATCH_NAME / (shard_suffix(config.shard, config.num_shards).lstrip(".") or "all")
    shutil.rmtree(scratch, ignore_errors=True)  # half-written clips of a killed run
    scratch.mkdir(parents=True, exist_ok=True)
    log.info("%d clips found, %d in shard %d/%d, %d already done, %d rejected before: %d to process (%s landmarks, "
             "%s pose, %d workers)", len(sources), len(mine), config.shard, config.num_shards, summary.skipped_done,
             summary.skipped_rejected, len(todo), backend, settings.pose_backend, config.num_workers)

    reasons: Counter = Counter()
    last_rejection: Optional[str] = None
    start = time.perf_counter()
    with JsonlAppender(shard_file(root, "index", config.shard, config.num_shards)) as index, \
            JsonlAppender(shard_file(root, "rejected", config.shard, config.num_shards)) as rejected_log, \
            _progress(len(todo), config.progress) as bar:
        init_args = (backend, options, settings, str(root), str(scratch))
        for source, outcome in _outcomes(todo, config.num_workers, init_args, detector, pose):
            if outcome["status"] == "done":
                index.append(outcome["entry"])
                summary.processed += 1
                summary.frames += outcome["entry"]["num_frames"]
            else:
                reasons[outcome["reason"]] += 1
                last_rejection = f"clip rejected ({outcome['reason']}): {outcome['detail']}"
                if source.path not in outcome["detail"]:
                    last_rejection += f" [{source.path}]"
                rejected_log.append({"speaker": source.speaker, "clip": source.clip, "source": source.path,
                                     "reason": outcome["reason"], "detail": outcome["detail"]})
                if outcome["reason"] == "error":  # a bug, not bad data: keep the traceback in the log
                    log.warning("clip %s failed: %s\n%s", source.key, outcome["detail"], outcome.get("traceback", ""))
                else:
                    log.debug("rejected %s (%s): %s", source.key, outcome["reason"], outcome["detail"])
                bar.set_postfix(rejected=sum(reasons.values()), refresh=False)
            bar.update(1)
    summary.seconds = time.perf_counter() - start
    summary.rejected = dict(reasons)
    shutil.rmtree(scratch, ignore_errors=True)
    with_parent = scratch.parent
    if with_parent.is_dir() and not any(with_parent.iterdir()):
        with_parent.rmdir()
    atomic_write_text(summary_path, summary.to_json())
    for line in summary.lines():
        print(line, flush=True)
    if config.num_shards > 1 and shards_finished(root, config.num_shards):
        clips, _ = merge_shards(root)
        print(f"preprocess: all {config.num_shards} shards finished: merged {clips} clips into "
              f"{root / 'index.jsonl'}", flush=True)
    attempted = summary.processed + sum(reasons.values())
    if summary.processed == 0 and summary.skipped_done == 0 and attempted:
        if attempted == 1:
            raise PdfgcError(f"{last_rejection} (logged in {shard_file(root, 'rejected', config.shard, config.num_shards)})")
        counts = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        raise PdfgcError(f"all {attempted} clips were rejected ({counts}); see "
                         f"{shard_file(root, 'rejected', config.shard, config.num_shards)}")
    return summary


def run_from_config(cfg) -> Summary:
    """``preprocess.py``'s entry: a composed Hydra config -> :func:`run`."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        missing = [k for k in ("input_dir", "output_dir") if OmegaConf.is_missing(cfg, k)
                   and not (k == "input_dir" and cfg.get("merge"))]
        if missing:
            raise PdfgcError("missing required option(s): " + " ".join(f"{k}=..." for k in missing)
                             + " (python preprocess.py input_dir=VIDEOS output_dir=OUT)")
        container = OmegaConf.to_container(cfg, resolve=False)
        for key in ("defaults", "hydra", "task_name", "paths"):
            container.pop(key, None)
        if OmegaConf.is_missing(cfg, "input_dir"):
            container["input_dir"] = None
        cfg = container
    return run(PreprocessConfig.from_mapping(dict(cfg)))
