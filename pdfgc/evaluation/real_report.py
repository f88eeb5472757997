"""Aggregate the real-data records into figures; write the CSV, the Markdown table and the plots.

Figures are named ``real/<protocol>/<role>/<metric>`` (``real/self/ours/psnr``,
``real/cross/pose/static/pose_error``), means over records of the per-clip values (LSE: the
mean over videos, as syncnet_python's scripts), except ``blink_f1`` (from the summed event
counts) and ``fid`` (ours vs the ground-truth frames of all self-driven clips).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pdfgc.io import atomic_path, atomic_write_text

ROLES = ("ours", "gt", "static")
ROLE_TITLES = {"ours": "ours", "gt": "ground truth", "static": "still portrait"}
#: the figure each cross-driven factor is judged by, and whether lower is better
HEADLINE = {"pose": ("pose_error", True), "gaze": ("gaze_error", True), "blink": ("blink_f1", False),
            "lip": ("lse_c", False), "emotion": ("emotion_similarity", False)}
COUNTS = ("blink_tp", "blink_fp", "blink_fn")


def aggregate(records: list[dict], features: dict[str, list[np.ndarray]]) -> dict[str, float]:
    """Flat figures (see module doc) plus ``real/<protocol>/count``."""
    from pdfgc.metrics.fid import fid_from_features

    values: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, float] = defaultdict(float)
    per_protocol: dict[str, int] = defaultdict(int)
    for r in records:
        per_protocol[r["protocol"]] += 1
        for role in ROLES:
            for k, v in (r.get(role) or {}).items():
                key = f"real/{r['protocol']}/{role}/{k}"
                if k in COUNTS:
                    counts[key] += float(v)
                elif v is not None and math.isfinite(float(v)):
                    values[key].append(float(v))
                else:
                    values.setdefault(key, [])
    out: dict[str, float] = {k: (float(np.mean(v)) if v else float("nan")) for k, v in sorted(values.items())}
    for prefix in {k.rsplit("/", 1)[0] for k in counts}:
        tp, fp, fn = (counts[f"{prefix}/{c}"] for c in COUNTS)
        out[f"{prefix}/blink_f1"] = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else float("nan")
        out[f"{prefix}/blinks"] = tp + fn  # reference blinks seen
    if features.get("ours"):
        out["real/self/ours/fid"] = fid_from_features(np.concatenate(features["gt"]), np.concatenate(features["ours"]))
    for protocol, n in per_protocol.items():
        out[f"real/{protocol}/count"] = float(n)
    return out


def write_csv(path: Path, records: list[dict]) -> None:
    """One row per record and role: protocol, name, source, driver, role, then every metric."""
    metrics = sorted({k for r in records for role in ROLES for k in (r.get(role) or {})})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["protocol", "name", "source", "driver", "role", *metrics])
    for r in records:
        for role in ROLES:
            figures = r.get(role) or {}
            if figures:
                w.writerow([r["protocol"], r["name"], r.get("source"), r.get("driver"), role,
                            *[_cell(figures.get(m)) for m in metrics]])
    atomic_write_text(path, buf.getvalue())


FRAME_METRICS = ("gaze_error", "gaze_angle_error", "pose_error", "ear", "ear_reference", "blink", "blink_reference")


def write_frames_csv(path: Path, frames: list[tuple]) -> None:
    """One row per frame of every per-frame series ``(protocol, name, role, {metric: (T,)})``:
    protocol, name, role, frame, then the metrics (empty where unknown: no face)."""
    metrics = [m for m in FRAME_METRICS if any(m in series for *_, series in frames)]
    metrics += sorted({m for *_, series in frames for m in series} - set(metrics))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["protocol", "name", "role", "frame", *metrics])
    for protocol, name, role, series in frames:
        length = max((len(v) for v in series.values()), default=0)
        for t in range(length):
            cells = []
            for m in metrics:
                v = series.get(m)
                cells.append(_cell(v[t]) if v is not None and t < len(v) and math.isfinite(float(v[t])) else "")
            w.writerow([protocol, name, role, t, *cells])
    atomic_write_text(path, buf.getvalue())


def _cell(v: Any) -> str:
    if v is None:
        return ""
    return f"{float(v):.6g}"


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def markdown(figures: dict[str, float], estimators: dict[str, str]) -> str:
    """The real-data section: one table per protocol (metrics x roles) and the estimators."""
    lines = ["## Real-data protocols", ""]
    protocols = sorted({k.split("/")[1] if not k.startswith("real/cross/") else "/".join(k.split("/")[1:3])
                        for k in figures if k.startswith("real/") and k.count("/") >= 3})
    for protocol in protocols:
        prefix = f"real/{protocol}/"
        metrics = sorted({k[len(prefix):].split("/", 1)[1] for k in figures
                          if k.startswith(prefix) and k[len(prefix):].split("/", 1)[0] in ROLES})
        n = figures.get(f"{prefix}count")
        lines += [f"### {protocol} ({_fmt(n)} records)", "",
                  "| metric | " + " | ".join(ROLE_TITLES[r] for r in ROLES) + " |", "|---|" + "---:|" * len(ROLES)]
        for m in metrics:
            lines.append(f"| {m} | " + " | ".join(_fmt(figures.get(f"{prefix}{r}/{m}")) for r in ROLES) + " |")
        lines.append("")
    lines += ["Estimators:", ""] + [f"- **{k}**: {v}" for k, v in estimators.items()] + [""]
    return "\n".join(lines)


def plot_factors(path: Path, figures: dict[str, float]) -> None:
    """Per-factor bars of the cross-driven headline figure: ours vs the still portrait (and the
    ground truth where it has one)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.0 * len(HEADLINE), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for i, (factor, (metric, lower)) in enumerate(HEADLINE.items()):
        ax = fig.add_subplot(1, len(HEADLINE), i + 1)
        vals = [figures.get(f"real/cross/{factor}/{r}/{metric}", float("nan")) for r in ROLES]
        ax.bar([ROLE_TITLES[r] for r in ROLES], [0 if not math.isfinite(v) else v for v in vals],
               color=["tab:blue", "tab:green", "tab:gray"])
        for j, v in enumerate(vals):
            ax.text(j, 0, _fmt(v), ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{factor}: {metric} ({'lower' if lower else 'higher'} better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


SELF_PLOTTED = ("psnr", "ssim", "csim", "lse_c", "pose_error", "gaze_error")


def plot_distributions(path: Path, records: list[dict], metrics: tuple[str, ...] = SELF_PLOTTED) -> None:
    """Per-clip distributions (box plots) of the self-driven figures, ours vs ground truth."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * len(metrics), 3.0), dpi=100)
    FigureCanvasAgg(fig)
    selfs = [r for r in records if r["protocol"] == "self"]
    for i, m in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        data, labels = [], []
        for role in ("ours", "gt"):
            v = [float(r[role][m]) for r in selfs if r.get(role, {}).get(m) is not None]
            v = [x for x in v if math.isfinite(x)]
            if v:
                data.append(v)
                labels.append(ROLE_TITLES[role])
        if data:
            ax.boxplot(data, tick_labels=labels)
        ax.set_title(m, fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")


def write_real_report(out_dir: Path, records: list[dict], figures: dict[str, float],
                      estimators: dict[str, str], frames: list[tuple] | None = None) -> None:
    """``real_clips.csv``, ``real_frames.csv`` (per-frame gaze / pose / EAR / blink series),
    ``real_metrics.md``, ``real_factors.png``, ``real_distributions.png``."""
    out_dir = Path(out_dir)
    write_csv(out_dir / "real_clips.csv", records)
    write_frames_csv(out_dir / "real_frames.csv", frames or [])
    atomic_write_text(out_dir / "real_metrics.md", "# Evaluation on real data\n\n" + markdown(figures, estimators))
    plot_factors(out_dir / "real_factors.png", figures)
    plot_distributions(out_dir / "real_distributions.png", records)
