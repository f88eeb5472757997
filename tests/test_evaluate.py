"""evaluate.py end to end on a tiny SynthTalk world with a small random stage-3 export."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT
from pdfgc.checkpoints import export_official
from pdfgc.networks import build_networks, load_networks_config

WORLD = ["data.num_speakers=4", "data.heldout_speakers=2", "data.clips_per_speaker=1", "data.clip_seconds=1.0",
         "data.render_workers=1"]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    cfg = load_networks_config("small")
    export_official(build_networks(cfg), folder)
    (folder / "networks.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg))))
    return folder


def test_evaluate_writes_the_report_contract(export_dir, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "evaluate.py", f"checkpoint={export_dir}", *WORLD, f"data.cache_dir={tmp_path / 'cache'}",
           "oracle.steps=5", "oracle.batch_size=8", "oracle.speakers=10", "num_pairs=2", f"hydra.run.dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"report: {out / 'metrics.json'}"
    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["disentanglement"]
    assert d["codes"] == ["lip", "pose", "eye", "emotion"]
    assert d["factors"] == ["mouth", "pose", "gaze", "blink", "emotion"]
    assert len(d["matrix"]) == 4 and all(len(row) == 5 for row in d["matrix"])
    assert all(0.0 <= v <= 1.0 for row in d["matrix"] for v in row)
    for key in ("synthtalk/lip_sync_corr", "synthtalk/reconstruction/psnr", "synthtalk/control/pose/transfer",
                "synthtalk/control/emotion/leak"):
        assert key in metrics, key
    assert (out / "metrics.md").exists() and (out / "disentanglement.png").stat().st_size > 1000


def test_evaluate_rejects_an_incomplete_export_with_one_line(tmp_path):
    (tmp_path / "appearance_model.pth").write_bytes(b"")
    cmd = [sys.executable, "evaluate.py", f"checkpoint={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stage-3 export" in errors[0]


def _one_error_line(args: list[str], tmp_path) -> str:
    """``python evaluate.py *args``: exit 2, one ``error:`` line, no traceback; returns the line."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "PDFGC_DEBUG"}
    proc = subprocess.run([sys.executable, "evaluate.py", *args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def test_bad_command_lines_are_one_error_line(export_dir, tmp_path):
    import torch

    assert _one_error_line([], tmp_path).startswith("error: no checkpoint given: add checkpoint=")
    line = _one_error_line([f"checkpoint={export_dir}", "test_set=processed", "synthtalk_report=false"], tmp_path)
    assert line.startswith("error: test_set=processed needs test_set.root=")
    line = _one_error_line([f"checkpoint={export_dir}", "test_set=processed", f"test_set.root={tmp_path / 'none'}",
                            "synthtalk_report=false"], tmp_path)
    assert line == f"error: test set not found: {tmp_path / 'none'} (a processed-data folder: preprocess.py or the SynthTalk export)"
    assert _one_error_line([f"checkpoint={export_dir}", "device=tpu"], tmp_path) == \
        "error: unknown device 'tpu' (use auto, cpu or cuda)"
    if not torch.cuda.is_available():
        assert _one_error_line([f"checkpoint={export_dir}", "device=cuda"], tmp_path) == \
            "error: device cuda requested but CUDA is not available (use device=cpu)"
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    assert _one_error_line([f"checkpoint={garbage}"], tmp_path).startswith(f"error: cannot read checkpoint {garbage}")


def test_a_stage_checkpoint_evaluates_the_networks_of_its_export(tmp_path):
    """``checkpoint=<stage .ckpt>``: the networks are those the stage exports (weights equal)."""
    import torch

    from conftest import compose_train
    from pdfgc.evaluation.networks import REQUIRED, load_eval_networks
    from pdfgc.training import train_stage

    cfg = compose_train(["experiment=synthtalk/stage3", *WORLD, f"data.cache_dir={tmp_path / 'cache'}",
                         "data.batch_size=2", "data.val_samples=2", "callbacks=model_checkpoint",
                         "callbacks.model_checkpoint.every_n_train_steps=1", "trainer.max_steps=2",
                         "++trainer.val_check_interval=100", "trainer.log_every_n_steps=1"], tmp_path / "run")
    result = train_stage(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    export = result["export_dir"]
    assert ckpt.is_file() and all((tmp_path / "run" / "export" / name).is_file() for name in REQUIRED)
    from_ckpt, from_export = load_eval_networks(ckpt), load_eval_networks(export)
    assert from_ckpt.image_size == from_export.image_size == 64
    for name in ("appearance", "motion", "audio", "generator"):
        a, b = getattr(from_ckpt, name).state_dict(), getattr(from_export, name).state_dict()
        # the identity classifier (appearance fc.*) is never loaded from the four files (the
        # release's rule), so both sides hold a fresh one: not part of what is evaluated
        keys = [k for k in a if not (name == "appearance" and k.startswith("fc."))]
        assert a.keys() == b.keys() and len(keys) > 10 and all(torch.equal(a[k], b[k]) for k in keys), name
    assert not getattr(from_ckpt, "generator").training  # eval mode, as the export's


def test_the_official_release_layout_evaluates_with_networks_official(tmp_path):
    """The release's four files (no networks.yaml beside them): ``networks=official`` sizes them;
    the small default refuses them in one line naming a key and both shapes."""
    import torch

    from pdfgc.errors import PdfgcError
    from pdfgc.evaluation.networks import load_eval_networks

    torch.manual_seed(0)
    nets = build_networks(load_networks_config("official"))
    export_official(nets, tmp_path)
    assert not (tmp_path / "networks.yaml").exists()
    loaded = load_eval_networks(tmp_path, networks="official")
    assert loaded.image_size == 224
    for name in ("motion", "audio", "generator"):
        a, b = getattr(nets, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name
    with pytest.raises(PdfgcError, match="has shape"):
        load_eval_networks(tmp_path, networks="small")
