"""Generation: one portrait + speech audio (+ driver videos) -> a talking-head mp4.

This is the release's inference (``Dorniwang/PD-FGC-inference``, ``lib/inferencer.py``), redone
so that it is frame-accurate, streams long audio in bounded memory and runs batched on CPU or GPU.
``generate.py`` (Hydra) and the console script are thin wrappers around it; a web app can hold a
:class:`GenerationPipeline` (networks loaded once) and call :meth:`GenerationPipeline.generate`
per request with a progress callback.

Pipeline, per output frame ``i`` (shown at ``t = i / 25`` s), ``F = num_video_frames(samples)``:

1. ``id_vec (2048)``, ``id_map (512, m, m)`` = E_app(portrait), once.
2. mouth ``(500)`` = E_aud(``frame_windows(mel, F)[i]``) x ``mouth_scale``, then a Gaussian
   smoothing over time (``mouth_smoothing``).
3. pose ``(6)``, eye ``(6)``, emotion ``(30)`` = E_mot heads of the pose / expression / eye
   driver frames ``drop_first_frames + i mod (L - drop_first_frames)`` (each driver of length
   ``L`` loops on its own); pose gets a moving mean (``pose_smoothing``), eye x ``eye_scale``,
   emotion x ``emotion_scale``.
4. The controls: a disabled factor's code is zeroed (mouth, emotion, pose), ``blink`` / ``gaze``
   mask the eye code's dims 0, 1, 4, 5 / 2, 3; with no control every motion code is zero.
5. ``G(compose_style(id, mouth, emotion, eye, pose), id_map)`` -> ``(3, S, S)`` in [-1, 1].

Differences from the release, all deliberate:

* **Timing.** The release wrote the audio window of frame ``n + 2`` as output frame ``n`` with the
  audio starting at 0, so its video led the sound by 80 ms and ended 4 frames early. Here frame
  ``i`` uses ``frame_windows(mel, F)[i]`` (the training pairing, zero-filled outside the audio):
  lips are on time and there is one frame per 40 ms of audio.
* **Driver offset.** The release dropped each driver's first 2 frames so that driver frame ``n+2``
  met audio window ``n + 2``, i.e. both streams sat on the same clock. With aligned timing output
  frame ``i`` *is* time ``i``, so driver frame ``i`` already belongs to it:
  ``drop_first_frames`` defaults to 0 (set 2 to reproduce the release's pairing exactly).
* **Mouth smoothing padding.** The release's ``conv1d`` zero-pads, which shrinks the first and
  last mouth codes to 0.726 of their value (towards "no mouth"). The default ``edge`` repeats the
  end codes instead, so a constant code stays constant; ``padding: zeros`` is the release.
* **Streaming.** The mel is computed for the whole file (small), but audio codes, driver images,
  generation and encoding run chunk by chunk (``chunk_frames``) into the mp4 writer; the temporal
  filters see one halo frame on each side of a chunk, so chunked output equals one-shot output.
  Driver motion codes (42 floats per driver frame) are encoded once up front, only as many frames
  as the output needs.
* **Driver videos** are read at 25 fps on their own timeline (resampled if they have another
  rate), so driver frame ``i`` is the one shown at ``t = i / 25``; frame folders (the release's
  only input) are taken as 25 fps.
* **Output.** H.264 + AAC mp4 written atomically, only the generated face by default
  (``strip=True`` gives the release's appearance | generated | pose | expression | eye strip).
  Images are rounded to uint8 (the release truncated).
* **Noise.** The generator's ``noise_mode`` is ``fixed`` by default: the same noise maps, drawn
  from ``seed``, for every frame (no per-frame texture flicker; chunking cannot change it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from pdfgc.errors import PdfgcError
from pdfgc.fast_paths import PRECISIONS as FAST_PATH_PRECISIONS
from pdfgc.fast_paths import AcceleratedNetwork, FastPaths, accelerate

# pdfgc.networks (and the audio/video modules) are imported inside the functions that use them:
# importing the networks pulls in torchvision (seconds), and bad input should fail fast.

#: The five controls, in the release's flag names (``--all`` sets them all).
CONTROLS = ("mouth", "blink", "gaze", "emo", "headpose")
#: Which driver feeds which control (mouth always comes from the audio).
DRIVER_OF = {"headpose": "pose_path", "emo": "exp_path", "blink": "eye_path", "gaze": "eye_path"}
DRIVER_FIELDS = ("pose_path", "exp_path", "eye_path")
#: fp32 | bf16 / fp16 (autocast) | bf16-true / fp16-true (weights cast): see pdfgc.fast_paths.
PRECISIONS = tuple(FAST_PATH_PRECISIONS)
NOISE_MODES = ("fixed", "random", "none")
FPS = 25  # the model's only frame rate: 4 mel rows (40 ms) per frame
RELEASE_SEED = 20202001

#: ``progress(stage, done, total)``: ``stage`` is ``"drivers"`` (driver frames encoded) or
#: ``"frames"`` (output frames written).
ProgressFn = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class MouthSmoothing:
    """Temporal Gaussian on the mouth codes (the release: ``conv_feat(k=3, sigma=1)``)."""

    kernel: int = 3  # taps (odd); 1 disables the smoothing
    sigma: float = 1.0  # in frames; k=3, sigma=1 gives weights 0.274 / 0.452 / 0.274
    padding: str = "edge"  # "edge" repeats the end codes; "zeros" is the release (ends x 0.726)


@dataclass
class GenerationRequest:
    """Everything one generation needs besides the networks. Field names follow the release CLI.

    Paths may be ``str`` or ``Path``. A driver path is a folder of frames (sorted by name) or a
    video file; it is needed only when a control it feeds is on (``pose_path``: ``headpose``;
    ``exp_path``: ``emo``; ``eye_path``: ``blink``, ``gaze``) and otherwise only shown in the strip.
    """

    audio_path: str
    app_img_path: str
    output_path: str
    pose_path: Optional[str] = None
    exp_path: Optional[str] = None
    eye_path: Optional[str] = None
    mouth: bool = False
    blink: bool = False
    gaze: bool = False
    emo: bool = False
    headpose: bool = False
    all: bool = False
    batch_size: int = 8
    chunk_frames: int = 200
    precision: str = "fp32"
    seed: int = RELEASE_SEED
    noise: str = "fixed"
    mouth_scale: float = 1.5
    mouth_smoothing: MouthSmoothing = field(default_factory=MouthSmoothing)
    eye_scale: float = 1.2
    emotion_scale: float = 1.2
    pose_smoothing: int = 3
    drop_first_frames: int = 0
    strip: bool = False
    fps: int = FPS

    def controls(self) -> dict[str, bool]:
        """The effective controls: ``all`` switches on all five."""
        return {name: bool(self.all or getattr(self, name)) for name in CONTROLS}


@dataclass
class ModelOptions:
    """Which networks to load and where to run them (fixed for a :class:`GenerationPipeline`)."""

    checkpoints: str  # folder with the four official files (+ optional networks.yaml sidecar)
    networks: Any = "official"  # used when the folder has no networks.yaml: name, yaml path or mapping
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fast paths (pdfgc.fast_paths; the request's `precision` picks the dtype)
    channels_last: bool = False  # NHWC feature maps in every network
    compile: bool = False  # torch.compile each network (first call compiles: seconds to minutes)
    modconv_impl: str = "auto"  # generator modulated conv: auto | grouped | scaled_input
    cuda_graphs: bool = False  # replay captured CUDA graphs (CUDA only; fixed batch size)


@dataclass
class GenerationResult:
    """What :meth:`GenerationPipeline.generate` wrote."""

    output_path: Path
    num_frames: int
    fps: int
    duration: float  # seconds of audio
    width: int
    height: int
    seconds: dict[str, float]  # wall time per phase: load, drivers, frames, total


_REQUEST_FIELDS = {f.name for f in dataclasses.fields(GenerationRequest)}
_MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelOptions)}


def config_from_mapping(cfg: Mapping[str, Any]) -> tuple[ModelOptions, GenerationRequest]:
    """Split a flat config (``configs/generate.yaml`` resolved to a dict) into the two dataclasses.

    Keys that belong to neither (``task_name``, ``paths``, ...) are ignored. Missing required
    keys raise :class:`PdfgcError` naming the option.
    """
    missing = [k for k in ("audio_path", "app_img_path", "output_path", "checkpoints")
               if cfg.get(k) in (None, "", "???")]
    if missing:
        raise PdfgcError("missing required option(s): " + ", ".join(f"{k}=..." for k in missing))
    req = {k: v for k, v in cfg.items() if k in _REQUEST_FIELDS and k != "mouth_smoothing"}
    smoothing = cfg.get("mouth_smoothing")
    if smoothing is not None:
        if not isinstance(smoothing, Mapping):
            raise PdfgcError("mouth_smoothing must be a mapping (kernel, sigma, padding)")
        unknown = set(smoothing) - {f.name for f in dataclasses.fields(MouthSmoothing)}
        if unknown:
            raise PdfgcError(f"unknown mouth_smoothing option(s): {', '.join(sorted(unknown))}")
        req["mouth_smoothing"] = MouthSmoothing(**_coerced(MouthSmoothing, smoothing, "mouth_smoothing."))
    model = ModelOptions(**{k: v for k, v in cfg.items() if k in _MODEL_FIELDS})
    return model, GenerationRequest(**_coerced(GenerationRequest, req))


def _coerced(cls: type, values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Check / convert scalar options to the dataclass field types; a wrong type is a one-line
    :class:`PdfgcError` (``batch_size=abc``), not a traceback later."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        kind = types.get(key, "Any")
        optional = kind.startswith("Optional[")
        base = kind[len("Optional["):-1] if optional else kind
        bad = PdfgcError(f"{prefix}{key} must be {'a' if base != 'int' else 'an'} {base}, got {value!r}")
        if value is None:
            if not optional:
                raise bad
        elif base == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            elif not isinstance(value, bool):
                raise bad
        elif base == "int":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
                raise bad
            value = int(value)
        elif base == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            value = float(value)
        elif base == "str":
            if isinstance(value, (bool, Mapping, list, tuple)):
                raise bad
            value = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        out[key] = value
    return out


def _validate_request(req: GenerationRequest) -> None:
    """Cheap checks of values and input paths, before any network runs."""
    if req.fps != FPS:
        raise PdfgcError(f"fps must be {FPS}: the networks were trained on 25 fps "
                         f"(4 mel rows per frame), got {req.fps}")
    if req.precision not in PRECISIONS:
        raise PdfgcError(f"precision must be one of {', '.join(PRECISIONS)}, got {req.precision!r}")
    if req.noise not in NOISE_MODES:
        raise PdfgcError(f"noise must be one of {', '.join(NOISE_MODES)}, got {req.noise!r}")
    for name in ("batch_size", "chunk_frames"):
        if int(getattr(req, name)) < 1:
            raise PdfgcError(f"{name} must be >= 1, got {getattr(req, name)}")
    sm = req.mouth_smoothing
    if sm.kernel < 1 or sm.kernel % 2 == 0:
        raise PdfgcError(f"mouth_smoothing.kernel must be odd and >= 1, got {sm.kernel}")
    if sm.kernel > 1 and not sm.sigma > 0:
        raise PdfgcError(f"mouth_smoothing.sigma must be > 0, got {sm.sigma}")
    if sm.padding not in ("edge", "zeros"):
        raise PdfgcError(f"mouth_smoothing.padding must be edge or zeros, got {sm.padding!r}")
    if req.pose_smoothing < 1 or req.pose_smoothing % 2 == 0:
        raise PdfgcError(f"pose_smoothing must be odd and >= 1, got {req.pose_smoothing}")
    if req.drop_first_frames < 0:
        raise PdfgcError(f"drop_first_frames must be >= 0, got {req.drop_first_frames}")

    def check_file(label: str, path: Any) -> None:
        p = Path(path)
        if not p.exists():
            raise PdfgcError(f"{label} not found: {p}")
        if not p.is_file():
            raise PdfgcError(f"{label} must be a file, got a folder: {p}")

    check_file("audio file", req.audio_path)
    check_file("portrait image (app_img_path)", req.app_img_path)
    controls = req.controls()
    for control, fld in DRIVER_OF.items():
        if controls[control] and not getattr(req, fld):
            raise PdfgcError(f"{control}=true needs a driver: set {fld}=<frame folder or video>")
    for fld in DRIVER_FIELDS:
        path = getattr(req, fld)
        if path and not Path(path).exists():
            raise PdfgcError(f"driver {fld} not found: {path}")
    out = Path(req.output_path)
    if out.exists() and out.is_dir():
        raise PdfgcError(f"output_path is a folder: {out}")


# ---------------------------------------------------------------------------------------------
# code post-processing (pure functions, unit-tested against the release's rules)
# ---------------------------------------------------------------------------------------------


def gaussian_kernel(kernel: int, sigma: float) -> torch.Tensor:
    """Normalised Gaussian taps ``(kernel,)`` float64, as the release's ``conv_feat``."""
    half = kernel // 2
    x = torch.arange(-half, kernel - half, dtype=torch.float64)
    k = torch.exp(-x ** 2 / (2.0 * sigma ** 2))
    return k / k.sum()


