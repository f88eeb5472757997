"""The evaluation task behind ``evaluate.py``."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from pdfgc.errors import PdfgcError
from pdfgc.evaluation.networks import load_eval_networks
from pdfgc.evaluation.oracle_cache import get_oracle
from pdfgc.evaluation.synthtalk import evaluate_synthtalk
from pdfgc.metrics import write_report

log = logging.getLogger("pdfgc.evaluate")


def check_config(cfg: DictConfig) -> None:
    """Refuse, in one line, a command line without the values evaluation needs (``checkpoint``,
    ``test_set.root`` of a processed test set) or with a device that is not there.
    Sets ``cfg.device`` to the resolved device (``auto`` -> cuda or cpu)."""
    from omegaconf import OmegaConf

    from pdfgc.generation import resolve_device

    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise PdfgcError("no checkpoint given: add checkpoint=<stage-3 export folder, the official release's "
                         "folder (with networks=official) or a stage .ckpt>")
    ts = cfg.get("test_set")
    if ts is not None and OmegaConf.is_missing(ts, "root"):
        raise PdfgcError(f"test_set={ts.get('kind', 'processed')} needs test_set.root=<folder holding index.jsonl> "
                         "(preprocess.py output, or use test_set=synthtalk)")
    cfg.device = str(resolve_device(cfg.device))


def run(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.checkpoint``: the SynthTalk report (``synthtalk_report``) and/or the real-data
    protocols on ``cfg.test_set``; returns the flat metrics."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        return _run(cfg)
    except MissingMandatoryValue as exc:  # any other `???` value left unset
        raise PdfgcError(f"{exc.full_key} is not set: add {exc.full_key}=<value> to the command") from None


def _run(cfg: DictConfig) -> dict:
    check_config(cfg)
    torch.manual_seed(int(cfg.seed))
    out_dir = Path(cfg.output_dir)
    nets = load_eval_networks(cfg.checkpoint, networks=cfg.networks, device=cfg.device)
    metrics, result = {}, None
    if cfg.get("synthtalk_report", True):
        metrics, result = _synthtalk_report(cfg, nets, out_dir)
    if cfg.get("test_set"):
        from pdfgc.evaluation.test_set import evaluate_test_set

        metrics.update(evaluate_test_set(cfg, nets, out_dir))
    write_report(out_dir, metrics, result)
    if result is not None:
        log.info("\n%s", result)
    print(f"report: {out_dir / 'metrics.json'}")
    return metrics


def _synthtalk_report(cfg: DictConfig, nets, out_dir: Path):
    """Disentanglement, control transfer and lip-sync on SynthTalk's held-out speakers."""
    dm = hydra.utils.instantiate(cfg.data, image_size=nets.image_size)  # data at the networks' side
    test_pool = dm.pool("test")
    o = cfg.oracle
    cache = Path(dm.cache_dir or out_dir) / (f"oracle_{int(o.speakers)}spk_{int(o.steps)}steps_"
                                              f"{nets.image_size}px_seed{int(cfg.seed)}.pt")
    oracle, oracle_report = get_oracle(o.path, cache, test_pool, int(o.steps), int(o.batch_size), int(o.speakers),
                                       nets.image_size, int(cfg.seed))
    with torch.inference_mode():
        metrics, result, details = evaluate_synthtalk(nets, test_pool, oracle, emotion_window=int(cfg.emotion_window),
                                                      num_pairs=int(cfg.num_pairs), probe_seed=int(cfg.seed))
    for key, value in _flat_oracle_report(oracle_report).items():
        metrics[f"synthtalk/oracle/{key}"] = value
    for factor, ok in details["control_passed"].items():
        metrics[f"synthtalk/control/{factor}/passed"] = float(ok)
    return metrics, result


def _flat_oracle_report(report: dict) -> dict[str, float]:
    out = {}
    for key, value in (report or {}).items():
        if isinstance(value, (int, float)):
            out[key] = float(value)
        elif isinstance(value, dict):
            for k2, v2 in value.items():
                if isinstance(v2, (int, float)):
                    out[f"{key}/{k2}"] = float(v2)
    return out
