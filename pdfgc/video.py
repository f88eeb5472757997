"""Images and videos: the official crop, reading frame folders / videos, writing mp4 with audio.

All frames are ``H x W x 3`` uint8 **RGB** numpy arrays. Video decoding and encoding use the
ffmpeg binary bundled with ``imageio-ffmpeg`` (no system ffmpeg needed); images use OpenCV.

Timing conventions (the same as ``pdfgc.audio``): frame ``k`` of a video written by
:class:`VideoWriter` is shown at ``t = k / fps``, and the muxed audio's first sample plays at
``t = 0``. All frames are always kept; the audio is cut to the video's duration by default
(``trim_audio=True``) so the file's streams end together, or kept whole with
``trim_audio=False`` (then the last frame stays on screen while the audio finishes). Nothing
is ever cut from the video (ffmpeg's ``-shortest`` is not used).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from pdfgc.errors import PdfgcError
from pdfgc.io import atomic_path

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")  # frame-folder members, case-insensitive
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")  # read through ffmpeg

# The release's crop in 224 px coordinates: keep rows [0, 192) and columns [16, 208) of the
# squashed 224 image (drops the bottom 32 px and 16 px per side), then zoom back to 224.
_CROP_SIDE_224 = 192
_CROP_LEFT_224 = 16
_REF_SIDE = 224


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_line(stderr: bytes | str) -> str:
    """The last non-empty line of ffmpeg's stderr, for one-line error messages."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output from ffmpeg"


# --- the official crop ------------------------------------------------------------------------


def crop_box(size: int = 224) -> tuple[int, int, int]:
    """``(top, left, side)`` of the official crop in a ``size x size`` image.

    224: rows [0, 192), cols [16, 208). Other sizes scale the box by ``size / 224`` and round;
    the box stays square (side = round(192 s / 224), left = round(16 s / 224)), e.g. 64 px:
    rows [0, 55), cols [5, 60).
    """
    side = int(round(_CROP_SIDE_224 * size / _REF_SIDE))
    left = int(round(_CROP_LEFT_224 * size / _REF_SIDE))
    return 0, left, side


def crop_points(points: np.ndarray, frame_hw: tuple[int, int], size: int = 224) -> np.ndarray:
    """Where :func:`official_crop` takes pixel points of an ``(H, W)`` frame.

    Args:
        points: ``(..., 2)`` pixel (x, y) of the frame (pixel centres at +0.5; NaN stays NaN).
        frame_hw: ``(H, W)`` of the frame the points belong to.
        size: the crop's output side.
    Returns:
        ``(..., 2)`` float32 pixel (x, y) in the ``size x size`` network input.
    """
    top, left, side = crop_box(size)
    h, w = frame_hw
    out = np.asarray(points, np.float32).copy()
    out[..., 0] = (out[..., 0] * (size / w) - left) * (size / side)
    out[..., 1] = (out[..., 1] * (size / h) - top) * (size / side)
    return out


def official_crop(img: np.ndarray, size: int = 224) -> torch.Tensor:
    """The release's image preprocessing, size-generic.

    Squash-resize to ``size x size``, keep the :func:`crop_box` (rows [0, 192), cols [16, 208)
    at 224), resize back to ``size x size``, then scale to [-1, 1]. Both resizes are
    ``cv2.resize`` with ``INTER_LINEAR``, the release's inference default (its training loader
    used PIL bilinear for the zoom; the two agree to about one grey level on upscaling). One
    exception: an input more than 2x larger than ``size`` (e.g. 224 frames for the 64 px
    configuration) is squashed with ``INTER_AREA``, since a 2-tap linear shrink would alias;
    the release never shrinks that much, so official 224 inputs are unaffected.

    Args:
        img: ``(H, W, 3)`` uint8 RGB (any H, W; the aspect ratio is not preserved, as in the
            release).
        size: output side (224 official, 64 for the small configuration).
    Returns:
        ``(3, size, size)`` float32 tensor in [-1, 1], RGB.
    """
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {img.dtype} {img.shape}")
    top, left, side = crop_box(size)
    if img.shape[:2] != (size, size):
        shrink = max(img.shape[0], img.shape[1]) > 2 * size
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    crop = np.ascontiguousarray(img[top:top + side, left:left + side])
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(crop).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)  # /255 * 2 - 1


