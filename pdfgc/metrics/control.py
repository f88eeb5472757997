"""Control transfer and lip-sync, measured with oracle readings of generated frames.

A control test renders frames from a *source* portrait driven by a *driver* for one factor
(pose, gaze, blink, mouth or emotion), reads the factor back from the generated frames with the
:class:`pdfgc.metrics.oracle.FactorOracle`, and compares the reading with both ground truths:

- ``transfer[f] = R²(oracle(generated)_f, driver_f)``: how well the output follows the driver
  (1 = perfectly, 0 = no better than the driver's mean);
- ``leak[f] = R²(oracle(generated)_f, source_f)``, computed only on pairs whose source and driver
  differ for that factor (where they agree the two cannot be told apart): how much of the
  source's own value survives (0 = none).

Emotion uses accuracy instead of R² (plus the chance-corrected score of
:mod:`pdfgc.metrics.disentanglement`).

"Within the same margins": a factor's control passes when its transfer reaches the lower bound
the disentanglement matrix uses for the same factor's diagonal entry (mouth 0.8, pose 0.9,
gaze 0.8, blink 0.8, emotion accuracy 0.8) and its leak stays at or below the off-diagonal bound
(0.2). The same numbers thus judge "the code carries the factor" and "the generator obeys it".

R² here is per output dimension, clipped to [0, 1], averaged over dimensions that vary, exactly
as in the matrix, so the two tables read on one scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from .disentanglement import (
    CATEGORICAL_FACTORS,
    _as_2d,
    _as_tensor,
    _mean_clipped_r2,
    chance_corrected,
    r2_per_dim,
)

__all__ = [
    "TRANSFER_THRESHOLDS",
    "LEAK_THRESHOLD",
    "ControlScore",
    "LipSync",
    "check_control",
    "control_metrics",
    "control_transfer",
    "lip_sync_correlation",
    "r2_score",
]

# Same bounds as the matrix diagonal (DEFAULT_THRESHOLDS), keyed by factor.
TRANSFER_THRESHOLDS: dict[str, float] = {
    "mouth": 0.8, "pose": 0.9, "gaze": 0.8, "blink": 0.8, "emotion": 0.8,
}
LEAK_THRESHOLD = 0.2


def r2_score(pred: Any, target: Any) -> float:
    """Mean over dimensions of R² clipped to [0, 1]; ``pred``/``target`` ``(N, D)`` or ``(N,)``.
    NaN when every target dimension is constant."""
    return _mean_clipped_r2(r2_per_dim(pred, target))


@dataclass
class ControlScore:
    """Per-factor control result.

    transfer: R² (or accuracy for emotion) of the reading vs the driver, all pairs.
    leak: R² (or accuracy) vs the source on pairs where source and driver differ (NaN if none).
    transfer_chance_corrected / leak_chance_corrected: emotion only (NaN otherwise).
    ceiling: the same transfer score for the oracle on the *real* driver frames, if given: the
        best a perfect generator can reach with this oracle.
    n: pairs used for transfer; n_leak: pairs used for leak.
    """

    transfer: float
    leak: float
    n: int
    n_leak: int
    transfer_chance_corrected: float = math.nan
    leak_chance_corrected: float = math.nan
    ceiling: float = math.nan


def _differs(a: torch.Tensor, b: torch.Tensor, tol: float) -> torch.Tensor:
    if not a.is_floating_point():
        return (a.reshape(a.shape[0], -1) != b.reshape(b.shape[0], -1)).any(1)
    return ((_as_2d(a.double()) - _as_2d(b.double())).abs() > tol).any(1)


def control_transfer(
    generated: Mapping[str, Any],
    driver: Mapping[str, Any],
    source: Mapping[str, Any] | None = None,
    *,
    driver_readings: Mapping[str, Any] | None = None,
    num_classes: int = 8,
    categorical: tuple[str, ...] = CATEGORICAL_FACTORS,
    tol: float = 1e-6,
) -> dict[str, ControlScore]:
    """Score how generated frames follow the driver per factor.

    Args:
        generated: oracle readings of N generated frames, ``{factor: (N, D)}``; for a categorical
            factor either ``(N,)`` int classes or ``(N, C)`` logits (argmax is taken).
        driver: driver ground truth ``{factor: (N, D) | (N,)}`` (same N).
        source: source (portrait) ground truth, same shapes; enables ``leak``.
        driver_readings: oracle readings of the real driver frames (same layout as
            ``generated``); enables ``ceiling``.
        tol: absolute difference below which source and driver count as equal for a pair.

    Returns:
        ``{factor: ControlScore}`` for every factor present in both ``generated`` and ``driver``.
    """

    def cls(x: Any) -> torch.Tensor:
        t = _as_tensor(x)
        return t.argmax(-1) if t.ndim == 2 and t.shape[1] > 1 else t.reshape(-1).long()

    out: dict[str, ControlScore] = {}
    for f in generated:
        if f not in driver:
            continue
        is_cat = f in categorical
        gen, drv = _as_tensor(generated[f]), _as_tensor(driver[f])
        src = _as_tensor(source[f]) if source is not None and f in source else None
        if is_cat:
            gen, drv = cls(gen), drv.reshape(-1).long()
            score = lambda p, t: float((p == t).double().mean()) if len(t) else math.nan  # noqa: E731
        else:
            gen, drv = _as_2d(gen.double()), _as_2d(drv.double())
            score = lambda p, t: r2_score(p, t) if len(t) >= 2 else math.nan  # noqa: E731
        if gen.shape[0] != drv.shape[0]:
            raise ValueError(f"{f}: generated has {gen.shape[0]} rows, driver {drv.shape[0]}")
        transfer = score(gen, drv)
        leak, n_leak = math.nan, 0
        if src is not None:
            src = src.reshape(-1).long() if is_cat else _as_2d(src.double())
            mask = _differs(src, drv, tol)
            n_leak = int(mask.sum())
            if n_leak:
                leak = score(gen[mask], src[mask])
        ceiling = math.nan
        if driver_readings is not None and f in driver_readings:
            ref = _as_tensor(driver_readings[f])
            ref = cls(ref) if is_cat else _as_2d(ref.double())
            ceiling = score(ref, drv)
        cc = (lambda a: chance_corrected(a, num_classes) if not math.isnan(a) else math.nan)
        out[f] = ControlScore(
            transfer=transfer, leak=leak, n=int(drv.shape[0]), n_leak=n_leak,
            transfer_chance_corrected=cc(transfer) if is_cat else math.nan,
            leak_chance_corrected=cc(leak) if is_cat else math.nan,
            ceiling=ceiling,
        )
    return out


def control_metrics(
    scores: Mapping[str, ControlScore], prefix: str = "synthtalk/control"
) -> dict[str, float]:
    """Flat figures for a report: ``<prefix>/<factor>/transfer``, ``.../leak`` (chance-corrected
    ``.../transfer_cc``, ``.../leak_cc`` for emotion, ``.../ceiling`` when measured)."""
    out: dict[str, float] = {}
    for f, s in scores.items():
        out[f"{prefix}/{f}/transfer"] = s.transfer
        out[f"{prefix}/{f}/leak"] = s.leak
        if not math.isnan(s.transfer_chance_corrected):
            out[f"{prefix}/{f}/transfer_cc"] = s.transfer_chance_corrected
            out[f"{prefix}/{f}/leak_cc"] = s.leak_chance_corrected
        if not math.isnan(s.ceiling):
            out[f"{prefix}/{f}/ceiling"] = s.ceiling
    return out


def check_control(
    scores: Mapping[str, ControlScore],
    transfer_thresholds: Mapping[str, float] | None = None,
    leak_threshold: float = LEAK_THRESHOLD,
) -> dict[str, bool]:
    """The "within the same margins" rule: ``{factor: transfer >= T_f and leak <= leak_threshold}``.

    A NaN leak (no pair with differing source/driver) does not fail the factor; a NaN transfer
    does. For emotion the leak is judged on its chance-corrected value: raw accuracy against the
    source is about 1/C even when nothing leaks.
    """
    th = dict(TRANSFER_THRESHOLDS if transfer_thresholds is None else transfer_thresholds)
    res = {}
    for f, s in scores.items():
        if f not in th:
            continue
        leak = s.leak_chance_corrected if not math.isnan(s.leak_chance_corrected) else s.leak
        ok_t = not math.isnan(s.transfer) and s.transfer >= th[f]
        ok_l = math.isnan(leak) or leak <= leak_threshold
        res[f] = bool(ok_t and ok_l)
    return res


@dataclass
class LipSync:
    """corr: Pearson correlation at lag 0. best_lag / best_corr: the lag in frames within
    ``±max_lag`` with the highest correlation; positive lag = the generated mouth trails the
    audio (``generated[t + lag]`` matches ``audio[t]``)."""

    corr: float
    best_lag: int
    best_corr: float


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-12 else math.nan


def lip_sync_correlation(
    generated_opening: Any, audio_opening: Any, max_lag: int = 3
) -> LipSync:
    """Pearson correlation between the generated mouth opening and the opening the audio implies.

    Args:
        generated_opening: ``(T,)`` oracle mouth opening of the generated frames.
        audio_opening: ``(T,)`` mouth opening implied by the audio (SynthTalk's ground truth for
            the driving speech).
        max_lag: lags searched, in frames (±3 = ±120 ms at 25 fps).

    Returns:
        :class:`LipSync`. Each lag is scored on the overlapping part only, so short clips and
        large lags use fewer frames; NaN where a side is constant.
    """
    g = _as_tensor(generated_opening, torch.float64).reshape(-1).numpy()
    a = _as_tensor(audio_opening, torch.float64).reshape(-1).numpy()
    if g.shape != a.shape:
        raise ValueError(f"generated {g.shape} and audio {a.shape} lengths differ")
    t = len(g)
    corrs = {}
    for lag in range(-max_lag, max_lag + 1):
        if t - abs(lag) < 3:
            continue
        corrs[lag] = _pearson(g[lag:], a[: t - lag]) if lag >= 0 else _pearson(g[:lag], a[-lag:])
    zero = corrs.get(0, math.nan)
    valid = {k: v for k, v in corrs.items() if not math.isnan(v)}
    if not valid:
        return LipSync(zero, 0, math.nan)
    # Ties go to the smallest |lag| so that a constant-shift-free signal reports 0.
    best = max(valid, key=lambda k: (valid[k], -abs(k)))
    return LipSync(zero, int(best), valid[best])
