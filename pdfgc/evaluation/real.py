"""The real-data protocols over a processed test set, resumable clip by clip.

* **self-driven reconstruction** (``self``): each test clip regenerated from its first frame, its
  own audio and itself as pose / expression / eye driver (all controls on); compared frame by
  frame with the clip (PSNR, SSIM, landmark, pose, gaze, blink), plus LSE, CSIM and FID.
* **cross-driven control** (``cross/<factor>``): source clip A, driver clip B of another speaker;
  one factor driven alone from B (``pose``: headpose; ``gaze``; ``blink``; ``lip``: mouth from B's
  audio; ``emotion``: expression), every other code zero. Scored against B for that factor
  (pose error, gaze error, blink F1 / EAR, LSE, emotion-code similarity) and for A's identity.

Roles in every record: ``ours`` (the generated clip), ``gt`` (the real clip scored by the same
pipeline: the self clip itself, the driver B for ``lip``) and ``static`` (A's portrait as a still
clip: the error with no control, the floor every control must beat).

Each record is one JSON file (+ an ``.npz`` of FID features and per-frame series) under
``cache_dir``, written atomically; a re-run with the same settings reuses them, so a long test
set resumes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pdfgc.evaluation.processed import EvalClip, cross_pairs, read_clip_frames
from pdfgc.evaluation.scoring import ClipScorer, FaceMeasures
from pdfgc.io import atomic_path, atomic_write_text

log = logging.getLogger("pdfgc.evaluate")

FACTORS = ("pose", "gaze", "blink", "lip", "emotion")
#: factor -> (generation control, driver field or None for the audio)
CONTROL_OF = {"pose": ("headpose", "pose_path"), "gaze": ("gaze", "eye_path"), "blink": ("blink", "eye_path"),
              "lip": ("mouth", None), "emotion": ("emo", "exp_path")}


def _safe(clip_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", clip_id)


class RecordCache:
    """Finished records as ``<dir>/<protocol>/<name>.json`` (+ ``.npz``), valid for one settings
    fingerprint (a record made with other settings is recomputed)."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder, self.fingerprint = Path(folder), fingerprint

    def _paths(self, protocol: str, name: str) -> tuple[Path, Path]:
        base = self.folder / protocol.replace("/", "_") / _safe(name)
        return base.with_suffix(".json"), base.with_suffix(".npz")

    def load(self, protocol: str, name: str) -> tuple[dict | None, dict]:
        js, npz = self._paths(protocol, name)
        if not js.is_file():
            return None, {}
        try:
            record = json.loads(js.read_text())
        except ValueError:
            return None, {}
        if record.get("fingerprint") != self.fingerprint:
            return None, {}
        arrays = dict(np.load(npz)) if npz.is_file() else {}
        return record, arrays

    def save(self, record: dict, arrays: dict[str, np.ndarray]) -> None:
        js, npz = self._paths(record["protocol"], record["name"])
        record = dict(record, fingerprint=self.fingerprint)
        if arrays:  # the arrays first: a record without its arrays never looks finished
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            with atomic_path(npz) as tmp:
                tmp.write_bytes(buf.getvalue())
        atomic_write_text(js, json.dumps(record, allow_nan=True) + "\n")


