"""``make demo``: the whole method on the embedded SynthTalk world, on this CPU.

1. ``train.py experiment=synthtalk/all``: stages 1 -> 2 -> 3, each initialised from the last;
2. ``evaluate.py`` on held-out speakers: disentanglement matrix, control transfer, lip-sync;
3. ``generate.py`` for one held-out portrait, its speech and three other held-out drivers.

Prints, as its last lines, ``report: <metrics.json>`` and ``video: <mp4>``. Every step is the
same command a user would type (shown as it runs); outputs go to ``logs/demo/<time>/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# The world and budgets of the demo (README "The demo"): small enough for 20 minutes on 2 CPU
# cores, large enough that held-out speakers are really unseen (600 train, 24 test). Fewer
# training speakers let the encoders memorise clips instead of reading the factors.
TRAIN_SPEAKERS = 600
WORLD = [f"data.num_speakers={TRAIN_SPEAKERS}", "data.heldout_speakers=24", "data.clips_per_speaker=4", "data.clip_seconds=1.0"]


def run_step(name: str, args: list[str], log_dir: Path) -> list[str]:
    """Run ``python <args>`` from the repo root, stream its output, return its stdout lines."""
    cmd = [sys.executable, *args]
    print(f"\n== {name}: {' '.join(args)}", flush=True)
    start = time.time()
    log_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    with subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=None, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    (log_dir / f"{name}.stdout.log").write_text("\n".join(lines) + "\n")
    if proc.returncode != 0:
        print(f"error: demo step '{name}' failed (exit {proc.returncode}); see the output above", file=sys.stderr)
        sys.exit(proc.returncode or 1)
    print(f"== {name} done in {time.time() - start:.0f} s", flush=True)
    return lines


def last_value(lines: list[str], prefix: str) -> str:
    values = [line[len(prefix):].strip() for line in lines if line.startswith(prefix)]
    if not values:
        print(f"error: expected a line starting with {prefix!r}", file=sys.stderr)
        sys.exit(1)
    return values[-1]


def make_generation_inputs(folder: Path, num_speakers: int) -> dict[str, str]:
    """A held-out portrait + speech, and held-out pose / expression / eye driver videos."""
    import cv2

    from pdfgc.synthtalk.clips import render_clip
    from pdfgc.synthtalk.export import write_mp4_clip, write_wav

    folder.mkdir(parents=True, exist_ok=True)
    first_test = num_speakers  # held-out speaker ids follow the training ones
    source = render_clip(0, first_test, 0, 100, 64)
    portrait = folder / "portrait.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(source.frames[0], cv2.COLOR_RGB2BGR))
    write_wav(folder / "speech.wav", source.waveform)
    drivers = {}
    for role, offset in (("pose_path", 1), ("exp_path", 2), ("eye_path", 3)):
        clip = render_clip(0, first_test + offset, 0, 100, 64)
        drivers[role] = str(write_mp4_clip(folder / role.removesuffix("_path"), clip))
    return {"app_img_path": str(portrait), "audio_path": str(folder / "speech.wav"), **drivers}


def main() -> None:
    out = REPO_ROOT / "logs" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    start = time.time()
    train = run_step("train", ["train.py", "experiment=synthtalk/all", *WORLD, f"hydra.run.dir={out / 'train'}",
                               "extras.print_config=false"], out)
    export_dir = last_value(train, "final export:")
    evaluate = run_step("evaluate", ["evaluate.py", f"checkpoint={export_dir}", *WORLD,
                                     f"hydra.run.dir={out / 'evaluate'}"], out)
    report = last_value(evaluate, "report:")
    inputs = make_generation_inputs(out / "inputs", num_speakers=TRAIN_SPEAKERS)
    video = out / "demo.mp4"
    run_step("generate", ["generate.py", f"checkpoints={export_dir}", *(f"{k}={v}" for k, v in inputs.items()),
                          "all=true", "strip=true", f"output_path={video}", f"hydra.run.dir={out / 'generate'}"], out)
    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min")
    print(f"report: {report}")
    print(f"video: {video}")


if __name__ == "__main__":
    main()
