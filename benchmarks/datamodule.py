"""Data loading speed: samples/s per worker for processed (VoxCeleb2-layout) data and SynthTalk.

``python benchmarks/datamodule.py [--size 224] [--clips 6] [--seconds 2] [--samples 48] [--workers 2]``

The processed data is a SynthTalk export at ``--size`` in a temporary folder: the same files
``preprocess.py`` writes for VoxCeleb2 (224 px JPEG frames, spectrograms, pose, eyes), so the
cost is real JPEG decoding + official crop + mel windows. Per worker = one process, one thread,
``dataset[i]`` in a loop; then a DataLoader with ``--workers`` processes and batch 8 for the
throughput a stage sees. Prints a Markdown table; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from datamodules.synthtalk import SynthTalkDataset
from datamodules.voxceleb2 import MODES, VoxCeleb2DataModule, worker_init
from pdfgc.synthtalk.export import export
from pdfgc.synthtalk.world import WorldConfig, load_or_render_pool


def per_worker(dataset, samples: int) -> float:
    """Samples/s of ``dataset[i]`` in this process (one thread), after one warm-up sample."""
    dataset[0]
    start = time.perf_counter()
    for i in range(1, samples + 1):
        dataset[i]
    return samples / (time.perf_counter() - start)


def loader_rate(dataset, workers: int, samples: int) -> float:
    """Samples/s through a DataLoader with ``workers`` processes (batch 8), after the first batch."""
    loader = DataLoader(dataset, batch_size=8, num_workers=workers, worker_init_fn=worker_init if workers else None)
    it = iter(loader)
    next(it)
    start, count = time.perf_counter(), 0
    for batch in it:
        count += len(batch["clip"])
        if count >= samples:
            break
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--clips", type=int, default=6, help="training speakers (one clip each)")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    world = WorldConfig(num_speakers=args.clips, heldout_speakers=1, clips_per_speaker=1,
                        clip_seconds=args.seconds, image_size=args.size)
    pool = load_or_render_pool(world, "train", None)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; {args.size} px, {args.samples} samples")
    print("| data | mode | frames decoded / sample | samples/s per worker | "
          f"samples/s, {args.workers} workers |")
    print("|---|---|---|---|---|")
    frames = {"reconstruction": 2, "fine_motion": 8, "emotion": 6}
    with tempfile.TemporaryDirectory() as root:
        export(root, world, "all", "processed", progress=False)
        for mode in MODES:
            dm = VoxCeleb2DataModule(root=root, mode=mode, image_size=args.size, num_workers=0, pin_memory=False)
            vox = dm.dataset("train", 10 * args.samples)
            synth = SynthTalkDataset(pool, mode, 10 * args.samples)
            for name, ds in (("processed (VoxCeleb2 layout)", vox), ("SynthTalk (in memory)", synth)):
                print(f"| {name} | {mode} | {frames[mode] if ds is vox else 0} | {per_worker(ds, args.samples):.1f} | "
                      f"{loader_rate(ds, args.workers, args.samples):.1f} |")


if __name__ == "__main__":
    main()