def settings_fingerprint(checkpoint: str, cfg: dict) -> str:
    """Hash of everything a record depends on (model files' sizes and times, test-set and metric
    settings)."""
    files = sorted(Path(checkpoint).glob("*")) if Path(checkpoint).is_dir() else [Path(checkpoint)]
    stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files if f.is_file()]
    text = json.dumps({"model": stamp, "cfg": cfg}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class RealDataEvaluation:
    """Runs the protocols for one model over one test set.

    Args:
        pipeline: a :class:`pdfgc.generation.GenerationPipeline` holding the model.
        scorer: the metric back-ends.
        work_dir: scratch folder (trimmed audio files).
        cache: where finished records live.
        max_frames: frames per clip (clips are cut to this; None: whole clips).
        batch_size: generation batch size.
    """

    def __init__(self, pipeline, scorer: ClipScorer, work_dir: Path, cache: RecordCache,
                 max_frames: int | None = 100, batch_size: int = 8) -> None:
        self.pipeline, self.scorer, self.cache = pipeline, scorer, cache
        self.work_dir = Path(work_dir)
        self.max_frames, self.batch_size = max_frames, batch_size
        self.side = pipeline.image_size
        self._clip_data: dict[str, tuple] = {}
        self._measures: dict[str, FaceMeasures] = {}  # of real clips, reused by every pair
        self._identity: dict[str, np.ndarray] = {}  # portrait descriptor per source clip

    # -- inputs ----------------------------------------------------------------------------------
    def clip_data(self, clip: EvalClip) -> tuple[Path, np.ndarray, np.ndarray]:
        """``(trimmed wav path, int16 audio, frames (T, S, S, 3))`` of a clip, audio and frames
        cut to the same ``T`` (at most ``max_frames``)."""
        if clip.clip_id not in self._clip_data:
            from scipy.io import wavfile

            from pdfgc.metrics.lse import SAMPLES_PER_FRAME, read_wav_int16

            audio = read_wav_int16(clip.audio)
            frames = read_clip_frames(clip, self.side, self.max_frames)
            t = min(len(frames), len(audio) // SAMPLES_PER_FRAME)
            audio, frames = audio[:t * SAMPLES_PER_FRAME], frames[:t]
            wav = self.work_dir / "audio" / f"{_safe(clip.clip_id)}.wav"
            with atomic_path(wav) as tmp:
                wavfile.write(tmp, 16000, audio)
            self._clip_data[clip.clip_id] = (wav, audio, frames)
            while len(self._clip_data) > 8:  # a few clips in memory: pairs reuse their neighbours
                self._clip_data.pop(next(iter(self._clip_data)))
        return self._clip_data[clip.clip_id]

    def real_measures(self, clip: EvalClip) -> FaceMeasures:
        """Landmark measurements of a real clip (computed once per run)."""
        if clip.clip_id not in self._measures:
            self._measures[clip.clip_id] = self.scorer.measure(self.clip_data(clip)[2])
        return self._measures[clip.clip_id]

    def identity(self, clip: EvalClip) -> np.ndarray:
        """Identity descriptor of a clip's portrait (its first frame)."""
        if clip.clip_id not in self._identity:
            self._identity[clip.clip_id] = self.scorer.portrait_descriptor(self.clip_data(clip)[2][0])
        return self._identity[clip.clip_id]

    def generate(self, source: EvalClip, driver: EvalClip, controls: Iterable[str],
                 driver_fields: Iterable[str]) -> np.ndarray:
        """Generated frames ``(T, S, S, 3)`` uint8: ``source``'s portrait, ``driver``'s audio, the
        named driver fields from ``driver``'s frames, only ``controls`` on."""
        from pdfgc.generation import GenerationRequest

        wav, _, frames = self.clip_data(driver)
        req = GenerationRequest(audio_path=str(wav), app_img_path=str(source.portrait),
                                output_path=str(self.work_dir / "unused.mp4"),  # frames are kept in memory
                                batch_size=self.batch_size, **{c: True for c in controls},
                                **{f: str(driver.frames_dir) for f in driver_fields})
        out = np.concatenate(list(self.pipeline.iter_frames(req)))
        return out[:len(frames)]

    # -- protocols -------------------------------------------------------------------------------
    def self_driven(self, clip: EvalClip) -> tuple[dict, dict]:
        wav, audio, gt = self.clip_data(clip)
        ours = self.generate(clip, clip, ["all"], ["pose_path", "exp_path", "eye_path"])
        s = self.scorer
        m_ours, m_gt = s.measure(ours), self.real_measures(clip)
        ref = self.identity(clip)
        record = {"ours": {**s.reconstruction(ours, gt, m_ours, m_gt), **s.lip_sync(ours, audio),
                           "csim": s.csim(ref, ours), "face_rate": m_ours.face_rate},
                  "gt": {**s.lip_sync(gt, audio), "csim": s.csim(ref, gt[1:] if len(gt) > 1 else gt),
                         "face_rate": m_gt.face_rate}}
        arrays = frame_arrays("ours", s.frame_series(m_ours, m_gt))
        feats_ours, feats_gt = s.fid_features(ours), s.fid_features(gt)
        if feats_ours is not None:
            arrays.update(fid_ours=feats_ours, fid_gt=feats_gt)
        return record, arrays

    def cross_driven(self, factor: str, source: EvalClip, driver: EvalClip) -> tuple[dict, dict]:
        control, field = CONTROL_OF[factor]
        _, audio, drv_frames = self.clip_data(driver)
        _, _, src_frames = self.clip_data(source)
        ours = self.generate(source, driver, [control], [field] if field else [])
        s = self.scorer
        portrait = src_frames[0]
        record: dict[str, dict[str, Any]] = {"ours": {"csim": s.csim(self.identity(source), ours)}, "gt": {},
                                             "static": {}}
        if factor == "lip":
            record["ours"].update(s.lip_sync(ours, audio))
            record["gt"].update(s.lip_sync(drv_frames, audio))
            record["static"].update(s.lip_sync(np.repeat(portrait[None], len(ours), 0), audio))
        elif factor == "emotion":
            drv_codes = self._emotion_codes(drv_frames)
            record["ours"]["emotion_similarity"] = _code_similarity(self._emotion_codes(ours), drv_codes)
            record["static"]["emotion_similarity"] = _code_similarity(
                np.repeat(self._emotion_codes(portrait[None]), len(ours), 0), drv_codes)
        else:
            m_ours, m_drv = s.measure(ours), self.real_measures(driver)
            m_static = self.real_measures(source).repeated(len(ours))  # its first frame, held still
            record["ours"]["face_rate"] = m_ours.face_rate
            arrays = {}
            for role, m in (("ours", m_ours), ("static", m_static)):
                record[role].update(self._factor_figures(factor, m, m_drv))
                arrays.update(frame_arrays(role, s.frame_series(m, m_drv)))
            return record, arrays
        return record, {}

    def _factor_figures(self, factor: str, m: FaceMeasures, ref: FaceMeasures) -> dict[str, float]:
        if factor == "pose":
            return {"pose_error": self.scorer.pose_error(m, ref)}
        if factor == "gaze":
            return self.scorer.gaze_figures(m, ref)
        return self.scorer.blink_figures(m, ref)

    def _emotion_codes(self, frames: np.ndarray) -> np.ndarray:
        """``(T, 30)`` emotion codes of uint8 frames by the model's own motion encoder."""
        import torch

        from pdfgc.evaluation.networks import motion_codes

        images = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        with torch.inference_mode():
            return motion_codes(self.pipeline.nets, images.to(self.pipeline.device))["emotion"].float().cpu().numpy()

    # -- driver ------------------------------------------------------------------------------------
    def jobs(self, clips: list[EvalClip], num_pairs: int, protocols: Iterable[str],
             factors: Iterable[str] = FACTORS) -> list[tuple]:
        """``(protocol, name, callable, meta)`` for every record to produce."""
        jobs = []
        if "self" in protocols:
            jobs += [("self", c.clip_id, (lambda c=c: self.self_driven(c)), {"source": c.clip_id, "driver": c.clip_id})
                     for c in clips]
        if "cross" in protocols:
            for src, drv in cross_pairs(clips, num_pairs):
                name = f"{src.clip_id}__{drv.clip_id}"
                for factor in factors:
                    jobs.append((f"cross/{factor}", name, (lambda f=factor, a=src, b=drv: self.cross_driven(f, a, b)),
                                 {"source": src.clip_id, "driver": drv.clip_id}))
        return jobs

    def run(self, clips: list[EvalClip], num_pairs: int, protocols: Iterable[str], factors: Iterable[str] = FACTORS,
            progress: bool = True) -> tuple[list[dict], dict[str, list[np.ndarray]], list[tuple]]:
        """All records (cached ones reused), the FID features per role and the per-frame series
        ``(protocol, name, role, {metric: (T,)})``."""
        from tqdm import tqdm

        records, features, frames = [], {"ours": [], "gt": []}, []
        jobs = self.jobs(clips, num_pairs, list(protocols), list(factors))
        reused = 0
        for protocol, name, make, meta in tqdm(jobs, desc="evaluate", unit="clip", disable=not progress):
            record, arrays = self.cache.load(protocol, name)
            if record is None:
                body, arrays = make()
                record = {"protocol": protocol, "name": name, **meta, **body}
                self.cache.save(record, arrays)
            else:
                reused += 1
            records.append(record)
            for role in ("ours", "gt"):
                if f"fid_{role}" in arrays:
                    features[role].append(arrays[f"fid_{role}"])
            for role, series in split_frame_arrays(arrays).items():
                frames.append((protocol, name, role, series))
        if reused:
            log.info("reused %d of %d scored records from %s", reused, len(jobs), self.cache.folder)
        return records, features, frames


def frame_arrays(role: str, series: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-frame series of one role as record arrays (``frames__<role>__<metric>``)."""
    return {f"frames__{role}__{k}": v for k, v in series.items()}


def split_frame_arrays(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of :func:`frame_arrays` over a record's arrays: ``{role: {metric: (T,)}}``."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        if key.startswith("frames__"):
            _, role, metric = key.split("__", 2)
            out.setdefault(role, {})[metric] = value
    return out


def _code_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-frame cosine similarity of two ``(T, D)`` code sequences."""
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))
