"""Built-in examples of the web app: SynthTalk inputs and a checkpoint, made on first start.

Nothing here is committed or downloaded: the portrait, speech and driver videos are rendered by
SynthTalk (the same held-out inputs ``make demo`` generates from), and the checkpoint is the
stage-3 export of the newest ``make demo`` run when there is one, otherwise the small networks
with random weights (the page then shows a notice that the output is untrained).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pdfgc.checkpoints import OFFICIAL_FILES
# The examples are held-out speakers of the demo world (ids from pdfgc.demo.TRAIN_SPEAKERS on).
from pdfgc.demo import TRAIN_SPEAKERS as DEMO_TRAIN_SPEAKERS

#: Bump when the example inputs change, so that an old cache is rebuilt instead of reused.
EXAMPLES_VERSION = 2
#: Seed of the random-weights checkpoint (fixed: the same "untrained" output on every machine).
RANDOM_WEIGHTS_SEED = 0


@dataclass(frozen=True)
class Examples:
    """Paths of the built-in example inputs (all inside the cache folder)."""

    portrait: Path  # png, 64 x 64 SynthTalk face
    audio: Path  # 16 kHz mono wav, 4 s of SynthTalk speech
    pose: Path  # mp4 driver videos (25 fps, 4 s), one other held-out speaker each
    expression: Path
    eye: Path


def default_cache_dir() -> Path:
    """``$PDFGC_CACHE_DIR/app`` or ``$XDG_CACHE_HOME/pdfgc/app`` (default ``~/.cache/pdfgc/app``)."""
    if os.environ.get("PDFGC_CACHE_DIR"):
        return Path(os.environ["PDFGC_CACHE_DIR"]) / "app"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pdfgc" / "app"


def has_official_files(folder: Path) -> bool:
    """True when ``folder`` holds the four official files (a generation-ready checkpoint)."""
    return all((folder / name).is_file() for name in OFFICIAL_FILES.values())


def find_demo_checkpoint(logs_dir: Optional[Path] = None) -> Optional[Path]:
    """The newest generation-ready export of a ``make demo`` run, or None.

    ``make demo`` trains under ``logs/demo/<time>/train/<stage>/export``; only the stage-3 export
    holds ``generator_model.pth`` (earlier stages export ``generator0_model.pth``), so the
    four-file test picks it.
    """
    if logs_dir is None:
        from pdfgc.demo import REPO_ROOT

        logs_dir = REPO_ROOT / "logs" / "demo"
    exports = [p for p in Path(logs_dir).glob("*/train/*/export") if has_official_files(p)]
    return max(exports, key=lambda p: p.stat().st_mtime, default=None)


def _build_once(target: Path, build) -> Path:
    """Build ``target`` (a folder) with ``build(tmp_folder)`` unless it exists; atomic rename, so
    an interrupted build never leaves a half-filled cache folder behind."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def random_weights_checkpoint(cache_dir: Path) -> Path:
    """The small networks with seeded random weights as the official four files + networks.yaml."""

    def build(folder: Path) -> None:
        import torch
        from omegaconf import OmegaConf

        from pdfgc.checkpoints import export_official
        from pdfgc.networks import build_networks, load_networks_config

        with torch.random.fork_rng():
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            nets = build_networks("small")
        export_official(nets, folder)
        OmegaConf.save(load_networks_config("small"), folder / "networks.yaml")

    return _build_once(Path(cache_dir) / "random-small", build)


def example_inputs(cache_dir: Path) -> Examples:
    """Render (first call) or reuse the example portrait, speech and three driver videos."""

    def build(folder: Path) -> None:
        from pdfgc.demo import make_generation_inputs

        made = make_generation_inputs(folder, num_speakers=DEMO_TRAIN_SPEAKERS)
        # flat, self-explaining names (the demo nests the drivers by speaker)
        for key, name in (("pose_path", "pose.mp4"), ("exp_path", "expression.mp4"), ("eye_path", "eye.mp4")):
            os.replace(made[key], folder / name)
        for sub in ("pose", "exp", "eye"):
            shutil.rmtree(folder / sub, ignore_errors=True)

    folder = _build_once(Path(cache_dir) / f"examples-v{EXAMPLES_VERSION}", build)
    return Examples(portrait=folder / "portrait.png", audio=folder / "speech.wav",
                    pose=folder / "pose.mp4", expression=folder / "expression.mp4", eye=folder / "eye.mp4")
