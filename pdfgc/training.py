"""The training task behind ``train.py``: build everything from the config, fit, export.

Also runs a chain of stages (``stages: [...]``, set by ``experiment=<data>/all``): each stage
is composed as its own experiment, trained in a sub-folder of the run, and initialised from
the previous stage's export.

Under DDP (docs/scale.md) every rank runs this code: only rank 0 writes the config files and
the export, Lightning's loggers and checkpoints are rank-0 only by themselves. A resumed run
continues the same W&B run, and ``optimized_metric`` makes the run's result one number for
the Optuna sweeper.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pdfgc.distributed import (check_multirun_strategy, check_run_dir_pinned, ddp_strategy_for, global_rank,
                               per_device_batch_size, quiet_other_ranks)
from pdfgc.errors import PdfgcError
from pdfgc.io import atomic_write_text
from pdfgc.utils import instantiate_callbacks, instantiate_loggers, print_config_tree

log = logging.getLogger("pdfgc.train")

EXPORT_DIR = "export"
# The W&B run id of a run folder, written at its first start and reused when it resumes.
WANDB_ID_FILE = "wandb_run_id.txt"


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` -> ``<output_dir>/checkpoints/last.ckpt``; a path must exist."""
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        candidate = output_dir / "checkpoints" / "last.ckpt"
        if not candidate.exists():
            raise PdfgcError(
                f"ckpt_path=last: no {candidate}; to resume, point hydra.run.dir at the interrupted run's folder")
        return str(candidate)
    if not Path(ckpt_path).exists():
        raise PdfgcError(f"checkpoint not found: {ckpt_path}")
    return str(ckpt_path)


def slurm_resume_path(output_dir: Path, env: dict[str, str] | None = None) -> str | None:
    """The checkpoint a requeued SLURM job continues from, or None for a first start.

    Lightning's SIGUSR1 handler saves ``<run>/hpc_ckpt_<n>.ckpt`` before requeueing; a job
    requeued by SLURM itself (preemption, node failure; ``SLURM_RESTART_COUNT`` > 0) has only
    the periodic ``checkpoints/last.ckpt``. The newer of the two wins.
    """
    env = os.environ if env is None else env
    candidates = list(output_dir.glob("hpc_ckpt_*.ckpt"))
    if int(env.get("SLURM_RESTART_COUNT", "0") or 0) > 0:
        candidates += [p for p in [output_dir / "checkpoints" / "last.ckpt"] if p.exists()]
    if not candidates:
        return None
    return str(max(candidates, key=lambda p: p.stat().st_mtime))


def continue_wandb_run(cfg: DictConfig, output_dir: Path, resuming: bool, rank: int = 0) -> str | None:
    """Give the W&B logger (if configured, without an explicit id) a run id kept in the run folder.

    A fresh run records a new id in ``<run>/wandb_run_id.txt``; a resumed run (``resuming``)
    reuses the recorded one with ``resume="allow"``, so its curves continue the same W&B run.
    Returns the id used (None without a W&B logger or with a user-given ``logger.wandb.id``).
    """
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if not wandb_cfg or wandb_cfg.get("id"):
        return None
    id_file = output_dir / WANDB_ID_FILE
    if resuming and id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
        if rank == 0:
            atomic_write_text(id_file, run_id + "\n")
    with open_dict(wandb_cfg):
        wandb_cfg.id = run_id
        wandb_cfg.resume = "allow"
    return run_id


