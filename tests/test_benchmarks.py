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