def to_uint8(images: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
    """``(3, H, W)`` or ``(B, 3, H, W)`` float in [-1, 1] -> ``(H, W, 3)`` / ``(B, H, W, 3)`` uint8 RGB (rounded)."""
    x = torch.as_tensor(images).detach().float().cpu()
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous().numpy()


# --- reading images and frame folders ---------------------------------------------------------


def _decode_image(path: Path) -> np.ndarray:
    """One image file -> (H, W, 3) uint8 RGB. Grey images are expanded, alpha is dropped."""
    try:
        # imdecode(fromfile) instead of imread: works with any path encoding.
        data = np.fromfile(str(path), dtype=np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except OSError as exc:
        raise PdfgcError(f"cannot read image: {path} ({exc.strerror or exc})") from None
    if bgr is None:
        raise PdfgcError(f"cannot read image (not a valid image file): {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image(path: PathLike) -> np.ndarray:
    """Read one image file (jpg/png/bmp/...) as ``(H, W, 3)`` uint8 RGB.

    Raises:
        PdfgcError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise PdfgcError(f"image not found: {path}")
    return _decode_image(path)


def _natural_key(name: str) -> list:
    """Sort key comparing digit runs as numbers: 2.jpg < 10.jpg, and 0000 / 000000 / 000001
    styles sort the same as plain name order."""
    return [(0, int(tok), tok) if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def list_frame_files(folder: PathLike) -> list[Path]:
    """Image files in ``folder`` (not recursive, hidden files skipped), in natural name order.

    Raises:
        PdfgcError: the folder is missing or holds no image files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PdfgcError(f"frame folder not found: {folder}")
    files = [
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise PdfgcError(
            f"no image files ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) in frame folder: {folder}"
        )
    return sorted(files, key=lambda p: _natural_key(p.name))


# --- probing --------------------------------------------------------------------------------


_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_VIDEO_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_AUDIO_RE = re.compile(r"Stream #\d+:\d+.*?: Audio: (.*)")


def _ffmpeg_info(path: Path) -> str:
    """stderr of ``ffmpeg -i path`` (the header dump; ffmpeg exits 1 as no output is given)."""
    proc = subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", "-i", str(path)],
                          capture_output=True)
    return proc.stderr.decode("utf-8", "replace")


def _parse_header(info: str, path: Path) -> dict:
    """Parse ``ffmpeg -i`` output: first video and audio stream, container duration."""
    video = _VIDEO_RE.search(info)
    audio = _AUDIO_RE.search(info)
    if video is None and audio is None:
        raise PdfgcError(f"cannot read video (not a media file or corrupt): {path} ({_last_line(info)})")
    out: dict = {"container_duration": None, "width": None, "height": None, "fps": None,
                 "video_start": None, "has_audio": audio is not None, "audio_sample_rate": None,
                 "audio_channels": None, "audio_start": None}
    dur = _DURATION_RE.search(info)
    if dur:
        h, m, s = dur.groups()
        out["container_duration"] = int(h) * 3600 + int(m) * 60 + float(s)
    def start(desc: str) -> float:  # ffmpeg prints ", start 0.136000" only when it is not 0
        m = re.search(r"start (-?[\d.]+)", desc)
        return float(m.group(1)) if m else 0.0

    if video is not None:
        desc = video.group(1)
        out["video_start"] = start(desc)
        size = re.search(r",\s*(\d{2,5})x(\d{2,5})[\s,\[]", desc + " ")
        if size:
            out["width"], out["height"] = int(size.group(1)), int(size.group(2))
        # Phone videos carry a display rotation that ffmpeg applies when decoding: report the
        # decoded (displayed) size, which is what the frame reader gets.
        after = info[video.end():]
        nxt = re.search(r"Stream #", after)
        rot = re.search(r"rotation of (-?[\d.]+) degrees", after[:nxt.start()] if nxt else after)
        if rot and out["width"] is not None and round(float(rot.group(1))) % 180 == 90:
            out["width"], out["height"] = out["height"], out["width"]
        rate = re.search(r"([\d.]+)(k?) fps", desc) or re.search(r"([\d.]+)(k?) tbr", desc)
        if rate:
            out["fps"] = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    if audio is not None:
        desc = audio.group(1)
        out["audio_start"] = start(desc)
        sr = re.search(r"(\d+) Hz", desc)
        out["audio_sample_rate"] = int(sr.group(1)) if sr else None
        layout = re.search(r"Hz,\s*([^,]+)", desc)
        if layout:
            name = layout.group(1).strip()
            ch = re.match(r"(\d+) channels", name)
            out["audio_channels"] = int(ch.group(1)) if ch else {"mono": 1, "stereo": 2}.get(name)
    return out


def _count_audio_samples(path: Path, sample_rate: int) -> int:
    """Decode the first audio stream (mono, native rate, on the file's timeline) and count samples."""
    cmd = [_ffmpeg(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-vn",
           "-ac", "1", "-ar", str(sample_rate), "-f", "s16le", "-"]
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise PdfgcError(f"cannot decode the audio of {path} ({_last_line(proc.stderr)})")
    return len(proc.stdout) // 2


def read_header(path: PathLike) -> dict:
    """The header of a media file, without decoding it (one quick ffmpeg call).

    Returns a dict: ``width``, ``height`` (displayed size; None without a video stream),
    ``fps``, ``has_audio``, ``audio_sample_rate``, ``audio_channels``, ``container_duration``,
    ``video_start`` / ``audio_start`` (see :func:`probe`, which also decodes to count).

    Raises:
        PdfgcError: missing file, or not a media file.
    """
    path = Path(path)
    if not path.is_file():
        raise PdfgcError(f"video file not found: {path}")
    return _parse_header(_ffmpeg_info(path), path)


def probe(path: PathLike) -> dict:
    """Describe a media file by decoding it (no ffprobe ships with imageio-ffmpeg).

    Returns a dict: ``num_frames`` (decoded video frames, 0 if no video), ``fps``,
    ``width``, ``height``, ``video_duration`` (``num_frames / fps``), ``has_audio``,
    ``audio_duration`` (decoded samples / rate, seconds, None without audio),
    ``audio_sample_rate``, ``audio_channels``, ``container_duration`` (the header's),
    ``video_start`` / ``audio_start`` (seconds on the file's timeline; 0 for files written by
    :class:`VideoWriter`; None for a missing stream).

    Raises:
        PdfgcError: missing or unreadable file.
    """
    path = Path(path)
    info = read_header(path)
    num_frames = 0
    if info["width"] is not None:
        import imageio_ffmpeg

        try:
            num_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
            raise PdfgcError(f"cannot decode the video of {path} ({str(exc).strip().splitlines()[-1:]})") from None
    info["num_frames"] = int(num_frames)
    fps = info["fps"]
    info["video_duration"] = num_frames / fps if fps else None
    info["audio_duration"] = None
    if info["has_audio"] and info["audio_sample_rate"]:
        info["audio_duration"] = _count_audio_samples(path, info["audio_sample_rate"]) / info["audio_sample_rate"]
    return info


# --- reading frames -------------------------------------------------------------------------


class FrameReader:
    """Lazy frames of a frame folder or a video file; iterate for ``(H, W, 3)`` uint8 RGB.

    Attributes:
        path: the source.
        is_video: True for a video file, False for a frame folder.
        fps: the video's frame rate (after resampling when ``fps`` was given); None for a
            folder (frame folders carry no rate; the caller's convention, usually 25, applies).
        files: the sorted image files (folders only).
        strict: raise :class:`PdfgcError` when ffmpeg reports decoding errors after some frames
            (truncated or damaged file; raised at the end of the iteration). False keeps the
            frames that decoded, for messy datasets.

    Each iteration re-reads the source from the start (a video starts a new ffmpeg process).
    """

    def __init__(self, path: PathLike, fps: Optional[float] = None, strict: bool = True):
        self.path = Path(path)
        self.strict = strict
        self._resample_fps = fps
        self.files: Optional[list[Path]] = None
        if self.path.is_dir():
            self.is_video = False
            self.files = list_frame_files(self.path)
            self.fps = None
        elif self.path.is_file():
            self.is_video = True
            header = _parse_header(_ffmpeg_info(self.path), self.path)
            if header["width"] is None:
                raise PdfgcError(f"no video stream in: {self.path}")
            self.width, self.height = header["width"], header["height"]
            self.fps = float(fps) if fps else header["fps"]
        else:
            raise PdfgcError(f"frames not found (no such folder or video file): {self.path}")

    def __len__(self) -> int:
        """Number of frames; exact for folders. For videos this decodes the file once."""
        if self.files is not None:
            return len(self.files)
        return sum(1 for _ in self._iter_video(decode=False))

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.files is not None:
            for f in self.files:
                yield _decode_image(f)
        else:
            yield from self._iter_video()

    def _iter_video(self, decode: bool = True) -> Iterator[np.ndarray]:
        """Stream raw RGB frames out of ffmpeg through a pipe (one frame in memory at a time)."""
        # Constant-rate output on the file's timeline: output frame k is the picture shown at
        # t = k / fps (a late-starting stream repeats its first frame; VFR input is resampled),
        # which keeps frames aligned with audio read by pdfgc.audio.load_audio.
        cmd = [_ffmpeg(), "-nostdin", "-v", "error", "-i", str(self.path), "-map", "0:v:0", "-an", "-sn",
               "-fps_mode", "cfr"]
        if self._resample_fps:
            # fps filter with round=up: output frame k is the last input frame with pts <= k / fps,
            # i.e. the picture a player shows at that instant; round(duration * fps) frames
            # (plain -r pads the end with extra copies and round=near picks up to half a frame late).
            cmd += ["-vf", f"fps={float(self._resample_fps):g}:round=up"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        frame_bytes = self.width * self.height * 3
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                    bufsize=frame_bytes)
            count = 0
            try:
                while True:
                    buf = proc.stdout.read(frame_bytes)
                    if len(buf) < frame_bytes:
                        break
                    count += 1
                    yield (np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3).copy()
                           if decode else None)
            finally:
                if proc.poll() is None:
                    proc.kill()  # the consumer stopped early: do not wait for the whole decode
                proc.stdout.close()
                proc.wait()
            err.seek(0)
            msg = err.read()  # -v error: anything here is a real decoding error
            if count == 0:
                raise PdfgcError(f"no frames decoded from video: {self.path} ({_last_line(msg)})")
            if self.strict and (proc.returncode != 0 or msg.strip()):
                # Frames came out, then decoding failed (e.g. a truncated file): fail loudly
                # rather than return a silently shortened clip.
                raise PdfgcError(f"video is truncated or corrupt (decoding failed after {count} frames): "
                                 f"{self.path} ({_last_line(msg)})")


def iter_frames(path: PathLike, fps: Optional[float] = None, strict: bool = True) -> FrameReader:
    """Lazy frames of a frame folder or a video file (see :class:`FrameReader`).

    Folders: image files (jpg/jpeg/png/bmp) in natural name order (0000.jpg, 000000.jpg and
    000001.jpg numbering all work). Videos (mp4/mov/mkv/avi/...): the first video stream at its
    own rate (or resampled to ``fps``) on a constant-rate grid, frame k being the picture shown
    at t = k / fps; ``fps`` is ignored for folders.

    Raises:
        PdfgcError: missing path, empty folder, unreadable video; no frames, or (``strict``) a
            truncated / damaged video, while iterating.
    """
    return FrameReader(path, fps=fps, strict=strict)


def read_frames(path: PathLike, fps: Optional[float] = None, max_frames: Optional[int] = None,
                strict: bool = True) -> np.ndarray:
    """All frames of a folder or video as one ``(F, H, W, 3)`` uint8 RGB array.

    Use :func:`iter_frames` for long videos. The video's rate is ``iter_frames(path).fps``
    or ``probe(path)["fps"]``.

    Raises:
        PdfgcError: as :func:`iter_frames`, or frames of different sizes in a folder.
    """
    frames = []
    for i, frame in enumerate(iter_frames(path, fps=fps, strict=strict)):
        if max_frames is not None and i >= max_frames:
            break
        if frames and frame.shape != frames[0].shape:
            raise PdfgcError(f"frames differ in size ({frames[0].shape[:2]} vs {frame.shape[:2]}) in: {path}")
        frames.append(frame)
    if not frames:
        raise PdfgcError(f"no frames in: {path}")
    return np.stack(frames)


# --- writing ---------------------------------------------------------------------------------


def _current_umask() -> int:
    """The process umask, read without changing it (os.umask would race with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


class VideoWriter:
    """Stream RGB frames into an H.264 mp4 (libx264, yuv420p, BT.709 tags), optionally with audio.

    Use as a context manager::

        with VideoWriter("out.mp4", fps=25, audio_path="speech.wav") as w:
            for batch in batches:           # (H, W, 3) or (N, H, W, 3) uint8 RGB
                w.write(batch)

    * Frames stream to ffmpeg as they come (memory stays flat). All frames must have the same
      size; odd widths/heights are padded by one black pixel on the right/bottom because
      yuv420p needs even sides.
    * Audio (any file ffmpeg reads, or a float waveform with ``audio_rate``) is encoded to AAC
      when the writer closes; its first sample plays at t = 0 together with frame 0. With
      ``trim_audio=True`` (default) it is cut to the video duration ``F / fps``; with False it
      is kept whole. The video is never cut.
    * Atomic: everything is written under a hidden temporary name in the target's folder and
      renamed onto ``path`` only after ffmpeg succeeded; on any exception (inside the ``with``
      block or in ffmpeg) nothing is left under ``path``.

    Args:
        path: output ``.mp4`` path.
        fps: frame rate (25 for the model).
        audio_path: optional audio file to mux.
        audio: optional waveform ``(N,)`` float in [-1, 1] instead of ``audio_path``.
        audio_rate: sample rate of ``audio`` (default 16000).
        crf: x264 constant rate factor (0 lossless .. 51; 18 is visually near-lossless, the
            release used ffmpeg's default 23).
        preset: x264 speed/size trade-off.
        audio_bitrate: AAC bitrate.
        trim_audio: cut the audio at the video's end (see above).
        threads: ffmpeg threads (None: ffmpeg's choice).
    """

    def __init__(self, path: PathLike, fps: float = 25.0, audio_path: Optional[PathLike] = None, *,
                 audio: Optional[np.ndarray] = None, audio_rate: int = 16000, crf: int = 18,
                 preset: str = "medium", audio_bitrate: str = "128k", trim_audio: bool = True,
                 threads: Optional[int] = None):
        if audio_path is not None and audio is not None:
            raise ValueError("give audio_path or audio, not both")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.audio_path = Path(audio_path) if audio_path is not None else None
        if self.audio_path is not None and not self.audio_path.is_file():
            raise PdfgcError(f"audio file not found: {self.audio_path}")
        self._audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        self.audio_rate = int(audio_rate)
        self.crf, self.preset, self.audio_bitrate = int(crf), str(preset), str(audio_bitrate)
        self.trim_audio, self.threads = trim_audio, threads
        self.num_frames = 0
        self.size: Optional[tuple[int, int]] = None  # (H, W) of the input frames
        self._proc: Optional[subprocess.Popen] = None
        self._stack: Optional[contextlib.ExitStack] = None
        self._final_tmp: Optional[Path] = None
        self._video_tmp: Optional[Path] = None
        self._err = None

    # context management -----------------------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        self._stack = contextlib.ExitStack()
        self._final_tmp = self._stack.enter_context(atomic_path(self.path, suffix=".mp4"))
        self._err = self._stack.enter_context(tempfile.TemporaryFile())
        if self._has_audio:
            # Video first into a second hidden temp beside the target; audio is muxed on close.
            self._video_tmp = self._scratch(".video.mp4")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._finish()
            else:
                self._abort()
        except BaseException as err:
            self._abort()
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        return bool(self._stack.__exit__(exc_type, exc, tb))

    def _scratch(self, suffix: str) -> Path:
        """A hidden scratch file beside the target, deleted when the writer exits (any way)."""
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=suffix, dir=self.path.parent)
        os.close(fd)
        scratch = Path(name)
        self._stack.callback(lambda: scratch.unlink(missing_ok=True))
        return scratch

    @property
    def _has_audio(self) -> bool:
        return self.audio_path is not None or self._audio is not None

    # writing ------------------------------------------------------------------------------
    def write(self, frames: Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]) -> None:
        """Append one frame ``(H, W, 3)`` or a batch ``(N, H, W, 3)`` of uint8 RGB frames.

        Float tensors ``(3, H, W)`` / ``(N, 3, H, W)`` in [-1, 1] are converted with :func:`to_uint8`.
        """
        if self._stack is None:
            raise RuntimeError("VideoWriter must be used as a context manager")
        if isinstance(frames, torch.Tensor) and frames.is_floating_point():
            frames = to_uint8(frames)
        arr = np.asarray(frames)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) or (N, H, W, 3) uint8 RGB frames, got {arr.dtype} {arr.shape}")
        if arr.shape[0] == 0:
            return
        if self.size is None:
            self.size = (arr.shape[1], arr.shape[2])
            self._start()
        elif arr.shape[1:3] != self.size:
            raise ValueError(f"frame size changed from {self.size} to {arr.shape[1:3]}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(arr).tobytes())
        except (BrokenPipeError, OSError):
            raise PdfgcError(f"ffmpeg stopped while writing {self.path} ({self._stderr_tail()})") from None
        self.num_frames += arr.shape[0]

    def _start(self) -> None:
        h, w = self.size
        target = self._video_tmp if self._has_audio else self._final_tmp
        cmd = [_ffmpeg(), "-y", "-nostdin", "-v", "error",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", f"{self.fps:g}",
               "-i", "-", "-an",
               # pad odd sides; RGB -> limited-range BT.709 YUV, tagged so players decode it the same
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2,scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
               "-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
               "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
               "-color_range", "tv"]
        if not self._has_audio:  # moov atom first, for web playback (the mux pass does it otherwise)
            cmd += ["-movflags", "+faststart"]
        if self.threads:
            cmd += ["-threads", str(self.threads)]
        cmd += ["-f", "mp4", str(target)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)

    def _stderr_tail(self) -> str:
        if self._err is None:
            return ""
        self._err.seek(0)
        return _last_line(self._err.read())

    def _finish(self) -> None:
        if self._proc is None:
            raise PdfgcError(f"no frames were written to {self.path}")
        self._proc.stdin.close()
        if self._proc.wait() != 0:
            raise PdfgcError(f"ffmpeg failed to encode {self.path} ({self._stderr_tail()})")
        if self._has_audio:
            self._mux_audio()
        # mkstemp creates 0600 files; give the result the usual umask-based permissions.
        os.chmod(self._final_tmp, 0o666 & ~_current_umask())

    def _mux_audio(self) -> None:
        """Copy the video stream and add the audio as AAC, both starting at t = 0."""
        if self._audio is not None:
            import soundfile as sf

            audio_src = self._scratch(".audio.wav")
            sf.write(str(audio_src), np.clip(self._audio, -1.0, 1.0), self.audio_rate,
                     subtype="FLOAT", format="WAV")
        else:
            audio_src = self.audio_path
        cmd = [_ffmpeg(), "-y", "-nostdin", "-v", "error", "-i", str(self._video_tmp),
               "-i", str(audio_src), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"]
        # async=1 with first_pts=0 pins the audio's first sample to t = 0 even if the source
        # carries a start offset (e.g. an mp3's encoder delay or an audio track from an mp4).
        afilter = "aresample=async=1:first_pts=0"
        if self.trim_audio:
            afilter += f",atrim=end={self.num_frames / self.fps:.6f}"
        cmd += ["-af", afilter, "-c:a", "aac", "-b:a", self.audio_bitrate,
                "-movflags", "+faststart", "-f", "mp4", str(self._final_tmp)]
        proc = subprocess.run(cmd, capture_output=True)
        if proc.returncode != 0:
            raise PdfgcError(f"cannot add audio {audio_src} to {self.path} ({_last_line(proc.stderr)})")

    def _abort(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
            self._proc.kill()
            self._proc.wait()


def write_video(path: PathLike, frames: Union[np.ndarray, Sequence[np.ndarray], torch.Tensor],
                fps: float = 25.0, audio_path: Optional[PathLike] = None, **kwargs) -> Path:
    """Write ``frames`` (``(N, H, W, 3)`` uint8 RGB, or a sequence of frames) to an mp4.

    ``kwargs`` go to :class:`VideoWriter` (``crf``, ``trim_audio``, ``audio``...). Returns the path.
    """
    with VideoWriter(path, fps=fps, audio_path=audio_path, **kwargs) as writer:
        if isinstance(frames, (np.ndarray, torch.Tensor)):
            writer.write(frames)
        else:
            for frame in frames:
                writer.write(frame)
    return Path(path)
