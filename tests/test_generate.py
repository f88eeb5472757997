"""Generation pipeline (pdfgc.generation, generate.py): offline, CPU, small random networks.

The networks are the SMALL config with random weights, exported as the four official files plus
a ``networks.yaml`` sidecar, so every path a real checkpoint takes is exercised.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from pdfgc.audio import (frame_windows, load_audio, mel_spectrogram, mel_windows,
                         num_video_frames)
from pdfgc.errors import PdfgcError
from pdfgc.generation import (CONTROLS, GenerationPipeline, GenerationRequest, ModelOptions,
                              MouthSmoothing, apply_controls, config_from_mapping, driver_indices,
                              generate, postprocess_codes, smooth_gaussian, smooth_mean)

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
ONSET_S = 0.5  # the test speech is silent before this
AUDIO_S = 1.3


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Checkpoint folder, portrait, two drivers (frame folder, mp4) and a wav, in one tmp dir."""
    from skimage import data

    from pdfgc.checkpoints import export_official
    from pdfgc.networks import build_networks, load_networks_config
    from pdfgc.video import write_video

    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    nets = build_networks("small")
    with torch.no_grad():
        # Fresh random weights barely react to the motion codes (image changes of ~1e-5): give
        # the motion part of every style projection and the RGB outputs more gain, so that the
        # comparisons below see real motion (changes of ~1e-2) against their 2e-5 tolerance.
        for name, param in nets.generator.named_parameters():
            if name.endswith("modulation.weight"):
                param[:, 2048:] *= 100.0
            if "to_rgb" in name and name.endswith("conv.weight"):
                param *= 10.0
    ckpt = root / "ckpt"
    export_official(nets, ckpt)
    OmegaConf.save(load_networks_config("small"), ckpt / "networks.yaml")

    img = data.astronaut()  # (512, 512, 3) RGB
    face = root / "face.png"
    cv2.imwrite(str(face), cv2.cvtColor(cv2.resize(img, (160, 160)), cv2.COLOR_RGB2BGR))
    frames_dir = root / "drv_frames"  # 11 frames: each differs (rolled)
    frames_dir.mkdir()
    for k in range(11):
        frame = cv2.resize(np.roll(img, 24 * k, axis=1), (96, 96))
        cv2.imwrite(str(frames_dir / f"{k:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    clip = np.stack([cv2.resize(np.roll(img, -30 * k, axis=0), (96, 96)) for k in range(7)])
    drv_mp4 = write_video(root / "drv.mp4", clip, fps=25)  # 7 frames: loops several times

    t = np.arange(int(AUDIO_S * SR)) / SR
    speech = np.where(t >= ONSET_S, 0.3 * np.sin(2 * np.pi * 220 * t) * (1.2 + np.sin(2 * np.pi * 3 * t)), 0.0)
    wav = root / "speech.wav"
    sf.write(str(wav), speech.astype(np.float32), SR, subtype="PCM_16")

    pipe = GenerationPipeline(ModelOptions(checkpoints=str(ckpt), networks="official", device="cpu"))
    return dict(root=root, ckpt=ckpt, face=face, frames=frames_dir, mp4=drv_mp4, wav=wav, pipe=pipe)


def _request(assets, **kw) -> GenerationRequest:
    base = dict(audio_path=str(assets["wav"]), app_img_path=str(assets["face"]),
                output_path=str(assets["root"] / "unused.mp4"), pose_path=str(assets["frames"]),
                exp_path=str(assets["mp4"]), eye_path=str(assets["frames"]), all=True)
    base.update(kw)
    return GenerationRequest(**base)


def _images(pipe, req) -> torch.Tensor:
    return torch.cat(list(pipe.iter_images(req)))


# ---------------------------------------------------------------------------------------------
# code post-processing: the release's rules (lib/inferencer.py), restated with explicit loops
# ---------------------------------------------------------------------------------------------


def _release_postprocess(mouth, emotion, eye, pose, flags):
    """The release's heuristics, written the way its code does them (zero-padded conv1d)."""
    mouth = mouth * 1.5
    k = np.array([np.exp(-x ** 2 / 2.0) for x in (-1, 0, 1)])
    k = torch.from_numpy(k / k.sum()).float()
    c = mouth.shape[1]
    mouth = F.conv1d(mouth.t()[None], k.view(1, 1, 3).repeat(c, 1, 1), padding=1, groups=c)[0].t()
    n = pose.shape[0]
    smooth = []
    for i in range(n):
        if i == 0:
            smooth.append(pose[i:i + 2].mean(0))
        elif i == n - 1:
            smooth.append(pose[i - 1:].mean(0))
        else:
            smooth.append(pose[i - 1:i + 2].mean(0))
    pose = torch.stack(smooth)
    eye, emotion = eye * 1.2, emotion * 1.2
    if not flags["mouth"]:
        mouth = torch.zeros_like(mouth)
    if not flags["headpose"]:
        pose = torch.zeros_like(pose)
    if not flags["blink"]:
        eye = eye * torch.tensor([[0, 0, 1, 1, 0, 0]])
    if not flags["gaze"]:
        eye = eye * torch.tensor([[1, 1, 0, 0, 1, 1]])
    if not flags["emo"]:
        emotion = torch.zeros_like(emotion)
    return mouth, emotion, eye, pose


@pytest.mark.parametrize("on", [(), ("mouth",), ("blink",), ("gaze",), ("emo", "headpose"),
                                ("blink", "gaze"), CONTROLS])
def test_postprocess_matches_release(on):
    g = torch.Generator().manual_seed(len(on))
    n = 13
    raw = (torch.randn(n, 500, generator=g), torch.randn(n, 30, generator=g),
           torch.randn(n, 6, generator=g), torch.randn(n, 6, generator=g))
    flags = {c: c in on for c in CONTROLS}
    req = GenerationRequest(audio_path="", app_img_path="", output_path="",
                            mouth_smoothing=MouthSmoothing(padding="zeros"), **flags)
    ours = postprocess_codes(*raw, req)
    ref = _release_postprocess(*raw, flags)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_no_controls_zero_every_motion_code_and_all_sets_five():
    raw = [torch.randn(5, d) for d in (500, 30, 6, 6)]
    req = GenerationRequest(audio_path="", app_img_path="", output_path="")
    assert not any(req.controls().values())
    for code in postprocess_codes(*raw, req):
        assert torch.count_nonzero(code) == 0
    req_all = dataclasses.replace(req, all=True)
    assert all(req_all.controls().values())
    out = apply_controls(*raw, req_all.controls())
    for a, b in zip(out, raw):
        assert torch.equal(a, b)


def test_eye_masks_split_gaze_and_blink():
    eye = torch.arange(1, 7, dtype=torch.float32)[None]
    z = [torch.zeros(1, d) for d in (500, 30)]
    _, _, gaze_only, _ = apply_controls(*z, eye, torch.zeros(1, 6), {"gaze": True})
    _, _, blink_only, _ = apply_controls(*z, eye, torch.zeros(1, 6), {"blink": True})
    assert gaze_only.tolist() == [[0, 0, 3, 4, 0, 0]]
    assert blink_only.tolist() == [[1, 2, 0, 0, 5, 6]]


def test_smoothing_padding_and_kernels():
    ones = torch.ones(6, 3)
    zeros_pad = smooth_gaussian(ones, 3, 1.0, "zeros")
    assert zeros_pad[0, 0].item() == pytest.approx(0.7259, abs=1e-4)  # the release's end attenuation
    assert torch.allclose(smooth_gaussian(ones, 3, 1.0, "edge"), ones)  # a constant stays constant
    x = torch.randn(9, 4)
    assert torch.equal(smooth_gaussian(x, 1, 1.0), x) and torch.equal(smooth_mean(x, 1), x)
    m5 = smooth_mean(x, 5)
    torch.testing.assert_close(m5[0], x[:3].mean(0))
    torch.testing.assert_close(m5[4], x[2:7].mean(0))
    torch.testing.assert_close(m5[8], x[6:].mean(0))


def test_driver_looping_matches_release_batches():
    """Each driver loops on its own: the release's per-batch modulo slicing, drop 2, batch 8."""
    for length, frames in itertools.product((3, 10, 11, 16, 40), (1, 8, 37)):
        driver = list(range(length))[2:]
        ref = []
        for it in range(int(round(frames / 8 + 0.4999999))):
            s, e = (it * 8) % len(driver), ((it + 1) * 8) % len(driver)
            if len(driver) >= 8:  # the release's slicing handles one wrap per batch only
                chunk = driver[s:e] if s < e else driver[s:] + driver[:e]
            else:
                chunk = [driver[(it * 8 + j) % len(driver)] for j in range(8)]
            ref += chunk[:min(8, frames - it * 8)]
        assert driver_indices(range(frames), length, drop=2).tolist() == ref
    with pytest.raises(PdfgcError):
        driver_indices(range(3), 2, drop=2)


def test_driver_video_is_read_at_25_fps(tmp_path):
    """A 30 fps driver keeps its real speed: 1.2 s of video -> 30 driver frames at 25 fps."""
    from pdfgc.generation import _Driver
    from pdfgc.video import write_video

    clip = np.stack([np.full((32, 32, 3), 4 * i, np.uint8) for i in range(36)])  # 1.2 s at 30 fps
    path = write_video(tmp_path / "d30.mp4", clip, fps=30)
    drv = _Driver(str(path), size=16, drop=0)
    encode = lambda x: (x.mean((1, 2, 3))[:, None].repeat(1, 6), torch.zeros(len(x), 6),  # noqa: E731
                        torch.zeros(len(x), 30))
    drv.encode(needed=100, encode_batch=encode, batch_size=8, progress=lambda n: None)
    assert drv.count == drv.pose.shape[0] == 30
    brightness = drv.pose[:, 0]
    assert torch.all(brightness[1:] - brightness[:-1] > 0.01)  # in time order, no frame repeated
    assert driver_indices(range(65), 30).tolist() == [i % 30 for i in range(65)]


# ---------------------------------------------------------------------------------------------
# the pipeline against a direct computation
# ---------------------------------------------------------------------------------------------


def test_mouth_windows_per_chunk_equal_frame_windows(assets):
    pipe = assets["pipe"]
    mel = mel_spectrogram(load_audio(assets["wav"]))
    n = num_video_frames(int(AUDIO_S * SR))
    req = _request(assets)
    with torch.inference_mode():
        ref = pipe.nets.audio(frame_windows(mel, n))[1]
    for a, b in [(0, n), (0, 1), (1, 4), (2, 9), (5, n), (n - 1, n)]:
        torch.testing.assert_close(pipe._mouth_codes(mel, a, b, req), ref[a:b], rtol=0, atol=1e-5)


def test_frames_equal_release_rules_with_aligned_windows(assets):
    """Frame i = G(codes of frame_windows(mel, F)[i] and driver frame 2 + i mod (L-2)): the
    release's rules (zero-padded mouth filter, drop 2, loops, scales) with aligned audio."""
    from pdfgc.video import official_crop, read_frames

    pipe, nets = assets["pipe"], assets["pipe"].nets
    s = pipe.image_size
    req = _request(assets, mouth_smoothing=MouthSmoothing(padding="zeros"), drop_first_frames=2,
                   chunk_frames=7, batch_size=3)
    ours = _images(pipe, req)

    wave = load_audio(assets["wav"])
    n = num_video_frames(wave.shape[0])
    assert ours.shape == (n, 3, s, s)
    crop = lambda path: torch.stack([official_crop(f, s) for f in read_frames(path)])  # noqa: E731
    with torch.inference_mode():
        mouth = nets.audio(frame_windows(mel_spectrogram(wave), n))[1]
        portrait = official_crop(cv2.cvtColor(cv2.imread(str(assets["face"])), cv2.COLOR_BGR2RGB), s)
        id_vec, id_map = nets.appearance(portrait[None])
        pose_all, eye_all, _, _ = nets.motion(crop(assets["frames"]))
        _, _, emo_all, _ = nets.motion(crop(assets["mp4"]))
        loop = lambda codes: codes[[2 + i % (codes.shape[0] - 2) for i in range(n)]]  # noqa: E731
        mouth, emotion, eye, pose = _release_postprocess(
            mouth, loop(emo_all), loop(eye_all), loop(pose_all), {c: True for c in CONTROLS})
        style = torch.cat([id_vec.expand(n, -1), mouth, emotion, eye, pose], 1)
        nets.generator.noise_mode, nets.generator.noise_seed = "fixed", req.seed
        ref = nets.generator(style, id_map.expand(n, -1, -1, -1))
    torch.testing.assert_close(ours, ref, rtol=0, atol=2e-5)
    assert (ours - ours[:1]).abs().amax() > 0.02  # the frames do move, far beyond the tolerance


def test_chunked_equals_one_shot(assets):
    pipe = assets["pipe"]
    small = _images(pipe, _request(assets, chunk_frames=4, batch_size=3, strip=True))
    whole = _images(pipe, _request(assets, chunk_frames=1000, batch_size=8, strip=True))
    torch.testing.assert_close(small, whole, rtol=0, atol=2e-5)
    assert (whole - whole[:1]).abs().amax() > 0.02


def test_lips_aligned_with_audio(assets):
    """With mouth only and no smoothing, frame i moves exactly when its window first contains
    speech: window i ends 120 ms after t = i/25 (rows up to 4i+11), so onset 0.5 s -> frame 10
    (t = 0.40 s). The release's indexing put that window on output frame 8 (80 ms early)."""
    pipe = assets["pipe"]
    req = _request(assets, all=False, mouth=True, mouth_smoothing=MouthSmoothing(kernel=1))
    prepared = pipe.prepare(req)
    mouth = pipe.motion_codes(prepared, req, 0, prepared.num_frames)[0]
    moved = [i for i in range(1, mouth.shape[0]) if not torch.allclose(mouth[i], mouth[0], atol=1e-6)]
    first = moved[0]
    assert first == 10 and (ONSET_S - 0.12) < first / 25 <= (ONSET_S - 0.08)
    # the release: first non-silent window index (written as output frame n)
    wins = mel_windows(load_audio(assets["wav"]))
    assert int(torch.nonzero(wins.flatten(1).amax(1) > 0)[0]) == first - 2
    images = _images(pipe, req)
    assert (images[first] - images[0]).abs().max() > 1e-3
    torch.testing.assert_close(images[first - 1], images[0], rtol=0, atol=1e-6)


def test_strip_panels_and_driver_looping(assets):
    from pdfgc.video import official_crop, read_frames

    pipe = assets["pipe"]
    s = pipe.image_size
    # pose drives (encoded); the expression driver is only shown (emo off); no eye driver
    req = _request(assets, all=False, headpose=True, pose_path=str(assets["mp4"]),
                   exp_path=str(assets["frames"]), eye_path=None, strip=True, chunk_frames=5)
    images = _images(pipe, req)
    n = images.shape[0]
    assert images.shape == (n, 3, s, 5 * s)
    pose_drv = torch.stack([official_crop(f, s) for f in read_frames(assets["mp4"])])
    exp_drv = torch.stack([official_crop(f, s) for f in read_frames(assets["frames"])])
    for i in range(n):
        torch.testing.assert_close(images[i, :, :, 2 * s:3 * s], pose_drv[i % pose_drv.shape[0]])
        torch.testing.assert_close(images[i, :, :, 3 * s:4 * s], exp_drv[i % exp_drv.shape[0]])
    assert torch.all(images[:, :, :, 4 * s:] == -1)  # no eye driver: a black panel
    portrait = official_crop(cv2.cvtColor(cv2.imread(str(assets["face"])), cv2.COLOR_BGR2RGB), s)
    torch.testing.assert_close(images[:, :, :, :s], portrait.expand(n, -1, -1, -1))


def test_generate_writes_aligned_mp4(assets):
    from pdfgc.video import probe

    out = assets["root"] / "out" / "talk.mp4"
    req = _request(assets, output_path=str(out), chunk_frames=9)
    seen = []
    result = generate(req, assets["pipe"], progress=lambda *a: seen.append(a))
    n = num_video_frames(int(AUDIO_S * SR))
    assert result.output_path == out and result.num_frames == n and out.is_file()
    info = probe(out)
    assert info["num_frames"] == n and info["fps"] == 25
    assert (info["width"], info["height"]) == (64, 64)
    assert info["has_audio"] and abs(info["audio_duration"] - n / 25) <= 1 / 25
    assert seen[-1] == ("frames", n, n) and ("drivers", 2 * n, 2 * n) in seen
    # the muxed audio starts with frame 0: its onset is at 0.5 s (within a frame)
    audio = load_audio(out)
    onset = int(np.argmax(np.abs(audio) > 0.02)) / SR
    assert abs(onset - ONSET_S) < 1 / 25
    assert sorted(p.name for p in out.parent.iterdir()) == ["talk.mp4"]  # no temp files left


def test_config_file_matches_dataclasses():
    """Every option in configs/generate.yaml is a dataclass field with the same default."""
    cfg = OmegaConf.load(ROOT / "configs" / "generate.yaml")
    keys = set(cfg) - {"defaults", "task_name", "hydra"}
    fields = {f.name: f for f in dataclasses.fields(GenerationRequest)}
    fields.update({f.name: f for f in dataclasses.fields(ModelOptions)})
    assert keys | {"networks"} == set(fields)
    defaults = GenerationRequest(audio_path="", app_img_path="", output_path="")
    for key in keys - {"checkpoints", "audio_path", "app_img_path", "output_path"}:
        expected = getattr(defaults, key) if hasattr(defaults, key) else ModelOptions("").__dict__[key]
        value = OmegaConf.to_container(cfg)[key]
        if key == "mouth_smoothing":
            value = MouthSmoothing(**value)
        assert value == expected, key
    with pytest.raises(PdfgcError, match="audio_path"):
        config_from_mapping({"checkpoints": "x", "app_img_path": "y", "output_path": "z"})


# ---------------------------------------------------------------------------------------------
# the command line (subprocess)
# ---------------------------------------------------------------------------------------------


def _cli(args, run_dir):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    env.pop("PDFGC_DEBUG", None)
    cmd = [sys.executable, str(ROOT / "generate.py"), *args, "device=cpu", f"hydra.run.dir={run_dir}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_cli_writes_video(assets):
    from pdfgc.video import probe

    run_dir = assets["root"] / "cli_run"
    proc = _cli([f"checkpoints={assets['ckpt']}", f"audio_path={assets['wav']}",
                 f"app_img_path={assets['face']}", f"pose_path={assets['mp4']}", "mouth=true",
                 "headpose=true", "strip=true", "chunk_frames=16"], run_dir)
    assert proc.returncode == 0, proc.stderr
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out == run_dir / "generated.mp4" and out.is_file()
    info = probe(out)
    assert info["num_frames"] == num_video_frames(int(AUDIO_S * SR))
    assert (info["width"], info["height"]) == (320, 64) and info["has_audio"]


def _bad_cases(a):
    """name -> options that differ from a good run; each must fail with exit 2 and one line."""
    root = a["root"] / "bad_inputs"
    root.mkdir(exist_ok=True)
    (root / "garbage.wav").write_bytes(b"RIFF not really a wave file" * 10)
    (root / "garbage.png").write_bytes(b"\x89PNG broken" * 10)
    sf.write(str(root / "short.wav"), np.zeros(800, np.float32), SR)  # 50 ms
    (root / "empty_driver").mkdir(exist_ok=True)
    for name, drop in (("no_generator", "generator_model.pth"), ("wrong_keys", None)):
        d = root / name
        d.mkdir(exist_ok=True)
        for f in a["ckpt"].iterdir():
            if f.name != drop:
                (d / f.name).write_bytes(f.read_bytes())
    torch.save({"not_a_key": torch.zeros(3)}, root / "wrong_keys" / "audio_model.pth")
    return {
        "missing_audio": {"audio_path": root / "nope.wav"},
        "unreadable_audio": {"audio_path": root / "garbage.wav"},
        "audio_too_short": {"audio_path": root / "short.wav"},
        "missing_image": {"app_img_path": root / "nope.png"},
        "unreadable_image": {"app_img_path": root / "garbage.png"},
        "missing_driver": {"pose_path": root / "nope_dir", "headpose": True},
        "empty_driver": {"pose_path": root / "empty_driver", "headpose": True},
        "driver_not_given": {"gaze": True},
        "missing_checkpoint_file": {"checkpoints": root / "no_generator"},
        "wrong_checkpoint_keys": {"checkpoints": root / "wrong_keys"},
        "no_checkpoint_dir": {"checkpoints": root / "nope_ckpt"},
        "missing_required_option": {"audio_path": None},
        "wrong_option_type": {"batch_size": "abc"},
    }


BAD_CASES = ["missing_audio", "unreadable_audio", "audio_too_short", "missing_image",
             "unreadable_image", "missing_driver", "empty_driver", "driver_not_given",
             "missing_checkpoint_file", "wrong_checkpoint_keys", "no_checkpoint_dir",
             "missing_required_option", "wrong_option_type"]
# One case per phase (input validation, checkpoint loading, driver decoding after the networks
# loaded, Hydra's missing value) also goes through a real `python generate.py`.
CLI_BAD_CASES = ["missing_audio", "empty_driver", "wrong_checkpoint_keys", "missing_required_option"]


def _good_options(a, out: Path) -> dict:
    return {"checkpoints": a["ckpt"], "audio_path": a["wav"], "app_img_path": a["face"],
            "output_path": out}


def _assert_clean_failure(returncode, stderr, out_dir: Path):
    lines = stderr.strip().splitlines()
    assert returncode == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())  # nothing written, no temp file


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line(assets, case, capsys):
    """In-process through the same guard as generate.py (cli_guard around run_from_config)."""
    from pdfgc.errors import cli_guard
    from pdfgc.generation import run_from_config

    out_dir = assets["root"] / "bad_in_process" / case
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "generate.yaml"))
    cfg.update(device="cpu", **_good_options(assets, out_dir / "out.mp4"))
    cfg.update(_bad_cases(assets)[case])
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items() if v is not None}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_guard(run_from_config)(cfg)
    captured = capsys.readouterr()
    _assert_clean_failure(exit_info.value.code, captured.err, out_dir)
    assert captured.out == ""


@pytest.fixture(scope="module")
def cli_bad_runs(assets):
    """Run the CLI bad-input cases (two at a time: each is a fresh interpreter)."""
    cases = _bad_cases(assets)

    def run(name):
        out_dir = assets["root"] / "bad_cli" / name
        opts = {**_good_options(assets, out_dir / "out.mp4"), **cases[name]}
        args = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in opts.items() if v is not None]
        return name, _cli(args, assets["root"] / "bad_cli_runs" / name), out_dir

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return {name: (proc, out_dir) for name, proc, out_dir in pool.map(run, CLI_BAD_CASES)}


@pytest.mark.parametrize("case", CLI_BAD_CASES)
def test_cli_bad_input(cli_bad_runs, case):
    proc, out_dir = cli_bad_runs[case]
    _assert_clean_failure(proc.returncode, proc.stderr, out_dir)
