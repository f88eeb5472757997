"""Evaluate a trained PD-FGC model: ``python evaluate.py checkpoint=<export dir or .ckpt>``.

Scores disentanglement, control transfer and lip-sync on SynthTalk's held-out speakers and
writes metrics.json / metrics.md / disentanglement.png (see README "Evaluation").
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from pdfgc.errors import cli_guard  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@cli_guard
def main(cfg: DictConfig):
    from pdfgc.evaluation.run import run

    return run(cfg)


if __name__ == "__main__":
    main()
