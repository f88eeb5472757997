"""Train a PD-FGC stage (or a chain of stages): ``python train.py experiment=synthtalk/stage1``.

See README "Training" and docs/training.md. Resume an interrupted run with
``hydra.run.dir=<its folder> ckpt_path=last``; start a stage from another's weights with
``init_from=<export dir>``.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from pdfgc.errors import cli_guard  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@cli_guard
def main(cfg: DictConfig):
    from pdfgc.training import optimized_metric_value, run

    result = run(cfg)
    # Sweeps (hparams_search=...) optimise one number; a plain run returns its result.
    value = optimized_metric_value(cfg, result)
    return result if value is None else value


if __name__ == "__main__":
    main()
