"""Fast paths side by side: ms/frame of one network and its error against the float32 reference.

    python benchmarks/fast_paths.py                         # official 224 px G, CPU, batch 4
    python benchmarks/fast_paths.py --networks small --compile
    python benchmarks/fast_paths.py --device cuda --batch-size 32 --compile --cuda-graphs

Every variant runs the same inputs with the same weights; the variants are interleaved (one batch
each, round after round) and the median over ``--repeats`` rounds is reported, so that a shared,
noisy machine slows all of them alike. ``max |diff|`` is the largest absolute difference of the
image (in [-1, 1]) from the float32 ``grouped`` reference (the release's implementation); for an
encoder (``--network motion``) of its first output from float32. Prints a
Markdown table; ``--header`` adds the header.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_line, machine_name, sync  # noqa: E402
from pdfgc.fast_paths import FastPaths, accelerate  # noqa: E402
from pdfgc.networks import build_networks  # noqa: E402

HEADER = ("| machine | threads | load | network | batch | variant | ms/frame | frames/s | speed-up "
          "| max abs diff |\n|---|---|---|---|---|---|---|---|---|---|")


def variants(device: torch.device, network: str, with_compile: bool, with_graphs: bool
             ) -> dict[str, FastPaths]:
    """The fast-path combinations to compare, by name (reference first). Variants that name no
    modulated-conv implementation use ``auto`` (grouped on CUDA, scaled_input on CPU)."""
    low = "bf16" if device.type == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    if network == "generator":
        out = {"fp32 grouped (release)": FastPaths(modconv_impl="grouped"),
               "fp32 scaled_input": FastPaths(modconv_impl="scaled_input"),
               "fp32 scaled_input + channels_last": FastPaths(modconv_impl="scaled_input",
                                                              channels_last=True)}
    else:
        out = {"fp32": FastPaths(), "fp32 + channels_last": FastPaths(channels_last=True)}
    out.update({
        f"{low} autocast": FastPaths(precision=low),
        f"{low} autocast + channels_last": FastPaths(precision=low, channels_last=True),
        f"{low}-true": FastPaths(precision=f"{low}-true"),
        f"{low}-true + channels_last": FastPaths(precision=f"{low}-true", channels_last=True),
    })
    if network == "generator" and device.type == "cuda":
        for impl in ("grouped", "scaled_input"):
            out[f"{low}-true + channels_last + {impl}"] = FastPaths(
                precision=f"{low}-true", channels_last=True, modconv_impl=impl)
    if with_compile:
        out[f"{low}-true + channels_last + compile"] = FastPaths(
            precision=f"{low}-true", channels_last=True, compile=True)
        out["fp32 + channels_last + compile"] = FastPaths(channels_last=True, compile=True)
    if with_graphs and device.type == "cuda":
        out[f"{low}-true + channels_last + CUDA graphs"] = FastPaths(
            precision=f"{low}-true", channels_last=True, cuda_graphs=True)
    return out


def example_inputs(nets, network: str, batch: int, device: torch.device) -> tuple:
    """Random inputs of ``network`` at ``batch`` (same for every variant)."""
    gen = torch.Generator().manual_seed(1)
    g = nets.generator
    if network == "generator":
        return ((torch.randn(batch, g.style_dim, generator=gen) * 0.5).to(device),
                torch.randn(batch, g.input_channels, g.init_size, g.init_size, generator=gen).to(device))
    if network == "audio":
        return (torch.rand(batch, 1, 80, 20, generator=gen).to(device),)
    return ((torch.rand(batch, 3, g.size, g.size, generator=gen) * 2 - 1).to(device),)


def _first(out) -> torch.Tensor:
    """The image, or the first output of an encoder (for the error column)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--networks", default="official", help="official | small | a yaml path")
    parser.add_argument("--network", default="generator", choices=("generator", "motion", "audio", "appearance"))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants")
    parser.add_argument("--cuda-graphs", action="store_true", help="add a CUDA-graph variant (CUDA)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of variant names")
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    nets = build_networks(args.networks)
    base = getattr(nets, args.network).eval()
    b = args.batch_size
    inputs = example_inputs(nets, args.network, b, device)

    chosen = variants(device, args.network, args.compile, args.cuda_graphs)
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        chosen = {n: v for i, (n, v) in enumerate(chosen.items()) if i == 0 or any(k in n for k in keys)}
    runners, outputs = {}, {}
    for name, fp in chosen.items():
        g = accelerate(copy.deepcopy(base), fp, device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            outputs[name] = _first(g(*inputs)).float().cpu()  # warm-up (and compilation)
        sync(device)
        print(f"[{name}: first call {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
        runners[name] = g
    times = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, g in runners.items():
            t0 = time.perf_counter()
            with torch.inference_mode():
                g(*inputs)
            sync(device)
            times[name].append(time.perf_counter() - t0)

    ref_name = next(iter(runners))
    ref_ms = statistics.median(times[ref_name]) / b * 1000
    if args.header:
        print(HEADER)
    results = {}
    for name in runners:
        ms = statistics.median(times[name]) / b * 1000
        diff = (outputs[name] - outputs[ref_name]).abs().max().item()
        results[name] = {"ms_per_frame": ms, "speedup": ref_ms / ms, "max_abs_diff": diff}
        print(f"| {machine_name(device)} | {torch.get_num_threads()} | {load_line()} | {args.networks} {args.network} "
              f"| {b} | {name} | {ms:.1f} | {1000 / ms:.2f} | {ref_ms / ms:.2f}x | {diff:.1e} |")
    return results


if __name__ == "__main__":
    main()
