"""Preprocess real videos for training: ``python preprocess.py input_dir=VIDEOS output_dir=OUT``.

Input: a VoxCeleb2 tree (``dev|test/<speaker>/<video>/<clip>.mp4``), any folder of videos or
frame folders, or one video. Output: the processed-data layout (aligned 224 frames, audio,
mel spectrogram, landmarks, pose, eye state per clip) with ``OUT/index.jsonl``, which
``VoxCeleb2DataModule`` reads. Sharding over machines (``shard=i num_shards=n``), worker
processes, resume and the rejected-clip log are described in docs/preprocessing.md; every
option is commented in ``configs/preprocess.yaml``; the code is :mod:`pdfgc.preprocessing`.
Bad input prints one ``error: ...`` line and exits with code 2.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from pdfgc.errors import cli_guard  # noqa: E402


@hydra.main(version_base="1.3", config_path="configs", config_name="preprocess")
@cli_guard
def main(cfg: DictConfig):
    from pdfgc.preprocessing import run_from_config

    return run_from_config(cfg)


if __name__ == "__main__":
    main()
