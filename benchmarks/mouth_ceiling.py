"""What a lip code that copies the *drawn* mouth scores on the evaluation's lip/mouth entry.

The evaluation's mouth factor is the speech opening (what the audio implies, ``pool.mouth``),
but the frame shows the drawn opening, ``speech * (1 + open_gain * I) + mouth_open * I``: the
clip's expression (class, intensity ``I``) scales the speech opening and adds a jaw drop. This
script scores made-up "lip codes" built from the ground truth with the evaluation's own probe
(:func:`pdfgc.metrics.disentanglement_matrix`, same split and seed) on the demo's held-out pool:

``python benchmarks/mouth_ceiling.py [data overrides...]`` (default: the demo's world, read from
the SynthTalk cache; it renders the pool first when the cache lacks it). Prints a Markdown
table; docs/training.md records the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pdfgc.demo import WORLD
from pdfgc.evaluation.synthtalk import pool_factors
from pdfgc.metrics import disentanglement_matrix
from pdfgc.synthtalk.motion import EMOTION_EFFECTS, effect

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def candidate_codes(pool, clips: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Per-frame "codes" ``{name: (C*F, P)}`` derived from the truth of ``clips``."""
    drawn = pool.mouth_drawn[clips][..., 0]                        # (C, F)
    speech = pool.mouth[clips][..., 0]
    effects = EMOTION_EFFECTS[pool.emotion[clips]][:, None, :] * pool.emotion_intensity[clips][..., None]
    jaw_drop = effect(effects, "mouth_open")                         # (C, F)
    one_hot = np.eye(8, dtype=np.float32)[pool.emotion[clips]]       # (C, 8)
    frames = drawn.shape[1]
    rng = np.random.default_rng(seed)
    flat = lambda a: a.reshape(len(clips) * frames, -1).astype(np.float32)  # noqa: E731
    return {
        "speech opening (upper bound)": flat(speech),
        "drawn opening": flat(drawn),
        "drawn opening + N(0, 0.05)": flat(drawn + rng.normal(0, 0.05, drawn.shape)),
        "drawn opening, clip mean removed": flat(drawn - drawn.mean(1, keepdims=True)),
        "drawn opening without the jaw drop": flat(np.clip(drawn - jaw_drop, 0, None)),
        "drawn opening + emotion one-hot": np.concatenate([flat(drawn), np.repeat(one_hot, frames, 0)], 1),
    }


def main(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=synthtalk/stage2", *WORLD, *overrides])
    pool = instantiate(cfg.data).pool("test")
    clips = list(range(len(pool)))
    factors = pool_factors(pool, clips)
    groups = np.repeat([pool.name(c) for c in clips], pool.num_frames)
    codes = {k: torch.from_numpy(v) for k, v in candidate_codes(pool, clips).items()}
    result = disentanglement_matrix(codes, {"mouth": factors["mouth"], "emotion": factors["emotion"]}, groups)
    print(f"held-out pool: {len(clips)} clips x {pool.num_frames} frames; probe = the evaluation's (seed 0)")
    print("| code | R² vs speech opening | emotion (chance-corrected) |\n|---|---:|---:|")
    for i, name in enumerate(result.codes):
        print(f"| {name} | {result.matrix[i][0]:.3f} | {result.matrix[i][1]:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
