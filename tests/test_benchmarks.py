"""The training benchmark runs every stage's real experiment config (a broken config or a recipe
change such as a learning-rate schedule must not leave `make bench` failing unnoticed)."""

from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO_ROOT


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stage", [0, 2])
def test_training_benchmark_times_a_stage(stage, capsys):
    results = load_benchmark("train").main(["--stages", str(stage), "--batch-size", "2", "--steps", "1",
                                            "--channels-last", "--fused"])
    r = results[stage]
    assert r["step_s"] > 0 and r["samples_per_s"] == pytest.approx(2 / r["step_s"])
    assert r["flops"] > 1e6  # the step's FLOPs were counted
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"| {stage} | small | 32-true +channels-last +fused Adam | 2 |" in row


def test_mouth_ceiling_codes_undo_exactly_what_the_renderer_adds(tmp_path):
    """benchmarks/mouth_ceiling.py: its "without the jaw drop" code is the speech opening scaled
    by the expression's open_gain (what compose_mouth draws, less mouth_open), its demeaned code
    has zero mean per clip, and the upper bound is the evaluation's mouth factor itself."""
    import numpy as np
    from hydra.utils import instantiate

    from conftest import compose_train
    from pdfgc.evaluation.synthtalk import pool_factors
    from pdfgc.synthtalk.motion import EMOTION_EFFECTS, effect

    cfg = compose_train(["experiment=synthtalk/stage2", "data.num_speakers=2", "data.heldout_speakers=3",
                         "data.clips_per_speaker=2", "data.clip_seconds=1.0", f"data.cache_dir={tmp_path}",
                         "data.render_workers=1"], tmp_path / "run")
    pool = instantiate(cfg.data).pool("test")
    clips = list(range(len(pool)))
    codes = load_benchmark("mouth_ceiling").candidate_codes(pool, clips)
    frames = pool.num_frames
    assert np.allclose(codes["speech opening (upper bound)"], pool_factors(pool, clips)["mouth"])
    assert np.allclose(codes["drawn opening, clip mean removed"].reshape(len(clips), frames).mean(1), 0, atol=1e-6)
    effects = EMOTION_EFFECTS[pool.emotion][:, None, :] * pool.emotion_intensity[..., None]
    scaled = pool.mouth[..., 0] * (1 + effect(effects, "open_gain"))
    drawn = pool.mouth_drawn[..., 0]
    unclipped = (drawn > 0) & (drawn < 1.3)
    without_jaw = codes["drawn opening without the jaw drop"].reshape(len(clips), frames)
    assert unclipped.mean() > 0.5
    assert np.allclose(without_jaw[unclipped], np.clip(scaled, 0, None)[unclipped], atol=1e-5)
    assert codes["drawn opening + emotion one-hot"].shape == (len(clips) * frames, 9)