def smooth_gaussian(x: torch.Tensor, kernel: int = 3, sigma: float = 1.0,
                    padding: str = "edge") -> torch.Tensor:
    """Temporal Gaussian of a code sequence ``(N, D) -> (N, D)``.

    ``padding="zeros"`` is the release (``F.conv1d(..., padding=k//2)``); ``"edge"`` repeats the
    first / last code. ``kernel=1`` returns ``x`` unchanged.
    """
    if kernel <= 1 or x.shape[0] == 0:
        return x
    half = kernel // 2
    w = gaussian_kernel(kernel, sigma).to(device=x.device, dtype=x.dtype)
    seq = x.t()[None]  # (1, D, N): channels = code dims, convolved independently
    seq = F.pad(seq, (half, half), mode="replicate" if padding == "edge" else "constant")
    out = F.conv1d(seq, w.view(1, 1, -1).expand(x.shape[1], 1, -1), groups=x.shape[1])
    return out[0].t().contiguous()


def smooth_mean(x: torch.Tensor, kernel: int = 3) -> torch.Tensor:
    """Centred moving mean ``(N, D) -> (N, D)`` whose window shrinks at the ends.

    ``kernel=3`` is the release's pose filter: mean of frames ``i-1..i+1``, of ``0..1`` at the
    start and of ``N-2..N-1`` at the end.
    """
    if kernel <= 1 or x.shape[0] == 0:
        return x
    half = kernel // 2
    csum = torch.cat([x.new_zeros(1, x.shape[1]), x.cumsum(0)])  # csum[j] = sum x[:j]
    n = x.shape[0]
    idx = torch.arange(n, device=x.device)
    lo = (idx - half).clamp(min=0)
    hi = (idx + half + 1).clamp(max=n)
    return (csum[hi] - csum[lo]) / (hi - lo).to(x.dtype)[:, None]


