"""Factor oracle: a small CNN that reads SynthTalk's ground-truth factors back from an image.

On real data, control and lip-sync are measured with pretrained estimators (head pose, gaze,
SyncNet, emotion classifiers). SynthTalk has exact ground truth for every frame, so we train one
small network, :class:`FactorOracle`, to read ``pose (6)``, ``gaze (4)``, ``blink (2)``,
``mouth (2)`` and ``emotion`` (8 logits) from a frame; generated frames are then scored by
comparing the oracle's reading with the driver's ground truth (:mod:`pdfgc.metrics.control`).

The oracle is trained on some speakers and evaluated on held-out speakers, so its accuracy
report says how well it generalises to faces it has not seen, which is what generated frames
are. Its input is what the generator produces: ``(3, S, S)`` float in [-1, 1] after the
official crop, S = 64 by default (any power-of-two side >= 16; other sizes are resized by
:meth:`FactorOracle.read`).

Recommended recipe (64 px)::

    data = synthtalk_oracle_data(2000, 6)            # 12k frames, independent factors
    oracle, report = train_oracle(data, steps=800, batch_size=64, lr=3e-3,
                                  eval_data=arrays_of_the_test_pool)

Training on a world clip pool instead overfits its few clips (see
:func:`synthtalk_oracle_data`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pdfgc.errors import PdfgcError
from pdfgc.io import atomic_path

from .control import r2_score
from .disentanglement import r2_per_dim

__all__ = [
    "FACTOR_DIMS",
    "FactorOracle",
    "boxes_to_params",
    "evaluate_oracle",
    "load_oracle",
    "oracle_arrays_from_clips",
    "save_oracle",
    "synthtalk_oracle_data",
    "train_oracle",
]

# Optional per-frame ground truth carried along by oracle_arrays_from_clips: feature boxes in
# [0, 1] coordinates of the (cropped) frame, (x0, y0, x1, y1), used to read eyes and mouth at
# full resolution; emotion intensity for reports.
EXTRA_KEYS = ("eye_boxes", "mouth_box", "emotion_intensity")

# Regression outputs in this order; emotion (classification) comes after them.
FACTOR_DIMS: dict[str, int] = {"pose": 6, "gaze": 4, "blink": 2, "mouth": 2}
NUM_EMOTIONS = 8
LOSS_WEIGHTS = {"gaze": 2.0, "boxes": 0.5}
PATCH_FEATURES = 32  # per-patch summary features for the emotion head
_FORMAT = "pdfgc-factor-oracle"
_VERSION = 2  # 2: patch readers (v1 files, whole-image only, are not read)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


def _pyramid(cin: int, width: int, side: int, stop: int, max_width: int) -> tuple[nn.Sequential, int]:
    """Stem at ``side`` then stride-2 stages down to ``stop``; returns (layers, channels)."""
    layers: list[nn.Module] = [_block(cin, width, 1)]
    c = width
    while side > stop:
        cout = min(c * 2, max_width)
        layers += [_block(c, cout, 2), _block(cout, cout, 1)]
        c, side = cout, side // 2
    return nn.Sequential(*layers), c


def boxes_to_params(eye_boxes: torch.Tensor, mouth_box: torch.Tensor) -> torch.Tensor:
    """Feature boxes -> ``(B, 12)`` = (cx, cy, w, h) of eye 0, eye 1, mouth, all in [0, 1].

    Args:
        eye_boxes: ``(B, 2, 4)`` (x0, y0, x1, y1); mouth_box: ``(B, 4)``; fractions of the side.
    """
    b = torch.cat([eye_boxes.reshape(-1, 2, 4), mouth_box.reshape(-1, 1, 4)], 1).float()
    centre = (b[..., :2] + b[..., 2:]) / 2
    size = b[..., 2:] - b[..., :2]
    return torch.cat([centre, size], -1).reshape(-1, 12)


class FactorOracle(nn.Module):
    """CNN ``(B, 3, S, S)`` in [-1, 1] -> ``{"pose": (B,6), "gaze": (B,4), "blink": (B,2),
    "mouth": (B,2), "emotion": (B,8) logits}`` (+ ``"boxes"`` (B,12)), ground-truth units.

    Two parts, because the factors live at two scales:

    - a *trunk* on the whole face at half resolution (a lossless space-to-depth first, plus two
      coordinate channels since pose translation is a position) down to 4x4, flattened (keeps
      where things are) into an MLP: pose, emotion, and (with ``patches``) where the eyes and
      the mouth are (``boxes``: centre and size of each, fractions of the side);
    - with ``patches`` (default), *patch readers*: the eyes (one shared CNN, 16x16 each) and the
      mouth (12x24) are resampled at full resolution from the boxes (torchvision ``roi_align``)
      and read with the trunk's features appended (so a mouth label that excludes the
      emotion's share can still be learned). Gaze is a 1-2 px iris shift on a 64 px face: a
      whole-image CNN trained for minutes never picked it up (R² 0.0), the patch reader does.

    While training, the patches are cut at the ground-truth boxes (jittered); when reading,
    at the trunk's predicted boxes. Regressions are predicted standardised; ``target_mean`` /
    ``target_std`` map them back.

    Args:
        image_size: input side S (power of two, >= 16).
        width: trunk stem channels (stages double up to 8x).
        hidden: trunk MLP width.
        num_emotions: classes of the emotion head.
        patches: use the eye/mouth patch readers (needs boxes in the training data).
        patch_width: channels of the patch readers' stems.
    """

    EYE_PATCH = (16, 16)
    MOUTH_PATCH = (12, 24)
    EYE_WINDOW = 1.6  # window side / the eye box's longer side (room for a misplaced box)
    MOUTH_WINDOW = 1.25

    def __init__(
        self,
        image_size: int = 64,
        width: int = 16,
        hidden: int = 256,
        num_emotions: int = NUM_EMOTIONS,
        patches: bool = True,
        patch_width: int = 16,
    ) -> None:
        super().__init__()
        if image_size < 16 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
        self.config = {"image_size": int(image_size), "width": int(width), "hidden": int(hidden),
                       "num_emotions": int(num_emotions), "patches": bool(patches),
                       "patch_width": int(patch_width)}
        self.image_size, self.num_emotions, self.patches = int(image_size), int(num_emotions), bool(patches)
        self.factors = dict(FACTOR_DIMS)
        self.n_targets = sum(FACTOR_DIMS.values()) + (12 if patches else 0)
        feats, c = _pyramid(20, width, image_size // 2, 4, 8 * width)
        self.trunk = nn.Sequential(nn.PixelUnshuffle(2), feats, nn.Flatten(),
                                   nn.Linear(c * 16, hidden), nn.ReLU(inplace=True))
        # Trunk outputs: pose (6) + boxes (12) with patches, else every regression (14) and
        # the emotion logits.
        self.n_trunk = 6 + 12 if patches else sum(FACTOR_DIMS.values()) + num_emotions
        self.trunk_out = nn.Linear(hidden, self.n_trunk)
        if patches:
            pw, f = patch_width, PATCH_FEATURES
            eye_cnn, ce = _pyramid(3, pw, self.EYE_PATCH[0], 4, 2 * pw)
            mouth_cnn, cm = _pyramid(3, pw, self.MOUTH_PATCH[0], 3, 2 * pw)
            self.eye_cnn = nn.Sequential(eye_cnn, nn.Flatten())
            self.mouth_cnn = nn.Sequential(mouth_cnn, nn.Flatten())
            n_eye, n_mouth = ce * 4 * 4, cm * 3 * 6
            # The readers see the flattened patch maps directly (a narrow projection in between
            # halved the gaze R² in a 3-minute run); + 2: which eye (one shared reader).
            self.eye_head = nn.Sequential(nn.Linear(n_eye + hidden + 2, hidden // 2),
                                          nn.ReLU(inplace=True), nn.Linear(hidden // 2, 3))
            self.mouth_head = nn.Sequential(nn.Linear(n_mouth + hidden, hidden // 2),
                                            nn.ReLU(inplace=True), nn.Linear(hidden // 2, 2))
            # Emotion shows in the brows, lids and mouth corners: read it from the whole face
            # plus narrow summaries of the full-resolution patches.
            self.eye_summary = nn.Sequential(nn.Linear(n_eye, f), nn.ReLU(inplace=True))
            self.mouth_summary = nn.Sequential(nn.Linear(n_mouth, f), nn.ReLU(inplace=True))
            self.emotion_head = nn.Sequential(nn.Linear(3 * f + hidden, hidden // 2),
                                              nn.ReLU(inplace=True),
                                              nn.Linear(hidden // 2, num_emotions))
        self.register_buffer("target_mean", torch.zeros(self.n_targets))
        self.register_buffer("target_std", torch.ones(self.n_targets))
        ramp = torch.linspace(-1.0, 1.0, image_size)
        self.register_buffer(
            "coords", torch.stack([ramp.view(1, -1).expand(image_size, -1),
                                   ramp.view(-1, 1).expand(-1, image_size)]),
            persistent=False,
        )

    # target vector layout (standardised space): pose 6 | gaze 4 | blink 2 | mouth 2 | boxes 12

    def _windows(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box params (B,12) in [0,1] -> roi_align boxes in pixels: eyes (2B,5), mouth (B,5)."""
        s = self.image_size
        p = params.detach().float().reshape(-1, 3, 4)
        b = torch.arange(p.shape[0], dtype=p.dtype, device=p.device)
        # Eyes: squares around the centre; mouth: a 1:2 window; both clamped to sensible sizes
        # so a wild prediction cannot produce an empty or whole-image window.
        eside = (p[:, :2, 2:].amax(-1) * self.EYE_WINDOW).clamp(2.0 / s, 0.5)
        ec = p[:, :2, :2]
        eyes = torch.stack([
            b.repeat_interleave(2),
            ((ec[..., 0] - eside / 2) * s).reshape(-1), ((ec[..., 1] - eside / 2) * s).reshape(-1),
            ((ec[..., 0] + eside / 2) * s).reshape(-1), ((ec[..., 1] + eside / 2) * s).reshape(-1),
        ], 1)
        mw = (torch.maximum(p[:, 2, 2], 2 * p[:, 2, 3]) * self.MOUTH_WINDOW).clamp(4.0 / s, 0.9)
        mc = p[:, 2, :2]
        mouth = torch.stack([b, (mc[:, 0] - mw / 2) * s, (mc[:, 1] - mw / 4) * s,
                             (mc[:, 0] + mw / 2) * s, (mc[:, 1] + mw / 4) * s], 1)
        return eyes, mouth

    def raw(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B,3,S,S)`` -> (standardised targets ``(B, n_targets)``, emotion logits ``(B, C)``).

        ``boxes``: ``(B, 12)`` box params (ground-truth units) to cut the patches at; default
        the trunk's own prediction.
        """
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}px input, got {tuple(x.shape[-2:])}")
        h = self.trunk(torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], 1))
        out = self.trunk_out(h)
        if not self.patches:
            return out[:, :14], out[:, 14:]
        t = out
        from torchvision.ops import roi_align

        pose_z, box_z = t[:, :6], t[:, 6:18]
        if boxes is None:
            boxes = box_z * self.target_std[14:] + self.target_mean[14:]
        eyes, mouth = self._windows(boxes)
        B = x.shape[0]
        ep = roi_align(x, eyes, self.EYE_PATCH, sampling_ratio=2, aligned=True)
        mp = roi_align(x, mouth, self.MOUTH_PATCH, sampling_ratio=2, aligned=True)
        which = torch.eye(2, device=x.device, dtype=x.dtype).repeat(B, 1)
        fe, fm = self.eye_cnn(ep), self.mouth_cnn(mp)
        e = self.eye_head(torch.cat([fe, h.repeat_interleave(2, 0), which], 1)).reshape(B, 2, 3)
        gaze_z = e[..., :2].reshape(B, 4)  # (x0, y0, x1, y1)
        blink_z = e[..., 2]
        mouth_z = self.mouth_head(torch.cat([fm, h], 1))
        summary = [h, self.eye_summary(fe).reshape(B, -1), self.mouth_summary(fm)]
        logits = self.emotion_head(torch.cat(summary, 1))
        return torch.cat([pose_z, gaze_z, blink_z, mouth_z, box_z], 1), logits

    def split(self, z: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Standardised outputs -> per-factor dict in ground-truth units (emotion stays logits)."""
        reg = z * self.target_std + self.target_mean
        out, i = {}, 0
        for name, d in self.factors.items():
            out[name] = reg[:, i:i + d]
            i += d
        if self.patches:
            out["boxes"] = reg[:, i:i + 12]
        if self.num_emotions:
            out["emotion"] = logits
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.split(*self.raw(x))

    @torch.no_grad()
    def read(self, images: Any, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Read factors from frames in any common layout, in eval mode, on the model's device.

        Args:
            images: ``(N, 3, H, W)`` float in [-1, 1] or ``(N, H, W, 3)`` / ``(N, 3, H, W)``
                uint8; resized (antialiased) to the oracle's side when H, W differ.

        Returns:
            ``{factor: (N, d)}`` CPU float32, ``"emotion"`` ``(N, 8)`` logits and (patch model)
            ``"boxes"`` ``(N, 12)``.
        """
        was_training = self.training
        self.eval()
        dev = self.target_mean.device
        x = torch.as_tensor(images)
        outs: list[dict[str, torch.Tensor]] = []
        for s in range(0, x.shape[0], batch_size):
            b = _to_model_input(x[s:s + batch_size], self.image_size).to(dev)
            outs.append({k: v.float().cpu() for k, v in self(b).items()})
        self.train(was_training)
        if not outs:
            return {}
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def _to_model_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC/NCHW or float NCHW in [-1,1] -> float NCHW in [-1,1] at ``size``."""
    if x.dtype == torch.uint8:
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = x.float() / 127.5 - 1.0
    x = x.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
    return x


# ------------------------------------------------------------------------------ data


def _images_u8(images: Any) -> torch.Tensor:
    """Store training images compactly as uint8 NCHW (4x less memory than float)."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return x.permute(0, 3, 1, 2).contiguous() if x.shape[-1] == 3 and x.shape[1] != 3 else x
    x = ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x


def _check_arrays(data: Mapping[str, Any], factors: Mapping[str, int], emotions: bool) -> int:
    if "images" not in data:
        raise ValueError("oracle data needs an 'images' array")
    n = len(data["images"])
    for k, d in factors.items():
        if k not in data:
            raise ValueError(f"oracle data lacks factor {k!r}")
        if tuple(np.shape(data[k])) != (n, d):
            raise ValueError(f"factor {k!r} must be ({n}, {d}), got {tuple(np.shape(data[k]))}")
    if emotions and ("emotion" not in data or len(data["emotion"]) != n):
        raise ValueError(f"oracle data needs 'emotion' ({n},) int64")
    return n


def oracle_arrays_from_clips(
    clips: Iterable[Mapping[str, Any]], frame_stride: int = 1, crop: bool = True,
    size: int | None = None,
) -> dict[str, np.ndarray]:
    """Stack SynthTalk clips into oracle arrays.

    Args:
        clips: clips as the world yields them: ``frames`` ``(F, H, W, 3)`` uint8 plus per-frame
            ground truth ``pose (F,6)``, ``gaze (F,4)``, ``blink (F,2)``, ``mouth (F,2)``,
            ``emotion`` (int or ``(F,)``); ``gt_``-prefixed names are accepted too, and a
            ``speaker`` entry is carried along.
        frame_stride: keep every n-th frame (neighbouring frames are near duplicates).
        crop: apply the official crop (what the datamodules and the generator see); off for
            frames that are already cropped.
        size: output side (default: the frames' own side).

    Returns:
        ``{"images": (N,S,S,3) uint8, "pose": (N,6), ..., "emotion": (N,) int64,
        "speaker": (N,) int64 (when given)}``.
    """
    from pdfgc.video import official_crop, to_uint8

    cols: dict[str, list[np.ndarray]] = {}
    for clip in clips:
        frames = np.asarray(clip["frames"])[::frame_stride]
        f = len(frames)
        side = size or frames.shape[1]
        if crop:
            imgs = to_uint8(torch.stack([official_crop(fr, side) for fr in frames]))
        elif frames.shape[1] != side:
            imgs = to_uint8(_to_model_input(torch.as_tensor(frames), side))
        else:
            imgs = frames
        if imgs.shape[-1] != 3:  # to_uint8 may return NCHW
            imgs = np.transpose(imgs, (0, 2, 3, 1))
        cols.setdefault("images", []).append(np.ascontiguousarray(imgs))
        for k in (*FACTOR_DIMS, "emotion", *EXTRA_KEYS):
            v = clip.get(k, clip.get(f"gt_{k}"))
            if v is None:
                continue
            v = np.asarray(v)
            v = np.full(f, int(v), np.int64) if v.ndim == 0 else v[::frame_stride]
            cols.setdefault(k, []).append(v.astype(np.int64 if k == "emotion" else np.float32))
        if "speaker" in clip:
            cols.setdefault("speaker", []).append(np.full(f, int(clip["speaker"]), np.int64))
    return {k: np.concatenate(v) for k, v in cols.items()}


def synthtalk_oracle_data(
    num_speakers: int = 2000,
    frames_per_speaker: int = 6,
    image_size: int = 64,
    seed: int = 0,
    first_speaker: int = 100_000,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Render oracle training frames from SynthTalk with *independent* factors per frame.

    Why not the world's clip pool: a pool has few clips (400 by default), so emotion is one
    label per clip and neighbouring frames are near copies; an oracle trained on it memorises
    clips (measured: train accuracy 1.0, held-out 0.52; gaze R² 0.89 vs 0.38). Here every
    frame has its own pose, gaze, blink, mouth and emotion, drawn to cover each factor's range
    evenly (half the frames blink, partial closures included; gaze over its whole range), on
    many speakers whose ids (from ``first_speaker``) no world split uses.

    Returns:
        oracle arrays (see :func:`train_oracle`): ``images (N,S,S,3)`` uint8 after the official
        crop, ``pose, gaze, blink``, ``mouth`` = the *drawn* mouth (speech + emotion: what is
        visible), ``emotion``, ``emotion_intensity``, ``eye_boxes``/``mouth_box`` in [0, 1]
        of the cropped frame, ``speaker``. N = num_speakers * frames_per_speaker.
    """
    from pdfgc.synthtalk import identity as idm
    from pdfgc.synthtalk import motion as mo
    from pdfgc.synthtalk import render as rd
    from pdfgc.synthtalk.world import crop_boxes
    from pdfgc.video import official_crop

    rng = np.random.default_rng([seed, first_speaker, 0x0AC1E])
    n, size = frames_per_speaker, image_size
    pose_range = np.minimum(mo.POSE_BASE + 2 * mo.POSE_DRIFT, mo.POSE_LIMIT)
    cols: dict[str, list[np.ndarray]] = {}
    speakers = range(first_speaker, first_speaker + num_speakers)
    if progress:
        from tqdm import tqdm

        speakers = tqdm(speakers, desc="oracle frames", unit="speaker", leave=False)
    for spk in speakers:
        ident = idm.sample_identity(seed, spk)
        pose = (rng.uniform(-1, 1, (n, 6)) * pose_range).astype(np.float32)
        g = rng.uniform(-1, 1, (n, 2)) * mo.GAZE_LIMIT
        verg = rng.normal(0.0, 0.02, n)
        gaze = np.stack([g[:, 0] + verg, g[:, 1], g[:, 0] - verg, g[:, 1]], 1).astype(np.float32)
        closure = np.where(rng.uniform(size=n) < 0.5, 0.0, rng.uniform(0, 1, n))
        blink = np.stack([closure, closure], 1)
        wink = rng.uniform(size=n) < 0.15
        blink[wink, rng.integers(0, 2, int(wink.sum()))] = rng.uniform(0, 1, int(wink.sum()))
        speech = np.stack([rng.uniform(0, 1, n), rng.uniform(-1, 1, n)], 1).astype(np.float32)
        emotion = rng.integers(0, mo.NUM_EMOTIONS, n)
        intensity = np.where(emotion == 0, 0.0, rng.uniform(0.3, 1.0, n)).astype(np.float32)
        effects = mo.emotion_effects(emotion, intensity)
        mouth = rd.compose_mouth(speech, effects)
        frames = rd.render(ident, pose, gaze, blink.astype(np.float32), mouth, effects, size)
        cropped = torch.stack([official_crop(f, size) for f in frames])
        cols.setdefault("images", []).append(
            ((cropped.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy())
        for k, v in (("pose", pose), ("gaze", gaze), ("blink", blink), ("mouth", mouth),
                     ("emotion", emotion), ("emotion_intensity", intensity),
                     ("eye_boxes", crop_boxes(rd.eye_boxes(ident, pose, size), size) / size),
                     ("mouth_box", crop_boxes(rd.mouth_box(ident, pose, size), size) / size),
                     ("speaker", np.full(n, spk))):
            cols.setdefault(k, []).append(np.asarray(v))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    for k in ("pose", "gaze", "blink", "mouth", "emotion_intensity", "eye_boxes", "mouth_box"):
        out[k] = out[k].astype(np.float32)
    out["emotion"] = out["emotion"].astype(np.int64)
    out["speaker"] = out["speaker"].astype(np.int64)
    return out


# ------------------------------------------------------------------------------ training


def evaluate_oracle(
    oracle: FactorOracle, data: Mapping[str, Any], batch_size: int = 256
) -> dict[str, Any]:
    """Score the oracle on arrays (see :func:`train_oracle`).

    Returns:
        ``{"<factor>/r2": R² clipped to [0,1] per dim and averaged, "<factor>/r2_dims": list of
        unclipped per-dim R², "emotion/accuracy": float, "n": int}``.
    """
    n = _check_arrays(data, oracle.factors, oracle.num_emotions > 0)
    pred = oracle.read(_images_u8(data["images"]), batch_size)
    rep: dict[str, Any] = {"n": n}
    for k in oracle.factors:
        rep[f"{k}/r2"] = r2_score(pred[k], data[k])
        rep[f"{k}/r2_dims"] = [round(float(v), 4) for v in r2_per_dim(pred[k], data[k])]
    if oracle.num_emotions:
        y = torch.as_tensor(np.asarray(data["emotion"])).long().reshape(-1)
        rep["emotion/accuracy"] = float((pred["emotion"].argmax(1) == y).float().mean())
    if "boxes" in pred and "eye_boxes" in data and "mouth_box" in data:
        true = boxes_to_params(torch.as_tensor(np.asarray(data["eye_boxes"])),
                               torch.as_tensor(np.asarray(data["mouth_box"])))
        # Mean absolute error of box centres, in pixels of the oracle's input.
        err = (pred["boxes"] - true).reshape(-1, 3, 4)[..., :2].abs().mean()
        rep["boxes/centre_err_px"] = float(err) * oracle.image_size
    return rep


def train_oracle(
    data: Any,
    steps: int = 800,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    *,
    eval_data: Mapping[str, Any] | None = None,
    eval_fraction: float = 0.2,
    image_size: int | None = None,
    width: int = 16,
    hidden: int = 256,
    patch_width: int = 16,
    patches: bool | None = None,
    box_jitter: float = 0.08,
    noise_std: float = 0.02,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    log_every: int = 0,
) -> tuple[FactorOracle, dict[str, Any]]:
    """Train a :class:`FactorOracle` and report its accuracy on held-out speakers.

    Args:
        data: training arrays ``{"images": (N,S,S,3) uint8 | (N,3,S,S) uint8/float [-1,1],
            "pose": (N,6), "gaze": (N,4), "blink": (N,2), "mouth": (N,2), "emotion": (N,) int,
            "eye_boxes": (N,2,4), "mouth_box": (N,4) (fractions of the side, optional),
            "speaker": (N,) optional}``; or a SynthTalk world-like object with
            ``clips(split)`` (train split for training, test split for evaluation).
        steps, batch_size, lr, seed: optimisation (AdamW, 5 % warm-up, cosine decay to 0;
            the seed fixes initialisation, batch order, noise and jitter).
        eval_data: held-out arrays (same keys). If None and ``data`` has ``speaker``, the
            speakers are split ``eval_fraction`` held out; otherwise no evaluation.
        image_size: oracle side (default: the images' side).
        width, hidden, patch_width: network size (see :class:`FactorOracle`).
        patches: use the eye/mouth patch readers; default: when the data has boxes.
        box_jitter: training patches are cut at the true boxes moved by this fraction of the
            box size (std) and rescaled by ``exp(N(0, box_jitter))``, so the readers tolerate
            the trunk's own box errors at read time.
        noise_std: Gaussian pixel noise added while training (in [-1,1] units), so that
            small generator artefacts do not throw the readings off.
        num_threads: torch CPU threads while training (restored afterwards); None leaves the
            setting alone. On a CPU shared with another busy process 1 thread was 4x faster than 2
            for this net; on 2 idle cores 2 threads take 0.65x the time of 1.
        log_every: print progress every n steps (0: silent).

    Returns:
        ``(oracle in eval mode on CPU, report)``; report has the :func:`evaluate_oracle`
        figures under ``"eval"`` (held-out speakers) and ``"train"`` (a subset of the training
        frames), plus ``"steps"``, ``"seconds"``, ``"n_train"``, ``"train_speakers"``,
        ``"eval_speakers"``, ``"config"``.
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(data, steps, batch_size, lr, seed, eval_data=eval_data,
                      eval_fraction=eval_fraction, image_size=image_size, width=width,
                      hidden=hidden, patch_width=patch_width, patches=patches,
                      box_jitter=box_jitter, noise_std=noise_std, device=device,
                      log_every=log_every)
    finally:
        torch.set_num_threads(old_threads)


def _train(data, steps, batch_size, lr, seed, *, eval_data, eval_fraction, image_size, width,
           hidden, patch_width, patches, box_jitter, noise_std, device, log_every):
    if hasattr(data, "clips") and not isinstance(data, Mapping):
        world = data
        data = oracle_arrays_from_clips(world.clips("train"))
        if eval_data is None:
            eval_data = oracle_arrays_from_clips(world.clips("test"))
    data = dict(data)
    train_spk = eval_spk = None
    if eval_data is None and "speaker" in data and eval_fraction > 0:
        spk = np.asarray(data["speaker"])
        uniq = np.unique(spk)
        if len(uniq) >= 2:
            order = np.random.default_rng(seed).permutation(uniq)
            n_eval = min(len(uniq) - 1, max(1, round(eval_fraction * len(uniq))))
            held = np.isin(spk, order[:n_eval])
            eval_data = {k: np.asarray(v)[held] for k, v in data.items()}
            data = {k: np.asarray(v)[~held] for k, v in data.items()}
    if "speaker" in data:
        train_spk = sorted(int(s) for s in np.unique(data["speaker"]))
    if eval_data is not None and "speaker" in eval_data:
        eval_spk = sorted(int(s) for s in np.unique(eval_data["speaker"]))

    n = _check_arrays(data, FACTOR_DIMS, True)
    has_boxes = "eye_boxes" in data and "mouth_box" in data
    if patches is None:
        patches = has_boxes
    if patches and not has_boxes:
        raise ValueError("patches=True needs 'eye_boxes' (N,2,4) and 'mouth_box' (N,4) in the data")
    images = _images_u8(data["images"])
    side = image_size or images.shape[-1]
    cols = [torch.as_tensor(np.asarray(data[k]), dtype=torch.float32).reshape(n, -1)
            for k in FACTOR_DIMS]
    if patches:
        cols.append(boxes_to_params(torch.as_tensor(np.asarray(data["eye_boxes"])),
                                    torch.as_tensor(np.asarray(data["mouth_box"]))))
    targets = torch.cat(cols, 1)
    labels = torch.as_tensor(np.asarray(data["emotion"])).long().reshape(-1)
    if int(labels.min()) < 0 or int(labels.max()) >= NUM_EMOTIONS:
        raise ValueError(f"emotion labels must lie in [0, {NUM_EMOTIONS})")

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # initialisation
    oracle = FactorOracle(side, width=width, hidden=hidden, patches=patches,
                          patch_width=patch_width).to(device)
    mean, std = targets.mean(0), targets.std(0)
    # A factor constant in the training set (e.g. no blinks) keeps unit scale instead of 0.
    oracle.target_mean.copy_(mean)
    oracle.target_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    z_targets = (targets - mean) / oracle.target_std.cpu()

    # One loss term per factor (mean over its dims), so the 12 easy box numbers do not outweigh
    # the 4 gaze numbers; gaze, the subtlest signal (1-2 px), counts double.
    names = list(FACTOR_DIMS) + (["boxes"] if patches else [])
    dims = list(FACTOR_DIMS.values()) + ([12] if patches else [])
    ends = np.cumsum(dims).tolist()
    spans = list(zip([0] + ends[:-1], ends))
    weights = [LOSS_WEIGHTS.get(k, 1.0) for k in names]

    opt = torch.optim.AdamW(oracle.parameters(), lr=lr, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    oracle.train()
    t0 = time.time()
    perm, pos = torch.randperm(n, generator=gen), 0
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        x = _to_model_input(images[idx], side)
        if noise_std > 0:
            x = x + noise_std * torch.randn(x.shape, generator=gen)
        boxes = None
        if patches:
            boxes = targets[idx, 14:].reshape(-1, 3, 4).clone()
            size = boxes[..., 2:]
            boxes[..., :2] += box_jitter * size * torch.randn(size.shape, generator=gen)
            boxes[..., 2:] *= torch.exp(box_jitter * torch.randn(size.shape, generator=gen))
            boxes = boxes.reshape(-1, 12).to(device)
        z, logits = oracle.raw(x.to(device), boxes)
        se = (z - z_targets[idx].to(device)) ** 2
        loss = F.cross_entropy(logits, labels[idx].to(device))
        for (a, b), w in zip(spans, weights):
            loss = loss + w * se[:, a:b].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"oracle step {step + 1}/{steps} loss {loss.item():.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    seconds = time.time() - t0
    oracle = oracle.cpu().eval()

    rng = np.random.default_rng(seed)
    sub = rng.choice(n, min(n, 2000), replace=False)
    report: dict[str, Any] = {
        "steps": steps, "batch_size": batch_size, "seconds": round(seconds, 1), "n_train": n,
        "image_size": side, "config": dict(oracle.config),
        "train_speakers": train_spk, "eval_speakers": eval_spk,
        "train": evaluate_oracle(oracle, {k: np.asarray(v)[sub] for k, v in data.items()}),
    }
    if eval_data is not None:
        report["eval"] = evaluate_oracle(oracle, eval_data)
    return oracle, report


# ------------------------------------------------------------------------------ files


def save_oracle(oracle: FactorOracle, path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> None:
    """Write ``{"format", "version", "config", "state_dict", "extra"}`` with torch.save,
    atomically. ``extra`` (e.g. the accuracy report) must hold only plain Python values."""
    payload = {
        "format": _FORMAT, "version": _VERSION, "config": dict(oracle.config),
        "state_dict": {k: v.detach().cpu() for k, v in oracle.state_dict().items()},
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_oracle(path: str | os.PathLike) -> FactorOracle:
    """Load an oracle written by :func:`save_oracle` (CPU, eval mode).

    Raises:
        PdfgcError: the file is missing, unreadable, or not an oracle checkpoint.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise PdfgcError(f"factor oracle file not found: {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file to the user
        raise PdfgcError(f"cannot read factor oracle {p}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise PdfgcError(f"not a pdfgc factor oracle file: {p}")
    if payload.get("version") != _VERSION:
        raise PdfgcError(f"factor oracle {p} has version {payload.get('version')}, "
                         f"this pdfgc reads version {_VERSION}")
    try:
        oracle = FactorOracle(**payload["config"])
        oracle.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PdfgcError(f"factor oracle {p} does not match the FactorOracle network: "
                         f"{str(exc).splitlines()[0]}") from exc
    return oracle.eval()
