"""Training at scale on CPU: 2-process DDP (gloo) per stage, multirun, Optuna sweep, SLURM config,
global batch split, launch checks, W&B run continued on resume."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict

from pdfgc.distributed import (check_multirun_strategy, check_run_dir_pinned, global_rank,
                               per_device_batch_size)
from pdfgc.errors import PdfgcError
from pdfgc.training import WANDB_ID_FILE, continue_wandb_run, optimized_metric_value, slurm_resume_path, train_stage

from conftest import CONFIG_DIR, REPO_ROOT, compose_train

SAMPLE_KEYS = ("source", "driver", "frames", "mels", "eye_anchor")  # what identifies a sample, by mode


@pytest.fixture(scope="module")
def world_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synthtalk_cache_scale")


def tiny(cache: Path, batch_size: int = 4, callbacks: str = "~callbacks") -> list[str]:
    """A 6-clip world (4 train, 2 held-out speakers), 1 s clips; no callbacks, no validation."""
    return ["data.num_speakers=4", "data.heldout_speakers=2", "data.clips_per_speaker=1",
            "data.clip_seconds=1.0", f"data.cache_dir={cache}", f"data.batch_size={batch_size}",
            "data.val_samples=2", "data.render_workers=1", callbacks, "extras.print_config=false",
            "trainer.log_every_n_steps=1", "++trainer.val_check_interval=100", "export=false"]


class RankProbe(pl.Callback):
    """Writes, per rank, a digest of every training sample it saw and of its final parameters.

    Parameters, not buffers: DDP broadcasts rank 0's buffers (batch-norm statistics, memory
    banks) at the start of each step, so between steps every rank holds its own."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir, self.samples, self.batch_sizes = Path(out_dir), [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        keys = [k for k in SAMPLE_KEYS if k in batch]
        self.batch_sizes.append(int(batch[keys[0]].shape[0]))
        for i in range(self.batch_sizes[-1]):
            digest = hashlib.sha1()
            for k in keys:
                digest.update(batch[k][i].numpy().tobytes())
            self.samples.append(digest.hexdigest())

    @staticmethod
    def parameters_digest(module) -> str:
        digest = hashlib.sha1()
        for key, value in sorted(module.named_parameters()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = self.parameters_digest(pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        report = {"rank": trainer.global_rank, "world_size": trainer.world_size, "samples": self.samples,
                  "batch_sizes": self.batch_sizes, "initial": self.initial,
                  "weights": self.parameters_digest(pl_module), "step": trainer.global_step,
                  "find_unused": trainer.strategy._ddp_kwargs.get("find_unused_parameters", False)}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


# ---- global batch split -----------------------------------------------------------------------

def test_global_batch_is_split_evenly_or_refused_in_one_line():
    assert per_device_batch_size(16, 8) == 2
    assert per_device_batch_size(6, 1) == 6
    with pytest.raises(PdfgcError, match=r"data.batch_size=6 \(global\) does not split over 4 devices"):
        per_device_batch_size(6, 4)
    with pytest.raises(PdfgcError, match="multiple of 8"):
        per_device_batch_size(4, 8)


def test_train_refuses_a_batch_that_does_not_divide_before_spawning(tmp_path, world_cache):
    cfg = compose_train(["experiment=synthtalk/stage2", *tiny(world_cache, batch_size=3), "trainer=ddp_sim"],
                        tmp_path)
    with pytest.raises(PdfgcError, match="does not split over 2 devices"):
        train_stage(cfg)


# ---- launch checks ----------------------------------------------------------------------------

def test_ranks_started_by_torchrun_or_srun_need_a_pinned_run_dir():
    torchrun = {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}
    with pytest.raises(PdfgcError, match="hydra.run.dir"):
        check_run_dir_pinned([], multirun=False, env=torchrun)
    check_run_dir_pinned(["hydra.run.dir=logs/x"], multirun=False, env=torchrun)
    srun = {"SLURM_NTASKS": "8", "SLURM_PROCID": "3"}
    with pytest.raises(PdfgcError, match="hydra.run.dir"):
        check_run_dir_pinned(["hydra.job.chdir=false"], multirun=False, env=srun)
    check_run_dir_pinned([], multirun=True, env=srun)  # submitit: one sweep folder for all tasks
    check_run_dir_pinned([], multirun=False, env={})  # one process: Hydra's own folder is fine
    assert global_rank(srun) == 3 and global_rank(torchrun) == 1 and global_rank({}) == 0


def test_a_torchrun_rank_without_a_run_dir_exits_2_with_one_line(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if k != "PDFGC_DEBUG"}  # the one-line error, not a traceback
    env.update(LOCAL_RANK="1", RANK="1", WORLD_SIZE="2")
    proc = subprocess.run([sys.executable, "train.py", "~logger", f"paths.log_dir={tmp_path}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: several ranks (torchrun/srun) need one run folder")
    # Hydra has made its own folder by then; pdfgc wrote nothing into it.
    assert [p.parent.name for p in tmp_path.rglob("config.yaml")] == [".hydra"]


def test_local_multirun_refuses_the_relaunching_ddp_strategy():
    with pytest.raises(PdfgcError, match="ddp_fork"):
        check_multirun_strategy("ddp", "auto", multirun=True, env={})
    check_multirun_strategy("ddp_fork", 2, multirun=True, env={})
    check_multirun_strategy("ddp", 8, multirun=False, env={})
    check_multirun_strategy("ddp", 8, multirun=True, env={"SLURM_NTASKS": "8", "SLURM_PROCID": "0"})


# ---- trainer and launcher configs -------------------------------------------------------------

def compose_with_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_ddp_presets_sync_batch_norm_on_gpus_and_keep_our_rank_split(tmp_path):
    for name, sync in (("ddp", True), ("ddp_sim", False)):
        trainer = compose_train([f"trainer={name}"], tmp_path).trainer
        assert trainer.strategy in ("ddp", "ddp_fork") and trainer.sync_batchnorm is sync
        assert trainer.use_distributed_sampler is False
        assert trainer.num_nodes == 1


def test_sync_batchnorm_conversion_keeps_frozen_parts_frozen(tmp_path):
    """What Lightning's sync_batchnorm does under trainer=ddp, on stage 2: every batch norm becomes
    SyncBatchNorm; the frozen backbone's stay in eval mode without gradients, the heads' train."""
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=synthtalk/stage2"], tmp_path)
    model = instantiate(cfg.model, networks=OmegaConf.to_container(cfg.networks, resolve=True),
                        _recursive_=False, _convert_="all")
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model).train()
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms.values())
    heads = tuple(f"motion.{h}." for h in model.trained_heads)
    backbone = {n: m for n, m in norms.items() if n.startswith("motion.") and not n.startswith(heads)}
    trained = {n: m for n, m in norms.items() if n.startswith(heads)}
    assert backbone and trained
    assert not any(m.training or m.weight.requires_grad for m in backbone.values())
    assert all(m.training and m.weight.requires_grad for m in trained.values())


def test_slurm_launcher_composes_with_the_resources_of_a_typical_job():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_with_hydra(["hydra/launcher=slurm", "trainer=slurm", "experiment=synthtalk/stage1"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 8, 8)
    assert launcher.timeout_min == 1440 and launcher.mem_gb == 480
    # SIGUSR1 (Lightning's requeue signal) replaces submitit's USR2, 120 s before the end.
    assert launcher.additional_parameters.signal == "USR1@120"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)  # what a running job has: trainer=slurm reads the launcher
    try:
        assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (8, 1)
    finally:
        HydraConfig.instance().cfg = None


def test_slurm_sbatch_script_carries_the_requeue_signal(tmp_path):
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = compose_with_hydra(["hydra/launcher=slurm"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    script = _make_sbatch_string(command="python -m submitit.core._submit x", folder=str(tmp_path),
                                 nodes=launcher["nodes"], ntasks_per_node=launcher["tasks_per_node"],
                                 gpus_per_node=launcher["gpus_per_node"], signal_delay_s=launcher["signal_delay_s"],
                                 additional_parameters=launcher["additional_parameters"])
    signals = [line for line in script.splitlines() if line.startswith("#SBATCH --signal")]
    assert signals == ["#SBATCH --signal=USR1@120"], signals
    assert "#SBATCH --requeue" in script and "#SBATCH --ntasks-per-node=8" in script


def test_requeued_job_resumes_from_the_newest_checkpoint(tmp_path):
    import os
    import time

    assert slurm_resume_path(tmp_path, env={}) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(b"x")
    assert slurm_resume_path(tmp_path, env={}) is None, "a first start does not pick up a stale last.ckpt"
    assert slurm_resume_path(tmp_path, env={"SLURM_RESTART_COUNT": "1"}) == str(last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    hpc.write_bytes(b"x")
    now = time.time()
    os.utime(last, (now - 60, now - 60))
    assert slurm_resume_path(tmp_path, env={"SLURM_RESTART_COUNT": "1"}) == str(hpc)
    os.utime(hpc, (now - 120, now - 120))
    assert slurm_resume_path(tmp_path, env={"SLURM_RESTART_COUNT": "2"}) == str(last)


# ---- optimized metric and W&B resume ----------------------------------------------------------

def test_optimized_metric_is_the_logged_value_of_the_last_stage():
    cfg = OmegaConf.create({"optimized_metric": "val/lip_accuracy"})
    assert optimized_metric_value(cfg, {"metrics": {"val/lip_accuracy": 0.75}}) == 0.75
    chain = {"stages": {"s1": {"metrics": {"val/lip_accuracy": 0.1}}, "s2": {"metrics": {"val/lip_accuracy": 0.5}}}}
    assert optimized_metric_value(cfg, chain) == 0.5
    with pytest.raises(PdfgcError, match="optimized_metric=val/lip_accuracy was not logged; logged: train/loss"):
        optimized_metric_value(cfg, {"metrics": {"train/loss": 1.0}})
    assert optimized_metric_value(OmegaConf.create({}), {"metrics": {}}) is None


def test_resumed_run_continues_the_same_wandb_run(tmp_path, world_cache, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    common = ["experiment=synthtalk/stage2", *tiny(world_cache, batch_size=2, callbacks="callbacks=model_checkpoint"),
              "callbacks.model_checkpoint.every_n_train_steps=1"]

    def with_wandb(overrides):
        cfg = compose_train(overrides, tmp_path / "run")  # composes without loggers
        wandb_cfg = OmegaConf.load(CONFIG_DIR / "logger" / "wandb.yaml")
        wandb_cfg.wandb.update(save_dir=str(tmp_path / "run"), name="resume-test", tags=[])
        with open_dict(cfg):
            cfg.logger = wandb_cfg
        return cfg

    first = with_wandb([*common, "trainer.max_steps=1"])
    train_stage(first)
    run_id = (tmp_path / "run" / WANDB_ID_FILE).read_text().strip()
    assert first.logger.wandb.id == run_id and len(run_id) >= 8

    resumed = with_wandb([*common, "trainer.max_steps=2", "ckpt_path=last"])
    train_stage(resumed)
    assert resumed.logger.wandb.id == run_id and resumed.logger.wandb.resume == "allow"
    # offline-run-<time>-<id>: both starts (one folder when they fall in the same second) logged under the id.
    runs = sorted(p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs and all(name.endswith(f"-{run_id}") for name in runs), runs

    fresh = OmegaConf.create({"logger": {"wandb": {"id": None}}})
    assert continue_wandb_run(fresh, tmp_path / "run", resuming=False) != run_id, "a new run gets a new id"
    given = OmegaConf.create({"logger": {"wandb": {"id": "mine"}}})
    assert continue_wandb_run(given, tmp_path / "run", resuming=True) is None and given.logger.wandb.id == "mine"


# ---- 2-process DDP per stage ------------------------------------------------------------------

@pytest.mark.parametrize("experiment,find_unused", [("synthtalk/stage1", True), ("synthtalk/stage2", False),
                                                     ("synthtalk/stage3", True)])
def test_two_process_ddp_ranks_see_different_data_and_end_with_identical_weights(experiment, find_unused, tmp_path,
                                                                                 world_cache):
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    cfg = compose_train([f"experiment={experiment}", *tiny(world_cache, batch_size=4), "trainer=ddp_sim",
                         "trainer.max_steps=2", "+callbacks.probe._target_=test_scale.RankProbe",
                         f"+callbacks.probe.out_dir={probe_dir}"], tmp_path / "run")
    train_stage(cfg)
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [2, 2]
    # GAN stages count one step per optimiser (D and G): 1 batch; stage 2: 2 batches.
    batches = ranks[0]["batch_sizes"]
    assert batches == ranks[1]["batch_sizes"] and set(batches) == {2}, "global batch 4 = 2 per rank"
    seen0, seen1 = set(ranks[0]["samples"]), set(ranks[1]["samples"])
    assert len(seen0) == len(seen1) == 2 * len(batches) and not seen0 & seen1, "ranks must see different samples"
    assert ranks[0]["weights"] == ranks[1]["weights"], "DDP keeps the replicas identical"
    assert ranks[0]["weights"] != ranks[0]["initial"], "and they trained"
    # Stage 2 freezes E_mot's backbone before the wrap: plain DDP. The GAN stages' D and G
    # backward passes each leave the other network without gradients: DDP searches for them.
    assert [r["find_unused"] for r in ranks] == [find_unused, find_unused]


# ---- multirun and sweep (subprocesses: the real entry point) ----------------------------------

def run_train(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    """``python train.py *args`` from the repository root; data loading in-process (as compose_train)."""
    import os

    proc = subprocess.run([sys.executable, "train.py", *args, "data.num_workers=0"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_multirun_over_two_experiments_with_ddp_fork_keeps_one_folder_per_job(tmp_path, world_cache):
    run_train(["-m", "experiment=synthtalk/stage1,synthtalk/stage2", "trainer=ddp_sim", "trainer.max_steps=1",
               *tiny(world_cache), "~logger", f"hydra.sweep.dir={tmp_path}"])
    jobs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"], jobs
    for job, task in (("0", "synthtalk_stage1"), ("1", "synthtalk_stage2")):
        saved = OmegaConf.load(tmp_path / job / "config.yaml")
        assert saved.task_name == task and saved.trainer.devices == 2
    assert not list(tmp_path.glob("*/train_ddp_process_*")), "no per-rank folders"


@pytest.mark.slow
def test_optuna_sweep_of_two_trials_records_the_logged_metric_and_continues(tmp_path, world_cache):
    optuna = pytest.importorskip("optuna")
    args = ["experiment=synthtalk/stage2", "hparams_search=synthtalk_stage2_optuna", *tiny(world_cache),
            "trainer.max_steps=2", "trainer.val_check_interval=2", "++trainer.limit_val_batches=1",
            f"paths.log_dir={tmp_path}/logs"]
    run_train([*args, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}/sweep"])
    storage = f"sqlite:///{tmp_path}/logs/optuna/synthtalk_stage2.db"
    study = optuna.load_study(study_name="synthtalk_stage2_lip_temperature_weights", storage=storage)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2
    for job, trial in enumerate(trials):
        assert 0.02 <= trial.params["model.lip_temperature"] <= 0.5
        saved = OmegaConf.load(tmp_path / "sweep" / str(job) / "config.yaml")
        assert saved.model.lip_temperature == pytest.approx(trial.params["model.lip_temperature"])
        logged = [row["val/lip_accuracy"] for row in csv.DictReader(open(tmp_path / "sweep" / str(job) / "csv" / "metrics.csv"))
                  if row.get("val/lip_accuracy")]
        assert trial.value == pytest.approx(float(logged[-1])), "the study holds the logged val/lip_accuracy"
    # An interrupted sweep continues: the same command adds trials to the stored study.
    run_train([*args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={tmp_path}/sweep2"])
    study = optuna.load_study(study_name="synthtalk_stage2_lip_temperature_weights", storage=storage)
    assert len(study.trials) == 3


@pytest.mark.slow
def test_torchrun_on_two_nodes_shares_one_run_folder_and_splits_the_data(tmp_path, world_cache):
    """The multi-node launch line of docs/scale.md on one machine: two torchrun "nodes" (one
    process each, c10d rendezvous, gloo) run train.py with trainer.num_nodes=2. Both ranks train
    on different samples to identical weights; one run folder, one export, rank 0's log only."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe_dir, run_dir = tmp_path / "probe", tmp_path / "run"
    probe_dir.mkdir()
    args = ["experiment=synthtalk/stage2", "trainer=ddp_sim", "trainer.strategy=ddp", "trainer.devices=1",
            "trainer.num_nodes=2", "trainer.max_steps=2", f"hydra.run.dir={run_dir}", "~logger",
            *[a for a in tiny(world_cache, batch_size=4) if a != "export=false"], "data.num_workers=0",
            "+callbacks.probe._target_=test_scale.RankProbe", f"+callbacks.probe.out_dir={probe_dir}"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests"), "OMP_NUM_THREADS": "1"}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    nodes = [subprocess.Popen([torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-id", "test",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "train.py", *args],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [2, 2]
    assert ranks[0]["batch_sizes"] == ranks[1]["batch_sizes"] == [2, 2], "global batch 4 = 2 per rank"
    assert not set(ranks[0]["samples"]) & set(ranks[1]["samples"]), "ranks must see different samples"
    assert ranks[0]["weights"] == ranks[1]["weights"] != ranks[0]["initial"]
    assert sum("export: " in out for out in outputs) == 1, "rank 0 alone exports"
    assert (run_dir / "export" / "motion_model.pth").is_file() and (run_dir / "config.yaml").is_file()
    log = (run_dir / "train.log").read_text()
    assert "[rank: 0]" in log and "[rank: 1]" not in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe", "run"], "no second run folder"


class BatchCounter(pl.Callback):
    """Counts the training batches this run itself ran (not the ones a checkpoint carried)."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


def test_a_requeued_job_continues_its_checkpoint_in_train_stage(tmp_path, world_cache, monkeypatch):
    """What a SLURM requeue does to ``train_stage``: a job requeued by Lightning's SIGUSR1 handler
    finds ``hpc_ckpt_*.ckpt``, one requeued by SLURM itself (``SLURM_RESTART_COUNT`` > 0) finds
    ``checkpoints/last.ckpt``; both continue from that step instead of starting again."""
    import shutil

    from pdfgc.utils import instantiate_callbacks

    counters = []

    def counting(callbacks):
        out = instantiate_callbacks(callbacks)
        counters.append(BatchCounter())
        return [*out, counters[-1]]

    monkeypatch.setattr("pdfgc.training.instantiate_callbacks", counting)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    common = ["experiment=synthtalk/stage2", *tiny(world_cache, batch_size=2, callbacks="callbacks=model_checkpoint"),
              "callbacks.model_checkpoint.every_n_train_steps=1"]
    run = tmp_path / "run"
    train_stage(compose_train([*common, "trainer.max_steps=1"], run))
    assert counters[-1].batches == 1
    last = run / "checkpoints" / "last.ckpt"

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued by SLURM: the periodic last.ckpt
    train_stage(compose_train([*common, "trainer.max_steps=3"], run))
    assert counters[-1].batches == 2, "resumed at step 1: two more steps to 3"
    assert torch.load(last, weights_only=True, map_location="cpu")["global_step"] == 3

    monkeypatch.delenv("SLURM_RESTART_COUNT")  # requeued by Lightning's handler: its hpc_ckpt
    shutil.copyfile(last, run / "hpc_ckpt_1.ckpt")
    train_stage(compose_train([*common, "trainer.max_steps=4"], run))
    assert counters[-1].batches == 1, "resumed at step 3 from hpc_ckpt_1.ckpt"
