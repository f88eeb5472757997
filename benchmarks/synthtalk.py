"""SynthTalk rendering speed: frames/s per core at 64 and 224 px (median of repeats).

``python benchmarks/synthtalk.py [--sizes 64 224] [--frames 50] [--repeats 5]`` prints a
Markdown table; record the figures with the machine in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from pdfgc.synthtalk import render as rd
from pdfgc.synthtalk.clips import draw_factors, render_clip
from pdfgc.synthtalk.world import ClipPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core: the renderer is numpy, one process per core in practice
    f = draw_factors(0, 0, 0, args.frames)
    print(f"machine: {platform.processor() or platform.machine()}, 1 core")
    print("| size | render: frames/s per core (median) | ms/frame | whole clip (factors, speech, mel, render, crop): frames/s |")
    print("|---|---|---|---|")
    for size in args.sizes:
        times, whole = [], []
        for rep in range(args.repeats):
            t = time.perf_counter()
            rd.render(f["identity"], f["pose"], f["gaze"], f["blink"], f["mouth_drawn"], f["effects"], size)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()  # what building a clip pool costs per frame
            clip = render_clip(0, rep, 0, args.frames, size)
            ClipPool.from_clips([clip], size)
            whole.append(time.perf_counter() - t)
        med = statistics.median(times)
        print(f"| {size} | {args.frames / med:.1f} | {1000 * med / args.frames:.2f} | "
              f"{args.frames / statistics.median(whole):.1f} |")


if __name__ == "__main__":
    main()
