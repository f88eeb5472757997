"""Generate a talking head: ``python generate.py checkpoints=DIR audio_path=A app_img_path=I ...``.

Controls as in the release: ``mouth blink gaze emo headpose all`` (``all=true`` sets the five);
drivers ``pose_path exp_path eye_path`` (frame folders or videos). Every option is documented in
``configs/generate.yaml``; the pipeline is :mod:`pdfgc.generation`. A progress bar goes to
stderr; the last line printed on stdout is the path of the mp4. Bad input prints one
``error: ...`` line and exits with code 2.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from pdfgc.errors import cli_guard  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="generate")
@cli_guard
def main(cfg: DictConfig):
    from pdfgc.generation import run_from_config

    return run_from_config(cfg)


if __name__ == "__main__":
    main()
