"""``evaluate.py test_set=...``: the real-data protocols for one model, end to end."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pdfgc.errors import PdfgcError

log = logging.getLogger("pdfgc.evaluate")

#: Bump when a record's content changes, so older cached records are scored again (2: per-frame series).
RECORD_VERSION = 2


def synthtalk_test_root(cfg: DictConfig, image_size: int) -> Path:
    """The processed export of the ``data`` world's held-out speakers (written once, resumable)."""
    import hydra

    from pdfgc.synthtalk.export import export

    dm = hydra.utils.instantiate(cfg.data, image_size=image_size)
    w = dm.world
    if cfg.test_set.max_clips:  # render only the speakers whose clips are used (clips are per-speaker deterministic)
        needed = -(-int(cfg.test_set.max_clips) // w.clips_per_speaker)
        w = dataclasses.replace(w, heldout_speakers=min(w.heldout_speakers, needed))
    root = cfg.test_set.root or Path(dm.cache_dir or cfg.output_dir) / (
        f"processed_test_s{w.seed}_{w.num_speakers}+{w.heldout_speakers}spk_{w.clips_per_speaker}x"
        f"{w.clip_seconds:g}s_{w.image_size}px")
    export(root, w, "test", progress=False)
    return Path(root)


def evaluate_test_set(cfg: DictConfig, nets, out_dir: Path) -> dict:
    """Run ``cfg.test_set``'s protocols for ``nets``; writes the real-data report files into
    ``out_dir`` and returns the flat figures (``real/...``, estimator names included)."""
    from pdfgc.evaluation.processed import read_test_clips
    from pdfgc.evaluation.real import FACTORS, RealDataEvaluation, RecordCache, settings_fingerprint
    from pdfgc.evaluation.real_report import aggregate, write_real_report
    from pdfgc.evaluation.scoring import ClipScorer
    from pdfgc.generation import GenerationPipeline, ModelOptions

    ts = cfg.test_set
    scorer = ClipScorer(OmegaConf.to_container(cfg.metrics, resolve=True), cfg.device)  # first: bad weights fail fast
    unknown = set(ts.protocols) - {"self", "cross"}
    if unknown:
        raise PdfgcError(f"unknown test_set.protocols {sorted(unknown)} (self, cross)")
    factors = list(ts.get("factors") or FACTORS)
    if set(factors) - set(FACTORS):
        raise PdfgcError(f"unknown test_set.factors {sorted(set(factors) - set(FACTORS))} ({', '.join(FACTORS)})")
    if ts.kind == "synthtalk":
        root = synthtalk_test_root(cfg, nets.image_size)
    elif ts.kind == "processed":
        root = Path(ts.root)
    else:
        raise PdfgcError(f"unknown test_set.kind {ts.kind!r} (processed | synthtalk)")
    clips = read_test_clips(root, ts.split, ts.max_clips)
    log.info("real-data protocols on %d clips of %s", len(clips), root)
    pipeline = GenerationPipeline(ModelOptions(checkpoints=str(cfg.checkpoint), device=cfg.device), networks=nets)
    settings = {"metrics": OmegaConf.to_container(cfg.metrics, resolve=True), "root": str(root),
                "max_frames": ts.max_frames, "split": ts.split,
                "records": RECORD_VERSION}
    cache = RecordCache(Path(ts.cache_dir), settings_fingerprint(str(cfg.checkpoint), settings))
    evaluation = RealDataEvaluation(pipeline, scorer, out_dir / "work", cache, ts.max_frames, int(ts.batch_size))
    records, features, frames = evaluation.run(clips, int(ts.num_pairs), list(ts.protocols), factors)
    figures = aggregate(records, features)
    estimators = scorer.estimators()
    write_real_report(out_dir, records, figures, estimators, frames)
    return {**figures, **{f"real/estimator/{k}": v for k, v in estimators.items()}}
