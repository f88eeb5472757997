"""The torchmetrics accumulators of pdfgc.metrics are DDP-safe: two gloo processes, each updating
with half of the data, compute what one process computes from all of it (states reduced with
``sum``, the disentanglement probes' samples gathered with ``cat``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2
N_CLIPS = 6  # 3 per rank


def make_data() -> dict:
    """Per-clip inputs of every metric (deterministic: each rank makes them all, keeps its half)."""
    from pdfgc.metrics.lse import sync_score

    gen = torch.Generator().manual_seed(11)
    rng = np.random.default_rng(11)
    clips = []
    for i in range(N_CLIPS):
        stream = torch.randn(70, 8, generator=gen)
        delay = i % 3 - 1
        ear = np.full((30, 2), 0.32) + rng.normal(0, 0.01, (30, 2))
        ear[5 + i:8 + i] = 0.1  # one blink, at a different time per clip
        ear_ref = ear.copy()
        if i % 2:
            ear_ref[20:23] = 0.1  # a blink the generated clip misses
        iris = rng.normal(0.5, 0.05, (30, 2, 2))
        iris[rng.random(30) < 0.2] = np.nan  # frames without a face
        clips.append({
            "sync": sync_score(stream[10:60], stream[10 - delay:60 - delay]),
            "reference": rng.normal(size=128), "descriptors": rng.normal(size=(9, 128)),
            "iris": iris, "iris_ref": rng.normal(0.5, 0.05, (30, 2, 2)),
            "ear": ear, "ear_ref": ear_ref,
            "pose": rng.normal(0, 0.2, (30, 6)), "pose_ref": rng.normal(0, 0.2, (30, 6)),
        })
    # disentanglement probes: 8 clips x 10 frames of codes that carry the factors (plus noise)
    frames = 80
    factors = {"pose": torch.randn(frames, 6, generator=gen), "emotion": torch.randint(0, 4, (frames,), generator=gen)}
    codes = {"pose": factors["pose"] @ torch.randn(6, 6, generator=gen) + 0.1 * torch.randn(frames, 6, generator=gen),
             "emotion": torch.nn.functional.one_hot(factors["emotion"], 4).float() + 0.1 * torch.randn(frames, 4, generator=gen)}
    groups = torch.arange(frames) // 10
    return {"clips": clips, "codes": codes, "factors": factors, "groups": groups}


def update_all(clips: list[dict], codes, factors, groups) -> dict:
    """Every metric updated with ``clips`` (and the probe samples); ``compute()`` as plain numbers."""
    from pdfgc.metrics import DisentanglementMetric
    from pdfgc.metrics.face_quality import CosineIdentitySimilarity
    from pdfgc.metrics.gaze_blink import BlinkF1, GazeError
    from pdfgc.metrics.landmark_metrics import HeadPoseError
    from pdfgc.metrics.lse import LipSyncError

    lse, csim, gaze, blink, pose = LipSyncError(), CosineIdentitySimilarity(), GazeError(), BlinkF1(), HeadPoseError()
    probes = DisentanglementMetric(["pose", "emotion"], ["pose", "emotion"], seed=0)
    for c in clips:
        lse.update(c["sync"])
        csim.update(c["reference"], c["descriptors"])
        gaze.update(c["iris"], c["iris_ref"])
        blink.update(c["ear"], c["ear_ref"])
        pose.update(c["pose"], c["pose_ref"])
    probes.update(codes, factors, groups)
    matrix = probes.compute()
    return {**{f"lse/{k}": float(v) for k, v in lse.compute().items()}, "csim": float(csim.compute()),
            "gaze": float(gaze.compute()), "blink_f1": float(blink.compute()),
            **{f"pose/{k}": float(v) for k, v in pose.compute().items()},
            "matrix": np.asarray(matrix.matrix, np.float64).tolist(),
            "local_count": int(lse.count)}  # the rank's own state: compute() syncs, then restores it


def _rank(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        data = make_data()
        half = N_CLIPS // WORLD_SIZE
        n = len(data["groups"]) // WORLD_SIZE
        mine = slice(rank * n, (rank + 1) * n)  # the probe samples: rank 0 the first half
        result = update_all(data["clips"][rank * half:(rank + 1) * half],
                            {k: v[mine] for k, v in data["codes"].items()},
                            {k: v[mine] for k, v in data["factors"].items()}, data["groups"][mine])
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_compute_what_one_process_computes(tmp_path):
    from pdfgc.app.browser import free_port

    data = make_data()
    single = update_all(data["clips"], data["codes"], data["factors"], data["groups"])
    assert single["local_count"] == N_CLIPS and 0 < single["blink_f1"] < 1 and single["lse/abs_offset"] > 0
    mp.start_processes(_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, start_method="fork")
    for rank in range(WORLD_SIZE):
        synced = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert synced["local_count"] == N_CLIPS // WORLD_SIZE, "each rank updated with its half"
        for key, value in single.items():
            if key == "local_count":
                continue
            if key == "matrix":
                np.testing.assert_allclose(synced[key], value, rtol=1e-6, atol=1e-9)
            else:
                assert synced[key] == pytest.approx(value, rel=1e-9), key
    # and it is not the half a rank saw alone
    half = update_all(data["clips"][:N_CLIPS // 2], {k: v[:40] for k, v in data["codes"].items()},
                      {k: v[:40] for k, v in data["factors"].items()}, data["groups"][:40])
    assert half["csim"] != pytest.approx(single["csim"]) and half["lse/lse_d"] != pytest.approx(single["lse/lse_d"])
