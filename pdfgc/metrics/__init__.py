"""Metrics for pdfgc: the SynthTalk disentanglement matrix, control transfer, lip-sync, reports.

- :mod:`.disentanglement`: linear probes from each motion code to each ground-truth factor,
  split by clip (``disentanglement_matrix`` -> ``DisentanglementResult``).
- :mod:`.oracle`: ``FactorOracle``, a small CNN reading pose/gaze/blink/mouth/emotion from a
  SynthTalk image (the synthetic stand-in for real pose/gaze/SyncNet/emotion estimators).
- :mod:`.control`: transfer / leak scores of generated frames, lip-sync correlation.
- :mod:`.report`: ``metrics.json``, ``metrics.md``, ``disentanglement.png``.

The real-data metrics (docs/evaluation.md) are imported from their modules: :mod:`.syncnet` /
:mod:`.lse` (LSE-D/C), :mod:`.fid`, :mod:`.face_quality` (CSIM, PSNR, SSIM), :mod:`.gaze_blink`,
:mod:`.learned_gaze` (optional ETH-XGaze), :mod:`.landmark_metrics` (head pose, M-/F-LMD).
"""

from .control import (
    ControlScore,
    LipSync,
    check_control,
    control_metrics,
    control_transfer,
    lip_sync_correlation,
    r2_score,
)
from .disentanglement import (
    DEFAULT_THRESHOLDS,
    DIAGONAL_PAIRS,
    CheckResult,
    DisentanglementMetric,
    DisentanglementResult,
    chance_corrected,
    codes_from_style,
    disentanglement_matrix,
    group_ids,
    split_by_group,
)
from .oracle import (
    FACTOR_DIMS,
    FactorOracle,
    evaluate_oracle,
    load_oracle,
    oracle_arrays_from_clips,
    save_oracle,
    synthtalk_oracle_data,
    train_oracle,
)
from .report import flatten_disentanglement, flatten_metrics, render_heatmap, write_report

__all__ = [
    "CheckResult",
    "ControlScore",
    "DEFAULT_THRESHOLDS",
    "DIAGONAL_PAIRS",
    "DisentanglementMetric",
    "DisentanglementResult",
    "FACTOR_DIMS",
    "FactorOracle",
    "LipSync",
    "chance_corrected",
    "check_control",
    "codes_from_style",
    "control_metrics",
    "control_transfer",
    "disentanglement_matrix",
    "evaluate_oracle",
    "flatten_disentanglement",
    "flatten_metrics",
    "group_ids",
    "lip_sync_correlation",
    "load_oracle",
    "oracle_arrays_from_clips",
    "r2_score",
    "render_heatmap",
    "save_oracle",
    "split_by_group",
    "synthtalk_oracle_data",
    "train_oracle",
    "write_report",
]
