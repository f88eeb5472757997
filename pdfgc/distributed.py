"""What training must know about running as several processes (DDP, torchrun, srun, SLURM).

Lightning does the distributed work itself; this module only covers the places where our
entry point meets it: the global batch split, the run folder every rank must share, and
which rank writes files.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

from pdfgc.errors import PdfgcError

# Set by torchrun (and by Lightning for the processes it starts itself); srun sets SLURM_*.
_EXTERNAL_RANK_VARS = ("LOCAL_RANK", "RANK")


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """``global_batch_size`` split evenly over ``world_size`` processes.

    :raises PdfgcError: when it does not divide (a silent round-down would change the recipe).
    """
    global_batch_size, world_size = int(global_batch_size), max(int(world_size), 1)
    if global_batch_size < world_size or global_batch_size % world_size:
        raise PdfgcError(
            f"data.batch_size={global_batch_size} (global) does not split over {world_size} devices; "
            f"use a multiple of {world_size}")
    return global_batch_size // world_size


def global_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank from the launcher's environment (0 when not distributed)."""
    env = os.environ if env is None else env
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 0


def launched_externally(env: Mapping[str, str] | None = None) -> bool:
    """True when torchrun/srun (or Lightning's own re-launch) started this process as one of
    several ranks, so that every rank runs the entry point and Hydra separately."""
    env = os.environ if env is None else env
    if any(key in env for key in _EXTERNAL_RANK_VARS):
        return True
    return int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env


def check_run_dir_pinned(hydra_overrides: list[str], multirun: bool, env: Mapping[str, str] | None = None) -> None:
    """Every rank must write into one run folder.

    Under torchrun/srun each rank runs Hydra by itself and would stamp its own
    ``runs/<time>`` folder (seconds apart): the run folder must be given on the command line.
    A Hydra multirun (and the submitit launcher) fixes one sweep folder for all its jobs.

    :param hydra_overrides: the ``hydra.*`` overrides of the command line
    :raises PdfgcError: several ranks without ``hydra.run.dir=...``
    """
    if multirun or not launched_externally(env):
        return
    if any(o.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for o in hydra_overrides):
        return
    raise PdfgcError("several ranks (torchrun/srun) need one run folder: add hydra.run.dir=<folder> "
                     "(e.g. logs/train/runs/$SLURM_JOB_ID) to the command")


def check_multirun_strategy(strategy: object, devices: object, multirun: bool,
                            env: Mapping[str, str] | None = None) -> None:
    """A local Hydra multirun cannot use ``strategy=ddp`` with several devices.

    Lightning's ``ddp`` starts the other ranks by re-running the command line, which in a
    multirun re-runs the whole sweep; ``ddp_fork`` forks from inside the job instead, and the
    submitit launcher starts every rank itself (``tasks_per_node``).
    """
    if not multirun or launched_externally(env) or strategy != "ddp":
        return
    if devices in (1, "1"):
        return
    raise PdfgcError("a local multirun (-m) cannot launch trainer.strategy=ddp; use trainer.strategy=ddp_fork, "
                     "hydra/launcher=slurm, or one run per torchrun command")


def ddp_strategy_for(strategy: object, find_unused_parameters: bool) -> object:
    """Lightning's registered name of a DDP ``strategy`` with unused-parameter search on, for
    stages that need it (the GAN stages: one backward per network and step); other strategies
    and stages unchanged. DDP stays without the search for stages whose frozen parts are simply
    frozen (requires_grad False before the wrap)."""
    if find_unused_parameters and strategy in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        return f"{strategy}_find_unused_parameters_true"
    return strategy


def quiet_other_ranks(rank: int) -> None:
    """Ranks other than 0 stop writing Hydra's job log file (rank 0 keeps the one log)."""
    if rank == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
