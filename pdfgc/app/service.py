"""What the web app's "Generate" button does, without any web framework (unit-testable).

:class:`GenerationService` turns a filled-in form (:class:`Form`) into a
:class:`pdfgc.generation.GenerationRequest`, loads the chosen checkpoint once into a
:class:`pdfgc.generation.GenerationPipeline` (the pipeline of ``generate.py``; nothing here
generates on its own) and writes the result into a per-request folder of the app's temporary
workspace, keeping only the newest results.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from pdfgc.errors import PdfgcError
from pdfgc.generation import CONTROLS, GenerationPipeline, GenerationRequest, ModelOptions

from .validation import check_portrait, check_speech, check_upload, upload_name

#: ``progress(fraction in [0, 1], description)``
Progress = Callable[[float, str], None]

#: Human names of the controls (the release's flag names are the keys).
CONTROL_LABELS = {"mouth": "mouth (lips from the audio)", "blink": "blink", "gaze": "gaze",
                  "emo": "emotion", "headpose": "head pose"}
#: Which upload feeds which control, with its human name.
DRIVER_LABELS = {"pose": "head-pose driver video", "expression": "expression driver video",
                 "eye": "eye driver video"}
_DRIVER_OF_CONTROL = {"headpose": "pose", "emo": "expression", "blink": "eye", "gaze": "eye"}
#: Frames per generation chunk: the progress bar moves once per chunk, so one step per second of
#: video (the output does not depend on the chunk size; generate.py's 200 only bounds memory).
PROGRESS_CHUNK_FRAMES = 25


@dataclass
class Settings:
    """Server-side limits and where results go."""

    workspace: Path  # temporary folder of this app run (removed when the server stops)
    max_upload_mb: float = 50.0  # per uploaded file
    max_audio_seconds: float = 60.0  # longer speech: use generate.py
    device: str = "cpu"  # auto | cpu | cuda | cuda:N
    keep_results: int = 8  # result folders kept; older ones are deleted

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class Form:
    """The web form. Paths are server-side upload paths (None: nothing uploaded)."""

    portrait: Optional[str]
    audio: Optional[str]
    pose: Optional[str] = None
    expression: Optional[str] = None
    eye: Optional[str] = None
    controls: list[str] = field(default_factory=lambda: list(CONTROLS))  # names in CONTROLS
    mouth_scale: float = 1.5
    eye_scale: float = 1.2
    emotion_scale: float = 1.2
    strip: bool = False
    checkpoints: str = ""
    networks: str = "official"  # used when the checkpoint folder has no networks.yaml


@dataclass
class Outcome:
    """Files written for one request and a one-line summary for the page."""

    video: Path  # the generated face with the speech (H.264 + AAC mp4)
    strip: Optional[Path]  # appearance | generated | pose | expression | eye, when asked for
    summary: str
    num_frames: int
    seconds: float  # wall time of the request


class GenerationService:
    """Holds one loaded pipeline (the last checkpoint used) and runs forms through it.

    Thread-safe: requests run one at a time (the web app's queue already serialises them).
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._pipeline: Optional[GenerationPipeline] = None
        self._pipeline_key: Optional[tuple] = None
        self._lock = threading.Lock()

    # -- checkpoint ------------------------------------------------------------------------------
    def pipeline(self, checkpoints: str, networks: str = "official") -> GenerationPipeline:
        """The pipeline of ``checkpoints`` (loaded on first use, then reused)."""
        if not checkpoints or not str(checkpoints).strip():
            raise PdfgcError("choose a checkpoint folder")
        folder = Path(str(checkpoints).strip()).expanduser()
        if not folder.is_dir():
            raise PdfgcError(f"checkpoint folder not found: {folder}")
        sidecar = folder / "networks.yaml"
        key = (str(folder.resolve()), None if sidecar.is_file() else networks,
               tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.pth"))))
        if key != self._pipeline_key:
            self._pipeline = self._pipeline_key = None  # free the old networks before loading
            self._pipeline = GenerationPipeline(
                ModelOptions(checkpoints=str(folder), networks=networks, device=self.settings.device))
            self._pipeline_key = key
        return self._pipeline

    # -- a request -------------------------------------------------------------------------------
    def request(self, form: Form, output: Path) -> GenerationRequest:
        """Validate the form's uploads and controls; the request for ``output``."""
        limit = self.settings.max_upload_bytes
        portrait = check_upload(form.portrait, "portrait", limit)
        audio = check_upload(form.audio, "audio", limit)
        unknown = sorted(set(form.controls) - set(CONTROLS))
        if unknown:
            raise PdfgcError(f"unknown control(s): {', '.join(unknown)}")
        drivers = {}
        for name, label in DRIVER_LABELS.items():
            path = getattr(form, name)
            drivers[name] = str(check_upload(path, label, limit)) if path else None
        for control in form.controls:
            driver = _DRIVER_OF_CONTROL.get(control)
            if driver and drivers[driver] is None:
                raise PdfgcError(f"{CONTROL_LABELS[control]} is on: upload a {DRIVER_LABELS[driver]} "
                                 f"or switch {CONTROL_LABELS[control]} off")
        for name, value in (("mouth", form.mouth_scale), ("eye", form.eye_scale), ("emotion", form.emotion_scale)):
            if value is None or not np.isfinite(value) or value < 0:
                raise PdfgcError(f"{name} strength must be a number >= 0, got {value}")
        check_portrait(portrait)
        check_speech(audio, self.settings.max_audio_seconds)
        return GenerationRequest(
            audio_path=str(audio), app_img_path=str(portrait), output_path=str(output),
            pose_path=drivers["pose"], exp_path=drivers["expression"], eye_path=drivers["eye"],
            **{c: (c in form.controls) for c in CONTROLS},
            mouth_scale=float(form.mouth_scale), eye_scale=float(form.eye_scale),
            emotion_scale=float(form.emotion_scale), strip=bool(form.strip),
            chunk_frames=PROGRESS_CHUNK_FRAMES)

    def run(self, form: Form, progress: Optional[Progress] = None) -> Outcome:
        """Validate ``form``, generate, return the written files.

        Raises :class:`PdfgcError` with one readable line (upload names, not server paths).
        """
        report = progress or (lambda fraction, desc: None)
        start = time.perf_counter()
        with self._lock:
            folder = self._new_result_folder()
            try:
                stem = Path(upload_name(form.portrait or "portrait")).stem or "portrait"
                req = self.request(form, folder / f"pdfgc_{stem}.mp4")
                report(0.0, "loading the networks")
                pipeline = self.pipeline(form.checkpoints, form.networks)
                strip = folder / f"pdfgc_{stem}_strip.mp4" if req.strip else None
                frames = write_videos(pipeline, req, strip, report)
            except PdfgcError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise PdfgcError(self._readable(str(exc), form)) from None
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        seconds = time.perf_counter() - start
        on = [CONTROL_LABELS[c].split(" (")[0] for c in CONTROLS if c in form.controls] or ["none (a still face)"]
        summary = (f"{frames} frames ({frames / req.fps:.2f} s) at {pipeline.image_size} px in {seconds:.1f} s; "
                   f"controls: {', '.join(on)}")
        return Outcome(video=Path(req.output_path), strip=strip, summary=summary, num_frames=frames,
                       seconds=seconds)

    # -- helpers ---------------------------------------------------------------------------------
    def _new_result_folder(self) -> Path:
        """A fresh folder under ``workspace/results``; the oldest beyond ``keep_results`` go."""
        root = self.settings.workspace / "results"
        root.mkdir(parents=True, exist_ok=True)
        old = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for stale in old[:max(0, len(old) - self.settings.keep_results + 1)]:
            shutil.rmtree(stale, ignore_errors=True)
        folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir()
        return folder

    @staticmethod
    def _readable(message: str, form: Form) -> str:
        """Replace server-side upload paths in ``message`` by the names the user uploaded."""
        for path in (form.portrait, form.audio, form.pose, form.expression, form.eye):
            if path:
                message = message.replace(str(path), upload_name(path))
        return message


def write_videos(pipeline: GenerationPipeline, req: GenerationRequest, strip_path: Optional[Path],
                 progress: Progress) -> int:
    """Run ``req`` through ``pipeline`` once and write the face video to ``req.output_path`` and,
    with ``req.strip``, the strip to ``strip_path`` (both atomic, with the speech).

    One pass serves both files: the strip's second panel (columns ``S .. 2S``) *is* the generated
    face. Returns the number of frames. ``progress`` gets driver encoding as 5-30 % and frame
    generation as 30-100 %.
    """
    from pdfgc.video import VideoWriter

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage == "drivers":
            progress(0.05 + 0.25 * done / max(total, 1), "encoding the driver videos")
        else:
            progress(0.3 + 0.7 * done / max(total, 1), f"generating frame {done} of {total}")

    side = pipeline.image_size
    prepared = pipeline.prepare(req, on_progress)
    with contextlib.ExitStack() as stack:
        face = stack.enter_context(VideoWriter(req.output_path, fps=req.fps, audio_path=req.audio_path))
        strip = None
        if req.strip:
            strip = stack.enter_context(VideoWriter(strip_path, fps=req.fps, audio_path=req.audio_path))
        for frames in pipeline.iter_frames(req, prepared, on_progress):  # (n, S, W, 3) uint8
            if strip is not None:
                strip.write(frames)
                frames = np.ascontiguousarray(frames[:, :, side:2 * side])
            face.write(frames)
    return prepared.num_frames