def driver_indices(frames: torch.Tensor | range, num_driver_frames: int, drop: int = 0) -> torch.Tensor:
    """Driver frame index for each output frame: ``drop + i mod (L - drop)`` (independent loops).

    Args:
        frames: output frame indices ``i``.
        num_driver_frames: ``L``, frames in the driver (or as many as were read).
        drop: frames skipped at the driver's start (``drop_first_frames``).
    """
    i = torch.as_tensor(list(frames) if isinstance(frames, range) else frames, dtype=torch.long)
    usable = num_driver_frames - drop
    if usable < 1:
        raise PdfgcError(f"driver has {num_driver_frames} frame(s); drop_first_frames={drop} leaves none")
    return drop + torch.remainder(i, usable)


def apply_controls(mouth: torch.Tensor, emotion: torch.Tensor, eye: torch.Tensor,
                   pose: torch.Tensor, controls: Mapping[str, bool]) -> tuple[torch.Tensor, ...]:
    """Zero or mask the disabled factors exactly as the release's ``reset_cfg`` flags do.

    Args: ``mouth (N, 500)``, ``emotion (N, 30)``, ``eye (N, 6)``, ``pose (N, 6)`` (already scaled
    and smoothed). Returns the same four tensors. No ``mouth`` / ``emo`` / ``headpose``: that code
    is 0; no ``blink``: eye x ``GAZE_MASK``; no ``gaze``: eye x ``BLINK_MASK``.
    """
    from pdfgc.networks.codes import BLINK_MASK, GAZE_MASK

    if not controls.get("mouth", False):
        mouth = torch.zeros_like(mouth)
    if not controls.get("emo", False):
        emotion = torch.zeros_like(emotion)
    if not controls.get("headpose", False):
        pose = torch.zeros_like(pose)
    if not controls.get("blink", False):
        eye = eye * eye.new_tensor(GAZE_MASK)
    if not controls.get("gaze", False):
        eye = eye * eye.new_tensor(BLINK_MASK)
    return mouth, emotion, eye, pose


