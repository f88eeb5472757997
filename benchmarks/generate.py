"""Generation speed: frames per second of the PD-FGC networks, split into encoders vs generator.

Random weights (speed does not depend on the values), official sizes (224 px) by default::

    python benchmarks/generate.py                                  # CPU, fp32, batch 8
    python benchmarks/generate.py --device cuda --precision bf16-true --channels-last  # a GPU
    python benchmarks/generate.py --precision bf16-true --channels-last  # the CPU fast paths
    python benchmarks/generate.py --networks small --end-to-end 4  # + the whole pipeline on 4 s

Per output frame the pipeline runs E_aud once, E_mot once per *distinct* driver frame (up to 3
streams; codes are cached, so a looping or shared driver costs less) and G once; E_app runs once
per video. Each network is timed on ``--batches`` batches of ``--batch-size`` after one warm-up
batch; the table reports the median per frame. ``total fps`` assumes the worst case of three
distinct driver streams: 1 / (audio + 3 motion + generator). Prints one Markdown table row
(with ``--header``, the header first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_line, machine_name  # noqa: E402
from pdfgc.fast_paths import PRECISIONS, FastPaths, accelerate  # noqa: E402
from pdfgc.networks import build_networks  # noqa: E402
from pdfgc.networks.stylegan_layers import MODCONV_IMPLS  # noqa: E402
from pdfgc.networks.codes import STYLE_DIM  # noqa: E402

HEADER = ("| device | threads | load | networks | size | fast paths | batch | E_aud ms/frame | E_mot ms/frame "
          "| encoders ms/frame (aud + 3 mot) | G ms/frame | total fps | end-to-end fps |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms_per_frame(fn, batch: int, batches: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``batches`` runs after one warm-up, per frame, in ms."""
    fn()
    _sync(device)
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch * 1000.0


def time_networks(nets, device: torch.device, batch: int, batches: int, paths: FastPaths) -> dict:
    """ms per frame of E_aud, E_mot, G at ``batch`` (inputs random, weights as given), each
    network wrapped with the fast paths ``paths`` (as the pipeline does)."""
    size = int(nets.generator.size)
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    mel = torch.rand(batch, 1, 80, 20, generator=g).to(device)
    style = (torch.randn(batch, STYLE_DIM, generator=g) * 0.1).to(device)
    fast = {name: accelerate(getattr(nets, name), paths, device, copy_weights=True)
            for name in ("appearance", "audio", "motion", "generator")}
    with torch.inference_mode():
        _, id_map = fast["appearance"](img[:1])
    id_map = id_map.expand(batch, -1, -1, -1).contiguous()

    def run(fn):
        def call():
            with torch.inference_mode():
                fn()
        return call

    return {
        "audio": _median_ms_per_frame(run(lambda: fast["audio"](mel)), batch, batches, device),
        "motion": _median_ms_per_frame(run(lambda: fast["motion"](img)), batch, batches, device),
        "generator": _median_ms_per_frame(run(lambda: fast["generator"](style, id_map)), batch,
                                          batches, device),
    }


def end_to_end_fps(nets, device: str, seconds: float, batch: int, paths: FastPaths) -> float:
    """Frames per second of :meth:`GenerationPipeline.generate` (drivers, codes, G, mp4 writing)
    on ``seconds`` of synthetic audio with three distinct 25-frame driver videos (each driver
    frame is encoded once; the portrait once per video). The pipeline's networks are wrapped
    before the clock starts (with ``compile`` the first batches still compile inside)."""
    import cv2
    import soundfile as sf

    from pdfgc.generation import GenerationPipeline, GenerationRequest, ModelOptions
    from pdfgc.video import write_video

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sr = 16000
        t = np.arange(int(seconds * sr)) / sr
        sf.write(str(tmp / "a.wav"), (0.3 * np.sin(2 * np.pi * 200 * t) * rng.random(t.size)).astype(np.float32), sr)
        face = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
        cv2.imwrite(str(tmp / "face.png"), face)
        drivers = []
        for k in range(3):
            frames = np.stack([np.roll(face, 7 * (k + 1) * i, axis=1) for i in range(25)])
            drivers.append(str(write_video(tmp / f"d{k}.mp4", frames, fps=25)))
        options = ModelOptions(checkpoints="", device=device, channels_last=paths.channels_last,
                               compile=paths.compile, modconv_impl=paths.modconv_impl,
                               cuda_graphs=paths.cuda_graphs)
        pipe = GenerationPipeline(options, networks=nets)
        req = GenerationRequest(audio_path=str(tmp / "a.wav"), app_img_path=str(tmp / "face.png"),
                                output_path=str(tmp / "out.mp4"), pose_path=drivers[0],
                                exp_path=drivers[1], eye_path=drivers[2], all=True, batch_size=batch,
                                precision=paths.precision)
        pipe.networks(paths.precision)  # cast copies are built once per pipeline, not per video
        t0 = time.perf_counter()
        result = pipe.generate(req)
        return result.num_frames / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--channels-last", action="store_true", help="fast path: NHWC feature maps")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile each network")
    parser.add_argument("--modconv-impl", default="auto", choices=MODCONV_IMPLS)
    parser.add_argument("--cuda-graphs", action="store_true", help="fast path: CUDA graphs (CUDA only)")
    parser.add_argument("--networks", default="official", help="official | small | a yaml path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per network (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--end-to-end", type=float, default=0.0, metavar="SECONDS",
                        help="also time the whole pipeline on this much synthetic audio")
    parser.add_argument("--header", action="store_true", help="print the table header first")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    nets = build_networks(args.networks).to(device).eval()
    paths = FastPaths(precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                      modconv_impl=args.modconv_impl, cuda_graphs=args.cuda_graphs)
    ms = time_networks(nets, device, args.batch_size, args.batches, paths)
    encoders = ms["audio"] + 3 * ms["motion"]
    total_fps = 1000.0 / (encoders + ms["generator"])
    e2e = end_to_end_fps(nets, args.device, args.end_to_end, args.batch_size, paths) \
        if args.end_to_end > 0 else None

    where = machine_name(device)
    switches = " + ".join([args.precision] + [name for name, on in (
        ("channels_last", args.channels_last), ("compile", args.compile),
        (f"modconv {args.modconv_impl}", args.modconv_impl != "auto"),
        ("CUDA graphs", args.cuda_graphs)) if on])
    if args.header:
        print(HEADER)
    print(f"| {where} | {torch.get_num_threads()} | {load_line()} | {args.networks} | {int(nets.generator.size)} "
          f"| {switches} | {args.batch_size} | {ms['audio']:.1f} | {ms['motion']:.1f} "
          f"| {encoders:.1f} | {ms['generator']:.1f} | {total_fps:.2f} "
          f"| {'-' if e2e is None else f'{e2e:.2f}'} |")
    return {**ms, "encoders": encoders, "total_fps": total_fps, "end_to_end_fps": e2e}


if __name__ == "__main__":
    main()
