"""Factor oracle: a small CNN that reads SynthTalk's ground-truth factors back from an image.

On real data, control and lip-sync are measured with pretrained estimators (head pose, gaze,
SyncNet, emotion classifiers). SynthTalk has exact ground truth for every frame, so we train one
small network, :class:`FactorOracle`, to read ``pose (6)``, ``gaze (4)``, ``blink (2)``,
``mouth (2)`` and ``emotion`` (8 logits) from a frame; generated frames are then scored by
comparing the oracle's reading with the driver's ground truth (:mod:`pdfgc.metrics.control`).

The oracle is trained on the *train* speakers and evaluated on held-out speakers, so its
accuracy report says how well it generalises to faces it has not seen, which is what generated
frames are. Its input is what the generator produces: ``(3, S, S)`` float in [-1, 1], S = 64 by
default (any power-of-two side >= 8; other sizes are resized by :meth:`FactorOracle.read`).
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
    "evaluate_oracle",
    "load_oracle",
    "oracle_arrays_from_clips",
    "save_oracle",
    "train_oracle",
]

# Regression outputs in this order; emotion (classification) comes after them.
FACTOR_DIMS: dict[str, int] = {"pose": 6, "gaze": 4, "blink": 2, "mouth": 2}
NUM_EMOTIONS = 8
_FORMAT = "pdfgc-factor-oracle"
_VERSION = 1


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class FactorOracle(nn.Module):
    """CNN ``(B, 3, S, S)`` in [-1, 1] -> ``{"pose": (B,6), "gaze": (B,4), "blink": (B,2),
    "mouth": (B,2), "emotion": (B,8) logits}``, regressions in ground-truth units.

    Layout: two coordinate channels are appended to the image (CoordConv: pose translation and
    gaze are positions, and plain convolutions are translation invariant), a full-resolution
    stem, then stride-2 stages down to 4x4, a flatten (keeps *where* things are, unlike global
    pooling) and an MLP. Regression heads predict standardised targets; the ``target_mean`` /
    ``target_std`` buffers map them back to ground-truth units.

    Args:
        image_size: input side S (power of two, >= 8).
        width: channels of the stem; stage k has ``min(width * 2**k, 8 * width)``.
        hidden: MLP width.
        factors: regression factors and their dims (default :data:`FACTOR_DIMS`).
        num_emotions: classes of the emotion head (0 disables it).
    """

    def __init__(
        self,
        image_size: int = 64,
        width: int = 16,
        hidden: int = 256,
        factors: Mapping[str, int] | None = None,
        num_emotions: int = NUM_EMOTIONS,
    ) -> None:
        super().__init__()
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
        self.factors = dict(FACTOR_DIMS if factors is None else factors)
        self.config = {"image_size": int(image_size), "width": int(width), "hidden": int(hidden),
                       "factors": dict(self.factors), "num_emotions": int(num_emotions)}
        self.image_size, self.num_emotions = int(image_size), int(num_emotions)
        layers: list[nn.Module] = [_block(5, width, 1)]
        c, side = width, image_size
        while side > 4:
            cout = min(c * 2, 8 * width)
            layers += [_block(c, cout, 2), _block(cout, cout, 1)]
            c, side = cout, side // 2
        self.features = nn.Sequential(*layers)
        n_reg = sum(self.factors.values())
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c * 16, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, n_reg + num_emotions),
        )
        self.register_buffer("target_mean", torch.zeros(n_reg))
        self.register_buffer("target_std", torch.ones(n_reg))
        ramp = torch.linspace(-1.0, 1.0, image_size)
        self.register_buffer(
            "coords", torch.stack([ramp.view(1, -1).expand(image_size, -1),
                                   ramp.view(-1, 1).expand(-1, image_size)]),
            persistent=False,
        )

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` -> ``(B, n_reg + num_emotions)``: standardised regressions, logits."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}px input, got {tuple(x.shape[-2:])}")
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], 1)
        return self.head(self.features(x))

    def split(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs -> per-factor dict in ground-truth units (emotion stays logits)."""
        n_reg = self.target_mean.numel()
        reg = raw[:, :n_reg] * self.target_std + self.target_mean
        out, i = {}, 0
        for name, d in self.factors.items():
            out[name] = reg[:, i:i + d]
            i += d
        if self.num_emotions:
            out["emotion"] = raw[:, n_reg:]
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.split(self.raw(x))

    @torch.no_grad()
    def read(self, images: Any, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Read factors from frames in any common layout, in eval mode, on the model's device.

        Args:
            images: ``(N, 3, H, W)`` float in [-1, 1] or ``(N, H, W, 3)`` / ``(N, 3, H, W)``
                uint8; resized (antialiased) to the oracle's side when H, W differ.

        Returns:
            ``{factor: (N, d)}`` CPU float32 and ``"emotion"`` ``(N, 8)`` logits.
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
        for k in (*FACTOR_DIMS, "emotion", "emotion_intensity"):
            v = clip.get(k, clip.get(f"gt_{k}"))
            if v is None:
                continue
            v = np.asarray(v)
            v = np.full(f, int(v), np.int64) if v.ndim == 0 else v[::frame_stride]
            cols.setdefault(k, []).append(v.astype(np.int64 if k == "emotion" else np.float32))
        if "speaker" in clip:
            cols.setdefault("speaker", []).append(np.full(f, int(clip["speaker"]), np.int64))
    return {k: np.concatenate(v) for k, v in cols.items()}


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
    return rep


def train_oracle(
    data: Any,
    steps: int = 1500,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    *,
    eval_data: Mapping[str, Any] | None = None,
    eval_fraction: float = 0.2,
    image_size: int | None = None,
    width: int = 16,
    hidden: int = 256,
    noise_std: float = 0.02,
    device: str | torch.device = "cpu",
    num_threads: int | None = None,
    log_every: int = 0,
) -> tuple[FactorOracle, dict[str, Any]]:
    """Train a :class:`FactorOracle` and report its accuracy on held-out speakers.

    Args:
        data: training arrays ``{"images": (N,S,S,3) uint8 | (N,3,S,S) uint8/float [-1,1],
            "pose": (N,6), "gaze": (N,4), "blink": (N,2), "mouth": (N,2), "emotion": (N,) int,
            "speaker": (N,) optional}``; or a SynthTalk world/datamodule-like object with
            ``clips(split)`` (train split for training, test split for evaluation).
        steps, batch_size, lr, seed: optimisation (AdamW, 5 % warm-up, cosine decay to 0;
            the seed fixes initialisation and batch order).
        eval_data: held-out arrays (same keys). If None and ``data`` has ``speaker``, the
            speakers are split ``eval_fraction`` held out; otherwise no evaluation.
        image_size: oracle side (default: the images' side).
        noise_std: Gaussian pixel noise added while training (in [-1,1] units), so that
            small generator artefacts do not throw the readings off.
        num_threads: torch CPU threads while training (restored afterwards); None leaves the
            setting alone. On a busy shared CPU 1 thread was 4x faster than 2 for this net.
        log_every: print progress every n steps (0: silent).

    Returns:
        ``(oracle in eval mode on CPU, report)``; report has the :func:`evaluate_oracle`
        figures under ``"eval"`` (held-out speakers) and ``"train"`` (a subset of the training
        frames), plus ``"steps"``, ``"seconds"``, ``"n_train"``, ``"train_speakers"``,
        ``"eval_speakers"``.
    """
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(data, steps, batch_size, lr, seed, eval_data, eval_fraction, image_size,
                      width, hidden, noise_std, device, log_every)
    finally:
        torch.set_num_threads(old_threads)


def _train(data, steps, batch_size, lr, seed, eval_data, eval_fraction, image_size, width,
           hidden, noise_std, device, log_every) -> tuple[FactorOracle, dict[str, Any]]:
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
    images = _images_u8(data["images"])
    side = image_size or images.shape[-1]
    targets = torch.cat([torch.as_tensor(np.asarray(data[k]), dtype=torch.float32).reshape(n, -1)
                         for k in FACTOR_DIMS], 1)
    labels = torch.as_tensor(np.asarray(data["emotion"])).long().reshape(-1)
    if int(labels.min()) < 0 or int(labels.max()) >= NUM_EMOTIONS:
        raise ValueError(f"emotion labels must lie in [0, {NUM_EMOTIONS})")

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # initialisation
    oracle = FactorOracle(side, width=width, hidden=hidden).to(device)
    mean, std = targets.mean(0), targets.std(0)
    # A factor constant in the training set (e.g. no blinks) keeps unit scale instead of 0.
    oracle.target_mean.copy_(mean)
    oracle.target_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    z_targets = (targets - mean) / oracle.target_std.cpu()
    n_reg = targets.shape[1]

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
        x = x.to(device)
        raw = oracle.raw(x)
        loss = F.mse_loss(raw[:, :n_reg], z_targets[idx].to(device))
        loss = loss + F.cross_entropy(raw[:, n_reg:], labels[idx].to(device))
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
        "image_size": side, "train_speakers": train_spk, "eval_speakers": eval_spk,
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
