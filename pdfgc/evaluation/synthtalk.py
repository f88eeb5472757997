"""The SynthTalk protocol: disentanglement matrix, control transfer and lip-sync.

On held-out speakers (never seen in training):

1. **Code-factor matrix.** Per-frame codes of E_mot (visual lip code, pose, eye, emotion
   averaged over the stage-3 window K) against the true factors (speech mouth opening, pose,
   gaze, blink, emotion class), one linear probe per pair, split by clip
   (:func:`pdfgc.metrics.disentanglement_matrix`).
2. **Control transfer.** For pairs (source clip a, driver clip b of another speaker), every
   frame t is generated from a's portrait (frame 0) and a's own codes at t, except one factor
   taken from b at t: mouth (b's audio), pose, gaze (eye dims 2-3), blink (eye dims 0, 1, 4, 5)
   or emotion. The factor oracle reads the generated frames: ``transfer`` = agreement with b's
   truth, ``leak`` = agreement with a's.
3. **Lip-sync.** Self-driven generation of each source clip; correlation of the oracle's
   mouth opening with the opening a's audio implies.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from pdfgc.evaluation.networks import motion_codes, window_mean
from pdfgc.metrics import (check_control, control_metrics, control_transfer, disentanglement_matrix,
                           lip_sync_correlation)
from pdfgc.networks.codes import BLINK_MASK, GAZE_MASK, compose_style

log = logging.getLogger(__name__)

CONTROL_FACTORS = ("mouth", "pose", "gaze", "blink", "emotion")


def to_images(u8: np.ndarray) -> torch.Tensor:
    """(…, S, S, 3) uint8 -> (…, 3, S, S) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(u8)).float().div(127.5).sub(1).movedim(-1, -3)


@torch.no_grad()
def clip_codes(nets, pool, c: int, emotion_window: int) -> dict[str, torch.Tensor]:
    """All codes of clip ``c``: motion codes per frame (emotion window-averaged) and the audio
    mouth code per frame."""
    codes = motion_codes(nets, to_images(pool.images[c]))
    codes["emotion"] = window_mean(codes["emotion"], emotion_window)
    _, codes["mouth"] = nets.audio(torch.from_numpy(pool.windows[c]))
    return codes


def pool_factors(pool, clips: list[int]) -> dict[str, np.ndarray]:
    """True factors of ``clips`` stacked over frames (what the probes predict)."""
    F = pool.num_frames
    return {
        "mouth": pool.mouth[clips][..., :1].reshape(-1, 1),  # speech opening: what the audio implies
        "pose": pool.pose[clips].reshape(-1, 6),
        "gaze": pool.gaze[clips].reshape(-1, 4),
        "blink": pool.blink[clips].reshape(-1, 2),
        "emotion": np.repeat(pool.emotion[clips], F),
    }


