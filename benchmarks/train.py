"""Training throughput per stage: samples/s per device and model FLOP utilisation (MFU).

    python benchmarks/train.py                                   # stages 1-3, small nets, CPU
    python benchmarks/train.py --stages 3 --networks official --batch-size 2
    python benchmarks/train.py --device cuda --precision bf16-mixed --networks official --batch-size 16
    python benchmarks/train.py --stages 0 --batch-size 32 --channels-last --fused   # stage 0 = landmarks

Each stage is built from its SynthTalk experiment config (``configs/experiment/synthtalk/stageN``)
with ``--networks``; one real batch is drawn from a tiny SynthTalk world (rendered once into a
temporary cache) and fed again and again, so the figures measure the model step (G and D updates,
losses, optimiser), not data loading (``benchmarks/datamodule.py`` does that). Stage 3 runs with
the recipe's perceptual weight 5 (random VGG19: the same FLOPs) unless ``--no-perceptual``.
Adam is torch's default (foreach) and the layout NCHW unless ``--fused`` / ``--channels-last``
(the training defaults: ``optimizer.fused``, ``callbacks/memory_format.py``).

Per stage: one warm-up batch, one batch under ``torch.utils.flop_counter.FlopCounterMode`` (the
model FLOPs of a whole training step: forward, backward of every update, counted from the
matmul / convolution shapes), then ``--steps`` timed batches (median). MFU = FLOPs per step /
median step time / peak FLOP/s of the device at that precision. Peaks: this CPU's measured GEMM
rate (``--probe``, fp32 or bf16 2048^3 matmuls at the current threads) or a datasheet value for
known GPUs (dense, no sparsity), or ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_line, machine_name, sync  # noqa: E402

#: dense tensor-core peaks from the datasheets, TFLOP/s: (bf16/fp16, tf32)
GPU_PEAKS = {"H200": (989.0, 494.0), "H100 PCIe": (756.0, 378.0), "H100": (989.0, 494.0),
             "A100": (312.0, 156.0), "L4": (121.0, 60.0)}
HEADER = ("| machine | threads | load | stage | networks | precision | batch | step s | samples/s "
          "| GFLOP/step | achieved TFLOP/s | peak TFLOP/s | MFU |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def gemm_peak_tflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Best of ``repeats`` ``n x n`` matmuls in ``dtype``, TFLOP/s (this machine's reachable peak)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e12


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float, str]:
    """The peak used for MFU and where it came from."""
    if override:
        return override, "given"
    low = "bf16" in precision or "16" in precision
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, tf32) in GPU_PEAKS.items():
            if key in name:
                return (half if low else tf32), f"datasheet {key}"
        raise SystemExit(f"no peak known for {name}: pass --peak-tflops")
    dtype = torch.bfloat16 if low else torch.float32
    return gemm_peak_tflops(dtype, device), f"GEMM probe {str(dtype).split('.')[-1]}"


def compose(stage: int, networks: str, batch_size: int, cache: Path, perceptual: bool, fused: bool = False):
    """The stage's SynthTalk experiment config on a tiny world (2 + 1 speakers, 1 clip each);
    stage 0 is the landmark stage."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    root = Path(__file__).resolve().parents[1]
    experiment = "stage0_landmarks" if stage == 0 else f"stage{stage}"
    overrides = [f"experiment=synthtalk/{experiment}", f"networks={networks}",
                 f"data.batch_size={batch_size}", "data.num_speakers=2", "data.heldout_speakers=1",
                 "data.clips_per_speaker=1", "data.clip_seconds=1.0", f"data.cache_dir={cache}",
                 "data.num_workers=0", "data.render_workers=1", "data.val_samples=1",
                 "~callbacks", "~logger", "extras.print_config=false", f"paths.output_dir={cache}/out"]
    if stage == 3 and perceptual:
        overrides.append("model.loss_weights.perceptual=5.0")
    overrides.append(f"model.optimizer.fused={'true' if fused else 'null'}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


class StepTimer:
    """Lightning callback: batch 0 warms up, batch 1 counts FLOPs, later batches are timed."""

    def __init__(self, device: torch.device):
        import pytorch_lightning as pl  # noqa: F401  (callback protocol only)

        self.device = device
        self.times: list[float] = []
        self.flops = 0
        self._counter = None
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync(self.device)
        if batch_idx == 1:
            from torch.utils.flop_counter import FlopCounterMode

            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync(self.device)
        elapsed = time.perf_counter() - self._t0
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops = self._counter.get_total_flops()
            self._counter = None
        elif batch_idx >= 2:
            self.times.append(elapsed)


class _Repeat(torch.utils.data.Dataset):
    """``length`` times the same (already collated) batch."""

    def __init__(self, batch, length: int):
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.batch


def bench_stage(stage: int, args, cache: Path) -> dict:
    """Median step time, samples/s and FLOPs of one stage."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(stage, args.networks, args.batch_size, cache, not args.no_perceptual, args.fused)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    model = instantiate(cfg.model, networks=OmegaConf.to_container(cfg.networks, resolve=True),
                        _recursive_=False, _convert_="all")
    timer = type("Timer", (StepTimer, pl.Callback), {})(torch.device(args.device))
    callbacks = [timer]
    if args.channels_last:
        from callbacks.memory_format import ChannelsLast

        callbacks.insert(0, ChannelsLast())
    steps = args.steps + 2
    trainer = pl.Trainer(accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
                         precision=args.precision, max_epochs=1, limit_train_batches=steps,
                         max_steps=steps * 4,  # the learning-rate schedules need a length; never reached
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                         callbacks=callbacks)
    # the same collated batch every step (batch_size=None: the loader does not collate again)
    loader = torch.utils.data.DataLoader(_Repeat(batch, steps), batch_size=None)
    trainer.fit(model, train_dataloaders=loader)
    step_s = statistics.median(timer.times)
    return {"step_s": step_s, "samples_per_s": args.batch_size / step_s, "flops": timer.flops}


def precision_label(args) -> str:
    """The precision column: Lightning's precision plus the layout and optimiser switches."""
    return args.precision + (" +channels-last" if args.channels_last else "") + (" +fused Adam" if args.fused else "")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--networks", default="small", help="small | official")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed batches per stage (median)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--precision", default="32-true", help="Lightning precision: 32-true | bf16-mixed | 16-mixed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device peak")
    parser.add_argument("--no-perceptual", action="store_true", help="stage 3 without the VGG19 loss")
    parser.add_argument("--channels-last", action="store_true", help="train with callbacks.memory_format.ChannelsLast")
    parser.add_argument("--fused", action="store_true", help="Adam's fused kernel (model.optimizer.fused=true)")
    parser.add_argument("--header", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peak, source = peak_tflops(device, args.precision, args.peak_tflops)
    print(f"[peak {peak:.2f} TFLOP/s ({source})]", file=sys.stderr)
    if args.header:
        print(HEADER)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            r = bench_stage(stage, args, Path(tmp))
            achieved = r["flops"] / r["step_s"] / 1e12
            r.update(achieved_tflops=achieved, peak_tflops=peak, mfu=achieved / peak)
            results[stage] = r
            print(f"| {machine_name(device)} | {torch.get_num_threads()} | {load_line()} | {stage} "
                  f"| {args.networks} | {precision_label(args)} | {args.batch_size} | {r['step_s']:.2f} "
                  f"| {r['samples_per_s']:.2f} | {r['flops'] / 1e9:.1f} | {achieved:.3f} "
                  f"| {peak:.2f} ({source}) | {100 * r['mfu']:.1f} % |", flush=True)
    return results


if __name__ == "__main__":
    main()
