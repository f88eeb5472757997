"""Gaze and blink agreement between a generated clip and its driver, from landmark measurements.

Estimator (named in every report as :data:`GAZE_ESTIMATOR` / :data:`BLINK_ESTIMATOR`): dlib 68
landmarks -> ``pdfgc.faces.iris_positions`` (darkest blob inside the eye polygon, position in the
eye's own frame, eye-width units) and ``pdfgc.faces.eye_aspect_ratio`` (EAR). This is a
landmark/iris proxy, not a learned gaze estimator: gaze error is the per-frame L2 distance of the
iris positions (mean over the eyes seen open in both clips), in eye widths.

Blinks: the mean EAR of both eyes below ``threshold`` (0.2) for at least ``min_frames`` (2)
frames is one blink event; events of the two clips match when they overlap within
``tolerance`` frames; blink F1 from the matches (Soukupova & Cech thresholding).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchmetrics import Metric

__all__ = ["BLINK_ESTIMATOR", "GAZE_ESTIMATOR", "BlinkF1", "GazeError", "blink_events", "blink_matches",
           "ear_agreement", "gaze_errors"]

GAZE_ESTIMATOR = "iris-in-eye position from dlib 68 landmarks (pdfgc.faces.iris_positions), eye widths"
BLINK_ESTIMATOR = "eye aspect ratio from dlib 68 landmarks (pdfgc.faces.eye_aspect_ratio)"


def gaze_errors(iris_generated: np.ndarray, iris_reference: np.ndarray) -> np.ndarray:
    """``(T, 2, 2)`` iris positions of two clips -> ``(T,)`` per-frame gaze error (eye widths),
    mean over eyes valid in both; NaN where no eye is."""
    d = np.linalg.norm(np.asarray(iris_generated, np.float64) - np.asarray(iris_reference, np.float64), axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames: NaN is the answer
        return np.nanmean(d, axis=-1)


def blink_events(ear: np.ndarray, threshold: float = 0.2, min_frames: int = 2) -> list[tuple[int, int]]:
    """Blink events ``[(first, last)]`` frame indices (inclusive) of an EAR sequence ``(T,)`` or
    ``(T, 2)`` (eyes averaged): runs below ``threshold`` at least ``min_frames`` long. NaN frames
    (no face) end a run."""
    ear = np.asarray(ear, np.float64)
    if ear.ndim == 2:
        ear = ear.mean(axis=1)
    closed = np.nan_to_num(ear, nan=np.inf) < threshold
    events, start = [], None
    for t, c in enumerate(np.append(closed, False)):
        if c and start is None:
            start = t
        elif not c and start is not None:
            if t - start >= min_frames:
                events.append((start, t - 1))
            start = None
    return events


def blink_matches(predicted: list[tuple[int, int]], reference: list[tuple[int, int]],
                  tolerance: int = 2) -> tuple[int, int, int]:
    """``(true positives, false positives, false negatives)``: each reference event matches at
    most one predicted event that overlaps it when widened by ``tolerance`` frames."""
    used = set()
    tp = 0
    for rs, re in reference:
        for k, (ps, pe) in enumerate(predicted):
            if k not in used and ps <= re + tolerance and pe >= rs - tolerance:
                used.add(k)
                tp += 1
                break
    return tp, len(predicted) - tp, len(reference) - tp


def ear_agreement(ear_generated: np.ndarray, ear_reference: np.ndarray) -> dict[str, float]:
    """Mean absolute difference and Pearson correlation of two EAR sequences (eyes averaged)
    over frames where both are known."""
    a = np.asarray(ear_generated, np.float64)
    b = np.asarray(ear_reference, np.float64)
    a, b = (a.mean(1) if a.ndim == 2 else a), (b.mean(1) if b.ndim == 2 else b)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return {"ear_mae": float("nan"), "ear_corr": float("nan")}
    a, b = a[ok], b[ok]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
    return {"ear_mae": float(np.abs(a - b).mean()), "ear_corr": corr}


class GazeError(Metric):
    """Mean per-frame gaze error over all frames of all clips (DDP-safe sums)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, iris_generated: np.ndarray, iris_reference: np.ndarray) -> None:
        e = gaze_errors(iris_generated, iris_reference)
        e = e[np.isfinite(e)]
        self.total += float(e.sum())
        self.count += len(e)

    def compute(self) -> torch.Tensor:
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"), dtype=torch.float64)


class BlinkF1(Metric):
    """Blink-detection F1 of generated clips against their drivers' blinks (DDP-safe counts)."""

    full_state_update = False

    def __init__(self, threshold: float = 0.2, min_frames: int = 2, tolerance: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold, self.min_frames, self.tolerance = threshold, min_frames, tolerance
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ear_generated: np.ndarray, ear_reference: np.ndarray) -> None:
        tp, fp, fn = blink_matches(blink_events(ear_generated, self.threshold, self.min_frames),
                                   blink_events(ear_reference, self.threshold, self.min_frames), self.tolerance)
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def compute(self) -> torch.Tensor:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom > 0 else torch.tensor(float("nan"), dtype=torch.float64)