def postprocess_codes(mouth: torch.Tensor, emotion: torch.Tensor, eye: torch.Tensor,
                      pose: torch.Tensor, req: GenerationRequest) -> tuple[torch.Tensor, ...]:
    """Raw per-frame codes of a frame range -> the generator's motion codes (release heuristics).

    ``mouth (N, 500)`` from E_aud, ``emotion (N, 30)``, ``eye (N, 6)``, ``pose (N, 6)`` from E_mot,
    for consecutive output frames. Mouth x ``mouth_scale`` then Gaussian; pose moving mean; eye x
    ``eye_scale``; emotion x ``emotion_scale``; then :func:`apply_controls`. The filters treat the
    range's ends as the sequence's ends, so a chunk passes one halo frame each side (see
    :meth:`GenerationPipeline.iter_frames`).
    """
    sm = req.mouth_smoothing
    mouth = smooth_gaussian(mouth * req.mouth_scale, sm.kernel, sm.sigma, sm.padding)
    pose = smooth_mean(pose, req.pose_smoothing)
    return apply_controls(mouth, emotion * req.emotion_scale, eye * req.eye_scale, pose,
                          req.controls())


# ---------------------------------------------------------------------------------------------
# drivers
# ---------------------------------------------------------------------------------------------


class _Driver:
    """One driver (frame folder or video), cropped to the networks' side, read lazily.

    ``encode`` reads the first ``needed`` frames once, runs E_mot on them and keeps only the
    codes (42 floats per frame); ``looping_images`` re-reads frames in output order for the strip.
    """

    def __init__(self, path: str, size: int, drop: int):
        self.path = str(path)
        self.size = size
        self.drop = drop
        self.count = 0  # frames read: min(L, needed)
        self.pose = self.eye = self.emotion = None  # (count, 6) / (count, 6) / (count, 30) float32

    def _frames(self) -> Iterator[torch.Tensor]:
        from pdfgc.video import iter_frames, official_crop

        # Videos are read on their own timeline at 25 fps (a 30 fps driver keeps its real speed);
        # frame folders carry no rate and are taken as 25 fps, one frame per output frame.
        frames = iter(iter_frames(self.path, fps=FPS))
        try:
            for frame in frames:
                yield torch.as_tensor(official_crop(frame, self.size), dtype=torch.float32)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # stops a video's ffmpeg process when the caller stops early

    def encode(self, needed: int, encode_batch: Callable[[torch.Tensor], tuple] | None,
               batch_size: int, progress: Callable[[int], None]) -> None:
        """Read driver frames ``0 .. min(L, needed) - 1`` and, unless ``encode_batch`` is None
        (a driver shown in the strip only), keep their E_mot codes. Codes of the ``drop`` first
        frames are never used but keep the indexing plain."""
        pose, eye, emo, batch = [], [], [], []
        count = 0

        def flush():
            if encode_batch is not None:
                p, e, m = encode_batch(torch.stack(batch))
                pose.append(p), eye.append(e), emo.append(m)
            batch.clear()
            progress(count)

        frames = self._frames()
        try:
            for img in frames:
                batch.append(img)
                count += 1
                if len(batch) == batch_size:
                    flush()
                if count >= needed:
                    break  # the output never reaches further frames
            if batch:
                flush()
        finally:
            frames.close()  # release the decoder (ffmpeg pipe) when stopping early
        if count == 0:
            raise PdfgcError(f"driver has no frames: {self.path}")
        if count <= self.drop:
            raise PdfgcError(f"driver has {count} frame(s); drop_first_frames={self.drop} leaves none: "
                             f"{self.path}")
        self.count = count
        if encode_batch is not None:
            self.pose, self.eye, self.emotion = torch.cat(pose), torch.cat(eye), torch.cat(emo)

    def indices(self, start: int, stop: int) -> torch.Tensor:
        """Driver frame index of output frames ``start .. stop - 1``."""
        return driver_indices(range(start, stop), self.count, self.drop)

    def looping_images(self) -> Iterator[torch.Tensor]:
        """Cropped frames ``(3, S, S)`` in output order: ``drop, drop+1, ..., L-1, drop, ...``."""
        n = self.count
        while True:
            frames = self._frames()
            try:
                for k, img in enumerate(frames):
                    if k >= n:
                        break
                    if k >= self.drop:
                        yield img
            finally:
                frames.close()


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------