@torch.no_grad()
def render(nets, portrait: torch.Tensor, codes: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Frames ``(F, 3, S, S)`` from a portrait ``(3, S, S)`` and per-frame codes."""
    id_vec, id_map = nets.appearance(portrait[None])
    out = []
    for s in range(0, len(codes["pose"]), batch_size):
        sl = slice(s, s + batch_size)
        n = len(codes["pose"][sl])
        style = compose_style(id_vec.expand(n, -1), codes["mouth"][sl], codes["emotion"][sl], codes["eye"][sl],
                              codes["pose"][sl])
        out.append(nets.generator(style, id_map.expand(n, -1, -1, -1)))
    return torch.cat(out)


def drive(source: dict[str, torch.Tensor], driver: dict[str, torch.Tensor], factor: str) -> dict[str, torch.Tensor]:
    """``source``'s codes with ``factor`` taken from ``driver`` (gaze/blink by the release's eye masks)."""
    codes = dict(source)
    if factor in ("mouth", "pose", "emotion"):
        codes[factor] = driver[factor]
    elif factor == "gaze":
        codes["eye"] = source["eye"] * torch.tensor(BLINK_MASK) + driver["eye"] * torch.tensor(GAZE_MASK)
    elif factor == "blink":
        codes["eye"] = source["eye"] * torch.tensor(GAZE_MASK) + driver["eye"] * torch.tensor(BLINK_MASK)
    else:
        raise ValueError(f"unknown factor {factor!r}")
    return codes


def factor_truth(pool, c: int, factor: str) -> np.ndarray:
    """Per-frame truth of one control factor of clip ``c`` (oracle units)."""
    if factor == "emotion":
        return np.full(pool.num_frames, int(pool.emotion[c]))
    if factor == "mouth":
        return pool.mouth_drawn[c][:, :1]  # the oracle reads the mouth as drawn (speech + emotion)
    return getattr(pool, factor)[c]


def evaluate_synthtalk(nets, pool, oracle, *, emotion_window: int = 5, num_pairs: int = 12,
                       probe_seed: int = 0, progress: bool = True) -> tuple[dict[str, float], Any, dict]:
    """Run the protocol on the held-out ``pool``.

    Returns ``(metrics, disentanglement_result, details)``: flat slash-named figures, the
    :class:`~pdfgc.metrics.DisentanglementResult`, and per-factor pass/fail of control transfer.
    """
    from tqdm import tqdm

    clips = list(range(len(pool)))
    all_codes = {}
    for c in tqdm(clips, desc="codes", disable=not progress, leave=False):
        all_codes[c] = clip_codes(nets, pool, c, emotion_window)
    codes = {k: torch.cat([all_codes[c][k] for c in clips]) for k in ("lip", "pose", "eye", "emotion")}
    groups = np.repeat([pool.name(c) for c in clips], pool.num_frames)
    result = disentanglement_matrix(codes, pool_factors(pool, clips), groups, seed=probe_seed)
    metrics: dict[str, float] = {}

    # Control transfer and lip-sync on pairs of different speakers.
    num_pairs = min(num_pairs, len(clips))
    generated: dict[str, list] = {f: [] for f in CONTROL_FACTORS}
    driver_truth: dict[str, list] = {f: [] for f in CONTROL_FACTORS}
    source_truth: dict[str, list] = {f: [] for f in CONTROL_FACTORS}
    lip_corr, psnr = [], []
    for i in tqdm(range(num_pairs), desc="control", disable=not progress, leave=False):
        a, b = clips[i], clips[(i + len(clips) // 2) % len(clips)]
        portrait = to_images(pool.images[a, 0])
        self_frames = render(nets, portrait, all_codes[a])
        target = to_images(pool.images[a])
        mse = torch.mean((self_frames - target) ** 2).item()
        psnr.append(10 * math.log10(4.0 / max(mse, 1e-12)))  # images span [-1, 1]: peak-to-peak 2
        read = oracle.read(self_frames)
        lip_corr.append(lip_sync_correlation(read["mouth"][:, 0], pool.mouth[a][:, 0]).corr)
        for f in CONTROL_FACTORS:
            frames = render(nets, portrait, drive(all_codes[a], all_codes[b], f))
            reading = oracle.read(frames)
            # The mouth is scored on its opening only (what the audio implies); emotion on logits.
            generated[f].append(reading["mouth"][:, :1] if f == "mouth" else reading[f])
            driver_truth[f].append(factor_truth(pool, b, f))
            source_truth[f].append(factor_truth(pool, a, f))
    cat = lambda xs: np.concatenate([np.asarray(x) for x in xs])  # noqa: E731
    scores = control_transfer({f: cat(generated[f]) for f in CONTROL_FACTORS},
                              {f: cat(driver_truth[f]) for f in CONTROL_FACTORS},
                              {f: cat(source_truth[f]) for f in CONTROL_FACTORS})
    metrics.update(control_metrics(scores, prefix="synthtalk/control"))
    passed = check_control(scores)
    metrics["synthtalk/lip_sync_corr"] = float(np.nanmean(lip_corr))
    metrics["synthtalk/reconstruction/psnr"] = float(np.mean(psnr))
    metrics["synthtalk/num_clips"] = float(len(clips))
    metrics["synthtalk/num_pairs"] = float(num_pairs)
    return metrics, result, {"control_passed": passed}
