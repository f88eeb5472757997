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