def call_padded(network: Callable[..., Any], batch_size: int, *inputs: torch.Tensor) -> Any:
    """``network(*inputs)`` with the batch padded to ``batch_size`` (repeating the last sample)
    and the outputs (a tensor or a tuple of tensors) cut back to the real samples.

    Compiled or CUDA-graphed networks want one input shape: a short last batch would otherwise
    compile or capture again. Per-sample networks give the same numbers for the real samples.
    """
    n = inputs[0].shape[0]
    if n >= batch_size:
        return network(*inputs)
    pad = batch_size - n
    out = network(*[torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in inputs])
    return tuple(o[:n] for o in out) if isinstance(out, (tuple, list)) else out[:n]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA device without CUDA is a user error."""
    name = str(name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise PdfgcError(f"unknown device {name!r} (use auto, cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PdfgcError(f"device {name} requested but CUDA is not available (use device=cpu)")
    return dev


def resolve_networks_config(checkpoints: str | os.PathLike, networks: Any = "official"):
    """The network config the checkpoints were exported with (a ``DictConfig``).

    ``<checkpoints>/networks.yaml`` (written by our stage exports) wins; otherwise ``networks``
    (``official``, ``small``, a YAML path or an already loaded mapping) is used.
    """
    from pdfgc.networks import load_networks_config

    sidecar = Path(checkpoints) / "networks.yaml"
    return load_networks_config(str(sidecar) if sidecar.is_file() else networks)


@dataclass
class _Prepared:
    """Inputs of one request, ready for :meth:`GenerationPipeline.iter_images`."""

    mel: np.ndarray  # (T, 80) whole-file mel (100 rows per second: small)
    num_frames: int
    duration: float
    portrait: torch.Tensor  # (3, S, S) in [-1, 1], cropped
    id_vec: torch.Tensor  # (1, 2048) on the device
    id_map: torch.Tensor  # (1, 512, m, m) on the device
    drivers: dict  # driver field -> _Driver (codes encoded)


class GenerationPipeline:
    """Networks loaded once (eval mode, on one device); :meth:`generate` runs a request.

    Args:
        options: :class:`ModelOptions`, or a checkpoint folder.
        networks: an already built object with ``appearance, motion, audio, generator`` (skips
            loading; for tests and benchmarks).
    """

    def __init__(self, options: ModelOptions | str | os.PathLike, networks: Any = None):
        if not isinstance(options, ModelOptions):
            options = ModelOptions(checkpoints=str(options))
        self.options = options
        self.device = resolve_device(options.device)
        if networks is None:
            from pdfgc.checkpoints import load_official

            if not Path(options.checkpoints).is_dir():
                raise PdfgcError(f"checkpoint folder not found: {options.checkpoints}")
            cfg = resolve_networks_config(options.checkpoints, options.networks)
            networks = load_official(options.checkpoints, device=self.device, networks_cfg=cfg)
        self.nets = networks
        for name in ("appearance", "motion", "audio", "generator"):
            getattr(self.nets, name).to(self.device).eval()
        self.image_size = int(self.nets.generator.size)
        self._accelerated: dict[str, dict[str, AcceleratedNetwork]] = {}  # by precision

    def fast_paths(self, precision: str) -> FastPaths:
        """The switches of this pipeline's :class:`ModelOptions` with ``precision``."""
        o = self.options
        return FastPaths(precision=precision, channels_last=bool(o.channels_last),
                         compile=bool(o.compile), modconv_impl=str(o.modconv_impl),
                         cuda_graphs=bool(o.cuda_graphs))

    def networks(self, precision: str) -> dict[str, AcceleratedNetwork]:
        """``appearance, motion, audio, generator`` wrapped with the fast paths at ``precision``
        (float32 in and out; built once per precision: ``*-true`` holds a cast copy)."""
        if precision not in self._accelerated:
            paths = self.fast_paths(precision)
            try:
                paths.validate(self.device)
            except ValueError as exc:
                raise PdfgcError(str(exc)) from exc
            self._accelerated[precision] = {
                name: accelerate(getattr(self.nets, name), paths, self.device, copy_weights=True)
                for name in ("appearance", "motion", "audio", "generator")}
        return self._accelerated[precision]

    def _call(self, network: AcceleratedNetwork, batch_size: int, *inputs: torch.Tensor) -> Any:
        """``network(*inputs)``; compiled or graphed networks get a padded fixed-size batch."""
        if self.options.compile or self.options.cuda_graphs:
            return call_padded(network, batch_size, *inputs)
        return network(*inputs)

    def _encode_motion(self, precision: str, batch_size: int) -> Callable[[torch.Tensor], tuple]:
        def run(imgs: torch.Tensor) -> tuple:
            with torch.inference_mode():
                pose, eye, emotion, _ = self._call(self.networks(precision)["motion"], batch_size, imgs)
            return tuple(t.float().cpu() for t in (pose, eye, emotion))
        return run

    def _mouth_codes(self, mel: np.ndarray, start: int, stop: int, req: GenerationRequest) -> torch.Tensor:
        """E_aud mouth codes ``(stop - start, 500)`` of output frames ``start .. stop - 1``.

        Takes ``frame_windows`` of a mel slice so the work and memory are per chunk; identical to
        ``frame_windows(mel, F)[start:stop]`` (window of frame i = rows [4(i-2), 4(i-2)+20)).
        """
        from pdfgc.audio import FRAME_OFFSET, MEL_ROWS_PER_FRAME, WINDOW_ROWS, frame_windows

        # frame_windows(sub, n)[j] reads rows [4(j-2), 4(j-2)+20) of `sub`, zero-filling those
        # before its start. Starting `sub` at frame start - lead (lead = 2 where possible) makes
        # window j = lead exactly frame `start`'s window, with real rows wherever the full mel has them.
        lead = min(start, FRAME_OFFSET)
        first = (start - lead) * MEL_ROWS_PER_FRAME
        last = (stop - 1 - FRAME_OFFSET) * MEL_ROWS_PER_FRAME + WINDOW_ROWS
        wins = frame_windows(mel[first:max(first, last)], stop - start + lead)[lead:]
        codes = []
        for s in range(0, wins.shape[0], req.batch_size):
            with torch.inference_mode():
                _, mouth = self._call(self.networks(req.precision)["audio"], req.batch_size,
                                      wins[s:s + req.batch_size])
            codes.append(mouth.float().cpu())
        return torch.cat(codes)

    # -- the work ------------------------------------------------------------------------------
    def prepare(self, req: GenerationRequest, progress: ProgressFn | None = None) -> "_Prepared":
        """Validate the inputs, read audio and portrait, encode the drivers' codes."""
        from pdfgc.audio import WINDOW_ROWS, load_audio, mel_spectrogram, num_video_frames, num_windows
        from pdfgc.video import official_crop, read_image

        _validate_request(req)
        self.networks(req.precision)  # fail early on fp16 + CPU (and build the fast paths)
        wave = load_audio(req.audio_path)
        num_frames = num_video_frames(wave.shape[0])
        mel = mel_spectrogram(wave)
        if num_windows(mel.shape[0]) < 1 or num_frames < 1:
            raise PdfgcError(f"audio too short: {wave.shape[0] / 16000:.3f} s, need at least one "
                             f"{WINDOW_ROWS}-row mel window (about 0.13 s): {req.audio_path}")
        duration = wave.shape[0] / 16000.0
        del wave

        try:
            image = read_image(req.app_img_path)
        except PdfgcError:
            raise
        except Exception as exc:  # decoder errors: one line naming the file
            raise PdfgcError(f"cannot read portrait image: {req.app_img_path} ({exc})") from exc
        portrait = torch.as_tensor(official_crop(image, self.image_size), dtype=torch.float32)
        with torch.inference_mode():
            id_vec, id_map = self.networks(req.precision)["appearance"](portrait[None])
        id_vec, id_map = id_vec.float(), id_map.float()

        controls = req.controls()
        drivers: dict[str, _Driver] = {}  # by driver field
        by_path: dict[str, _Driver] = {}  # one decode + encode per distinct file
        encoded: set[str] = set()  # drivers whose codes some enabled control uses
        for fld in DRIVER_FIELDS:
            path = getattr(req, fld)
            used = any(controls[c] for c, f in DRIVER_OF.items() if f == fld)
            if path and (used or req.strip):
                key = os.path.realpath(path)
                if key not in by_path:
                    by_path[key] = _Driver(path, self.image_size, req.drop_first_frames)
                drivers[fld] = by_path[key]
                if used:
                    encoded.add(key)
        needed = req.drop_first_frames + num_frames
        total = needed * len(by_path)
        done = 0
        for key, drv in by_path.items():
            base = done

            def report(count, base=base):
                if progress:
                    progress("drivers", base + count, total)

            encoder = self._encode_motion(req.precision, req.batch_size) if key in encoded else None
            drv.encode(needed, encoder, req.batch_size, report)
            done += needed
            report(needed)  # a short driver stops early; show the stage as complete
        return _Prepared(mel=mel, num_frames=num_frames, duration=duration, portrait=portrait,
                         id_vec=id_vec, id_map=id_map, drivers=drivers)

    def motion_codes(self, p: "_Prepared", req: GenerationRequest, start: int,
                     stop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The generator's motion codes of output frames ``start .. stop - 1`` (CPU float32).

        Returns ``mouth (n, 500)``, ``emotion (n, 30)``, ``eye (n, 6)``, ``pose (n, 6)`` after
        :func:`postprocess_codes`. Raw codes are computed for ``[start - h, stop + h)`` (``h`` =
        the larger filter half-width, clipped to ``[0, F)``) and the middle is kept, so any split
        of the frames into chunks gives the same codes as one call over all frames.
        """
        from pdfgc.networks.codes import EMOTION_DIM, EYE_DIM, POSE_DIM

        halo = max(req.mouth_smoothing.kernel // 2, req.pose_smoothing // 2)
        a, b = max(0, start - halo), min(p.num_frames, stop + halo)

        def driver_codes(fld: str, attr: str, dim: int) -> torch.Tensor:
            drv = p.drivers.get(fld)
            if drv is None or getattr(drv, attr) is None:  # factor off: its code is zeroed anyway
                return torch.zeros(b - a, dim)
            return getattr(drv, attr)[drv.indices(a, b)]

        codes = postprocess_codes(
            self._mouth_codes(p.mel, a, b, req), driver_codes("exp_path", "emotion", EMOTION_DIM),
            driver_codes("eye_path", "eye", EYE_DIM), driver_codes("pose_path", "pose", POSE_DIM), req)
        keep = slice(start - a, stop - a)
        return tuple(c[keep] for c in codes)

    def iter_images(self, req: GenerationRequest, prepared: "_Prepared | None" = None,
                    progress: ProgressFn | None = None) -> Iterator[torch.Tensor]:
        """Yield the output chunk by chunk as float images ``(n, 3, S, W)`` in [-1, 1] (CPU),
        ``W = S``, or ``5 S`` with ``strip``. ``n = chunk_frames`` except for the last chunk.

        The result does not depend on ``chunk_frames`` (see :meth:`motion_codes`) nor, up to
        float rounding, on ``batch_size``.
        """
        from pdfgc.networks.codes import compose_style

        p = prepared if prepared is not None else self.prepare(req, progress)
        generator = self.networks(req.precision)["generator"]
        gen = generator.network
        if (gen.noise_mode, gen.noise_seed) != (req.noise, req.seed):
            gen.noise_mode = req.noise
            gen.noise_seed = req.seed
            generator.reset()  # captured CUDA graphs hold the old noise maps / code path
        torch.manual_seed(req.seed)  # only "random" noise draws from it
        id_map = p.id_map
        strip_streams = None
        if req.strip:
            strip_streams = {fld: (p.drivers[fld].looping_images() if fld in p.drivers else None)
                             for fld in DRIVER_FIELDS}
        try:
            for s in range(0, p.num_frames, req.chunk_frames):
                e = min(p.num_frames, s + req.chunk_frames)
                mouth, emotion, eye, pose = self.motion_codes(p, req, s, e)
                style = compose_style(p.id_vec.cpu().expand(e - s, -1), mouth, emotion, eye, pose)
                images = []
                for k in range(0, e - s, req.batch_size):
                    st = style[k:k + req.batch_size]
                    with torch.inference_mode():
                        img = self._call(generator, req.batch_size, st,
                                         id_map.expand(st.shape[0], -1, -1, -1))
                    images.append(img.cpu())
                images = torch.cat(images)
                if strip_streams is not None:
                    images = self._strip(images, p.portrait, strip_streams)
                yield images
                if progress:
                    progress("frames", e, p.num_frames)
        finally:
            if strip_streams:
                for it in strip_streams.values():
                    if it is not None:
                        it.close()

    def iter_frames(self, req: GenerationRequest, prepared: "_Prepared | None" = None,
                    progress: ProgressFn | None = None) -> Iterator[np.ndarray]:
        """:meth:`iter_images` as ``(n, S, W, 3)`` uint8 RGB, rounded (the release truncated)."""
        from pdfgc.video import to_uint8

        for images in self.iter_images(req, prepared, progress):
            yield to_uint8(images)

    @staticmethod
    def _strip(gen: torch.Tensor, portrait: torch.Tensor, streams: dict) -> torch.Tensor:
        """``[appearance | generated | pose | expression | eye]`` side by side: ``(n, 3, S, 5S)``;
        a missing driver is a black panel."""
        n = gen.shape[0]
        panels = [portrait[None].expand(n, -1, -1, -1), gen]
        for fld in DRIVER_FIELDS:
            it = streams[fld]
            if it is None:
                panels.append(torch.full_like(gen, -1.0))
            else:
                panels.append(torch.stack([next(it) for _ in range(n)]))
        return torch.cat(panels, dim=3)

    def generate(self, req: GenerationRequest, progress: ProgressFn | None = None) -> GenerationResult:
        """Run ``req`` and write ``req.output_path`` (H.264 + AAC mp4, atomic: no partial file).

        Returns a :class:`GenerationResult`. Raises :class:`PdfgcError` on bad input.
        """
        from pdfgc.video import VideoWriter

        t0 = time.perf_counter()
        prepared = self.prepare(req, progress)
        t1 = time.perf_counter()
        side = self.image_size
        width = side * (5 if req.strip else 1)
        out = Path(req.output_path)
        with VideoWriter(out, fps=req.fps, audio_path=req.audio_path) as writer:
            for frames in self.iter_frames(req, prepared, progress):
                writer.write(frames)
        t2 = time.perf_counter()
        return GenerationResult(output_path=out, num_frames=prepared.num_frames, fps=req.fps,
                                duration=prepared.duration, width=width, height=side,
                                seconds={"drivers": t1 - t0, "frames": t2 - t1, "total": t2 - t0})


def generate(request: GenerationRequest, model: ModelOptions | GenerationPipeline,
             progress: ProgressFn | None = None) -> GenerationResult:
    """One-call generation: validate the request, load the networks (unless a pipeline is given),
    write the mp4. Inputs are checked before the (slow) network loading."""
    if not isinstance(model, GenerationPipeline):
        _validate_request(request)
        t0 = time.perf_counter()
        model = GenerationPipeline(model)
        load = time.perf_counter() - t0
    else:
        load = 0.0
    result = model.generate(request, progress)
    result.seconds["load"] = load
    result.seconds["total"] += load
    return result


# ---------------------------------------------------------------------------------------------
# command line (generate.py / pdfgc-generate)
# ---------------------------------------------------------------------------------------------


class _Bars:
    """tqdm bars on stderr, one per stage; silent when stderr is not a terminal."""

    def __init__(self):
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            label = {"drivers": "encoding drivers", "frames": "generating"}.get(stage, stage)
            bar = self.bars[stage] = tqdm(total=total, desc=label, unit="frame", disable=None,
                                          dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run_from_config(cfg: Any) -> GenerationResult:
    """Run the composed Hydra config of ``generate.py``: progress bars, a summary log line, and
    the written path as the last line on stdout."""
    import logging

    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        missing = [k for k in ("checkpoints", "audio_path", "app_img_path") if OmegaConf.is_missing(cfg, k)]
        if missing:
            raise PdfgcError("missing required option(s): " + " ".join(f"{k}=..." for k in missing))
        cfg = OmegaConf.to_container(cfg, resolve=True)
    options, request = config_from_mapping(cfg)
    bars = _Bars()
    try:
        result = generate(request, options, progress=bars)
    finally:
        bars.close()
    logging.getLogger("pdfgc.generate").info(
        "%d frames (%.2f s of audio), %dx%d, in %.1f s (%.2f frames/s)", result.num_frames,
        result.duration, result.width, result.height, result.seconds["total"],
        result.num_frames / max(result.seconds["frames"], 1e-9))
    print(result.output_path, flush=True)
    return result