def train_stage(cfg: DictConfig) -> dict[str, Any]:
    """Train one stage as configured; returns the final logged metrics and the export path."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rank = global_rank()
    quiet_other_ranks(rank)
    if rank == 0 and cfg.get("extras") and cfg.extras.get("print_config"):
        print_config_tree(cfg, save_to=output_dir / "config_tree.log")
    if cfg.get("extras") and cfg.extras.get("ignore_warnings"):
        import warnings

        warnings.filterwarnings("ignore")
    if rank == 0:
        OmegaConf.save(cfg, output_dir / "config.yaml")
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    # Plain containers (not DictConfig) so checkpoints hold only safe types (weights_only loads).
    model: pl.LightningModule = hydra.utils.instantiate(
        cfg.model, networks=OmegaConf.to_container(cfg.networks, resolve=True), _recursive_=False, _convert_="all")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir) or slurm_resume_path(output_dir)
    if cfg.get("init_from") and ckpt_path is None:
        # Weights only; a resumed run already has them (and more) in its checkpoint.
        model.init_from_export(cfg.init_from)

    continue_wandb_run(cfg, output_dir, resuming=ckpt_path is not None, rank=rank)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"))
    strategy = ddp_strategy_for(cfg.trainer.get("strategy", "auto"),
                                getattr(model, "ddp_find_unused_parameters", False))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                  strategy=strategy)
    if cfg.data.get("batch_size") is not None:  # global; fail here in one line, not inside every rank
        per_device_batch_size(cfg.data.batch_size, trainer.world_size)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
    if cfg.get("test"):
        trainer.test(model, datamodule=datamodule)
    result: dict[str, Any] = {"metrics": metrics, "output_dir": str(output_dir)}
    if cfg.get("export", True) and trainer.is_global_zero and not trainer.fast_dev_run:
        export_dir = model.export(output_dir / EXPORT_DIR, carry_from=cfg.get("init_from"))
        log.info("exported %s weights to %s", model.stage_name, export_dir)
        print(f"export: {export_dir}")
        result["export_dir"] = str(export_dir)
    return result


def stage_overrides(parent_overrides: list[str]) -> list[str]:
    """The user's command-line overrides that apply to every stage of a chain."""
    return [o for o in parent_overrides if not o.split("=")[0].lstrip("+~") in ("experiment", "stages", "init_from")]


def compose_stage(overrides: list[str]) -> DictConfig:
    """Compose ``train.yaml`` with ``overrides`` (inside a running Hydra app or standalone)."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return hydra.compose(config_name="train", overrides=overrides)
    config_dir = Path(__file__).resolve().parents[1] / "configs"
    with hydra.initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra.compose(config_name="train", overrides=overrides)


def train_chain(cfg: DictConfig, parent_overrides: list[str]) -> dict[str, Any]:
    """Run ``cfg.stages`` in order, each initialised from the previous stage's export."""
    root = Path(cfg.paths.output_dir)
    init_from = cfg.get("init_from")
    results = {}
    for name in cfg.stages:
        stage_dir = root / name.replace("/", "_")
        overrides = [f"experiment={name}", *stage_overrides(parent_overrides),
                     f"paths.output_dir={stage_dir}", f"init_from={init_from or 'null'}"]
        stage_cfg = compose_stage(overrides)
        log.info("stage %s -> %s", name, stage_dir)
        result = train_stage(stage_cfg)
        results[name] = result
        init_from = result.get("export_dir", init_from)
    if init_from:
        print(f"final export: {init_from}")
    return {"stages": results, "export_dir": init_from}


def check_launch(cfg: DictConfig) -> None:
    """Refuse the Hydra + DDP combinations that split a run over several folders or re-run a
    sweep (see :mod:`pdfgc.distributed`); a no-op outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    check_run_dir_pinned(list(hydra_cfg.overrides.hydra), multirun)
    trainer = cfg.get("trainer") or {}
    check_multirun_strategy(trainer.get("strategy"), trainer.get("devices"), multirun)


def optimized_metric_value(cfg: DictConfig, result: dict[str, Any]) -> float | None:
    """The value of ``cfg.optimized_metric`` in a run's result (the last stage of a chain),
    what the Optuna sweeper minimises or maximises; None when no metric is named.

    :raises PdfgcError: the metric was never logged (a typo would otherwise optimise nothing)
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if "stages" in result:
        result = list(result["stages"].values())[-1] if result["stages"] else {"metrics": {}}
    metrics = result.get("metrics", {})
    if name not in metrics:
        raise PdfgcError(f"optimized_metric={name} was not logged; logged: {', '.join(sorted(metrics)) or 'nothing'}")
    return float(metrics[name])


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, Any]:
    """Entry of ``train.py``: one stage, or the chain in ``cfg.stages``.

    ``overrides`` are applied to every stage of a chain (default: the command line's).
    """
    check_launch(cfg)
    if cfg.get("stages"):
        from hydra.core.hydra_config import HydraConfig

        if overrides is None:
            overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        return train_chain(cfg, overrides)
    return train_stage(cfg)
