"""Evaluation report: ``metrics.json``, ``metrics.md`` and ``disentanglement.png``.

``metrics.json`` is one flat JSON object: slash-named figures (``"synthtalk/lip_sync_corr"``,
``"synthtalk/probe/pose/pose"``, ...) mapping to numbers (``null`` for NaN), plus the key
``"disentanglement"`` holding ``{"codes": [...], "factors": [...], "matrix": [[...]]}``.
Nested ``metrics`` dicts are flattened by joining keys with ``/``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from pdfgc.io import atomic_path, atomic_write_text

from .disentanglement import DEFAULT_THRESHOLDS, DisentanglementResult

__all__ = ["flatten_disentanglement", "flatten_metrics", "render_heatmap", "write_report"]


def _num(v: Any) -> Any:
    """JSON-safe number: NaN/inf -> None, numpy/torch scalars -> Python."""
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return None if isinstance(v, float) and not math.isfinite(v) else v
    raise TypeError(f"metric value of type {type(v).__name__} is not a number")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; values become JSON-safe numbers."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_metrics(v, key))
        else:
            out[key] = _num(v)
    return out


def flatten_disentanglement(
    result: DisentanglementResult, prefix: str = "synthtalk/probe"
) -> dict[str, float | None]:
    """Matrix entries as ``<prefix>/<code>/<factor>``, raw accuracies as
    ``<prefix>/accuracy/<code>/<factor>``, and ``<prefix>/max_off_diagonal``."""
    out: dict[str, float | None] = {}
    for i, c in enumerate(result.codes):
        for j, f in enumerate(result.factors):
            out[f"{prefix}/{c}/{f}"] = _num(result.matrix[i][j])
    for f, per_code in result.emotion_accuracy.items():
        for c, acc in per_code.items():
            out[f"{prefix}/accuracy/{c}/{f}"] = _num(acc)
    out[f"{prefix}/max_off_diagonal"] = _num(result.max_off_diagonal()[1])
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _markdown(
    flat: Mapping[str, Any], result: DisentanglementResult | None,
    thresholds: Mapping[str, float],
) -> str:
    lines = ["# Evaluation report", ""]
    if result is not None:
        checks = {r.name: r for r in result.check(thresholds)}
        lines += [
            "## Disentanglement (linear probes, held-out clips)",
            "",
            "Rows: codes; columns: ground-truth factors. Continuous factors: R² (clipped to "
            "[0,1], averaged over dims). Emotion: chance-corrected accuracy "
            f"max(0,(acc-1/{result.num_classes})/(1-1/{result.num_classes})), raw accuracy in "
            "brackets. Marks: ✅ target met, ❌ missed (diagonal: lower bound; elsewhere: "
            f"≤ {thresholds.get('off_diagonal', float('nan'))}).",
            "",
            "| code \\ factor | " + " | ".join(result.factors) + " |",
            "|---|" + "---:|" * len(result.factors),
        ]
        diag = set(result.diagonal_pairs())
        for i, c in enumerate(result.codes):
            cells = []
            for j, f in enumerate(result.factors):
                v = result.matrix[i][j]
                cell = _fmt(float(v))
                if f in result.emotion_accuracy:
                    cell += f" ({_fmt(result.emotion_accuracy[f][c])})"
                key = f"{c}/{f}" if (c, f) in diag else f"off_diagonal:{c}/{f}"
                if key in checks:
                    cell += " ✅" if checks[key].passed else " ❌"
                if (c, f) in diag:
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        name, worst = result.max_off_diagonal()
        n_pass = sum(r.passed for r in checks.values())
        lines += [
            "",
            f"Targets met: {n_pass}/{len(checks)}. Largest off-diagonal: {name} = {_fmt(worst)}. "
            f"Probe data: {result.n_train} train / {result.n_test} test frames, "
            f"{len(result.train_groups)} / {len(result.test_groups)} clips.",
            "",
        ]
        failed = [str(r) for r in checks.values() if not r.passed]
        if failed:
            lines += ["Missed:", ""] + [f"- {s}" for s in failed] + [""]
    lines += ["## Figures", "", "| metric | value |", "|---|---:|"]
    lines += [f"| `{k}` | {_fmt(v)} |" for k, v in flat.items()]
    return "\n".join(lines) + "\n"


def render_heatmap(result: DisentanglementResult, path: str | os.PathLike) -> None:
    """Write the matrix as a PNG heat-map with the values in the cells (Agg, atomic)."""
    # Figure + Agg canvas directly, not pyplot: no global backend switch, no figure registry,
    # safe inside a training process that may use another backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    import numpy as np

    m = np.array(result.matrix, dtype=float)
    nr, nc = m.shape
    fig = Figure(figsize=(1.3 + 1.1 * nc, 1.0 + 0.7 * nr), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(nc), labels=result.factors)
    ax.set_yticks(range(nr), labels=result.codes)
    ax.set_xlabel("factor")
    ax.set_ylabel("code")
    diag = set(result.diagonal_pairs())
    for i in range(nr):
        for j in range(nc):
            v = m[i, j]
            text = "n/a" if math.isnan(v) else f"{v:.2f}"
            bold = (result.codes[i], result.factors[j]) in diag
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    fontweight="bold" if bold else "normal",
                    color="black" if (not math.isnan(v) and v > 0.6) else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("linear-probe score (R² / chance-corr. acc.)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping[str, Any],
    disentanglement: DisentanglementResult | None = None,
    *,
    thresholds: Mapping[str, float] | None = None,
    probe_prefix: str = "synthtalk/probe",
) -> dict[str, Any]:
    """Write ``metrics.json``, ``metrics.md`` and (with a matrix) ``disentanglement.png``.

    Args:
        out_dir: folder (created).
        metrics: figures, flat slash-named or nested dicts (flattened with ``/``).
        disentanglement: the probe result; its entries are added as
            ``<probe_prefix>/<code>/<factor>`` and the matrix under ``"disentanglement"``.
        thresholds: targets for the pass/fail marks (default ``DEFAULT_THRESHOLDS``).

    Returns:
        The JSON object written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    th = dict(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    flat = flatten_metrics(metrics)
    if disentanglement is not None:
        flat.update(flatten_disentanglement(disentanglement, probe_prefix))
    payload: dict[str, Any] = dict(flat)
    if disentanglement is not None:
        d = disentanglement.to_dict()
        payload["disentanglement"] = {k: d[k] for k in ("codes", "factors", "matrix")}
    # allow_nan=False: the file must be strict JSON (NaN was mapped to null above).
    atomic_write_text(out / "metrics.json", json.dumps(payload, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "metrics.md", _markdown(flat, disentanglement, th))
    if disentanglement is not None:
        render_heatmap(disentanglement, out / "disentanglement.png")
    return payload
