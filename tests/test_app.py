"""The web app without a browser: upload checks, the service behind "Generate", the page's
callbacks, example/checkpoint discovery and the command line (pdfgc.app, app.py).

Networks are the small config with seeded random weights (the app's own fallback checkpoint);
inputs are made here (astronaut portrait, a tone, a 10-frame driver), all under tmp_path.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch

from pdfgc.errors import PdfgcError

SR = 16000
SPEECH_S = 1.0  # 25 output frames


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Random-weights checkpoint, portrait, speech, a silent and a short wav, a driver mp4."""
    from skimage import data

    from pdfgc.app.examples import random_weights_checkpoint
    from pdfgc.video import write_video

    root = tmp_path_factory.mktemp("app")
    img = data.astronaut()
    portrait = root / "face.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(cv2.resize(img, (96, 96)), cv2.COLOR_RGB2BGR))
    t = np.arange(int(SPEECH_S * SR)) / SR
    speech = root / "speech.wav"
    sf.write(speech, 0.3 * np.sin(2 * np.pi * 220 * t) * (1.2 + np.sin(2 * np.pi * 3 * t)), SR)
    silent = root / "silent.wav"
    sf.write(silent, np.zeros(SR), SR)
    short = root / "short.wav"
    sf.write(short, 0.3 * np.sin(2 * np.pi * 220 * t[:1600]), SR)  # 0.1 s
    clip = np.stack([cv2.resize(np.roll(img, 40 * k, axis=1), (96, 96)) for k in range(10)])
    driver = write_video(root / "driver.mp4", clip, fps=25)
    not_video = root / "driver_text.mp4"
    not_video.write_text("not a video\n")
    return {"ckpt": random_weights_checkpoint(root / "cache"), "portrait": portrait, "speech": speech,
            "silent": silent, "short": short, "driver": driver, "not_video": not_video, "root": root}


@pytest.fixture
def service(tmp_path):
    from pdfgc.app.service import GenerationService, Settings

    return GenerationService(Settings(workspace=tmp_path / "ws", max_upload_mb=1.0, max_audio_seconds=3.0))


def full_form(assets, **changes):
    from pdfgc.app.service import Form

    form = Form(portrait=str(assets["portrait"]), audio=str(assets["speech"]), pose=str(assets["driver"]),
                expression=str(assets["driver"]), eye=str(assets["driver"]), checkpoints=str(assets["ckpt"]))
    for key, value in changes.items():
        setattr(form, key, value)
    return form


def read_mp4(path: Path) -> np.ndarray:
    from pdfgc.video import read_frames

    return np.stack(list(read_frames(path)))


# ---------------------------------------------------------------------------------------------
# upload checks
# ---------------------------------------------------------------------------------------------


def test_check_upload_names_the_problem(tmp_path):
    from pdfgc.app.validation import check_upload

    with pytest.raises(PdfgcError, match="^no audio uploaded$"):
        check_upload(None, "audio", 100)
    with pytest.raises(PdfgcError, match="missing on the server.*gone.wav"):
        check_upload(tmp_path / "gone.wav", "audio", 100)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(PdfgcError, match="portrait is an empty file: empty.png"):
        check_upload(empty, "portrait", 100)
    big = tmp_path / "big.png"
    big.write_bytes(b"x" * (3 * 2**20 + 1))
    with pytest.raises(PdfgcError, match=r"portrait is 3.0 MB, over this app's limit of 2 MB: big.png"):
        check_upload(big, "portrait", 2 * 2**20)
    assert check_upload(big, "portrait", 4 * 2**20) == big


def test_check_speech_refuses_silent_short_long_and_non_audio(assets, tmp_path):
    from pdfgc.app.validation import check_portrait, check_speech

    assert check_speech(assets["speech"], 3.0) == pytest.approx(SPEECH_S, abs=1e-6)
    with pytest.raises(PdfgcError, match="audio is silent.*silent.wav"):
        check_speech(assets["silent"], 3.0)
    with pytest.raises(PdfgcError, match=r"audio is too short: 0.10 s, need at least 0.2 s: short.wav"):
        check_speech(assets["short"], 3.0)
    with pytest.raises(PdfgcError, match=r"audio is 1.0 s long; this app takes up to 0.5 s"):
        check_speech(assets["speech"], 0.5)
    with pytest.raises(PdfgcError, match="audio is not a readable sound file.*driver_text.mp4"):
        check_speech(assets["not_video"], 3.0)
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello")
    with pytest.raises(PdfgcError, match=r"portrait is not a readable image file \(png, jpg, ...\): fake.jpg"):
        check_portrait(fake)
    assert check_portrait(assets["portrait"]).shape == (96, 96, 3)


# ---------------------------------------------------------------------------------------------
# the service behind "Generate"
# ---------------------------------------------------------------------------------------------


def test_request_maps_the_form_onto_the_pipeline_request(assets, service, tmp_path):
    form = full_form(assets, controls=["mouth", "gaze"], mouth_scale=2.0, eye_scale=0.5, emotion_scale=0.0,
                     strip=True, pose=None, expression=None)
    req = service.request(form, tmp_path / "out.mp4")
    assert req.controls() == {"mouth": True, "blink": False, "gaze": True, "emo": False, "headpose": False}
    assert (req.mouth_scale, req.eye_scale, req.emotion_scale, req.strip) == (2.0, 0.5, 0.0, True)
    assert req.chunk_frames == 25  # a progress step per second of video
    assert (req.pose_path, req.exp_path, req.eye_path) == (None, None, str(assets["driver"]))
    assert req.app_img_path == str(assets["portrait"]) and req.output_path == str(tmp_path / "out.mp4")


@pytest.mark.parametrize("changes, message", [
    ({"pose": None}, "head pose is on: upload a head-pose driver video or switch head pose off"),
    ({"eye": None, "controls": ["blink"]}, "blink is on: upload a eye driver video or switch blink off"),
    ({"expression": None, "controls": ["emo"]}, "emotion is on: upload a expression driver video"),
    ({"eye_scale": -1.0}, "eye strength must be a number >= 0, got -1.0"),
    ({"controls": ["smile"]}, "unknown control.*smile"),
    ({"audio": None}, "no audio uploaded"),
])
def test_request_refuses_inconsistent_forms(assets, service, tmp_path, changes, message):
    with pytest.raises(PdfgcError, match=message):
        service.request(full_form(assets, **changes), tmp_path / "out.mp4")


def test_run_writes_the_same_video_as_generate_py_and_a_matching_strip(assets, service, tmp_path):
    """The app's face video is generate.py's output bit for bit (same pipeline, one pass), and
    the strip's second panel is that face."""
    from pdfgc.generation import generate
    from pdfgc.video import probe

    calls = []
    outcome = service.run(full_form(assets, strip=True), lambda f, d: calls.append((f, d)))
    assert outcome.num_frames == 25 and "25 frames (1.00 s) at 64 px" in outcome.summary
    face, strip = read_mp4(outcome.video), read_mp4(outcome.strip)
    assert face.shape == (25, 64, 64, 3) and strip.shape == (25, 64, 5 * 64, 3)
    assert probe(outcome.video)["audio_duration"] == pytest.approx(SPEECH_S, abs=0.03)

    reference = tmp_path / "generate_py.mp4"
    req = service.request(full_form(assets), reference)
    generate(req, service.pipeline(str(assets["ckpt"])))
    assert np.array_equal(read_mp4(reference), face)
    # the strip panel went through its own x264 encode: equal up to coding noise
    panel = strip[:, :, 64:128].astype(np.int16)
    assert np.abs(panel - face).mean() < 3.0
    assert np.abs(strip[:, :, :64].astype(np.int16) - face).mean() > 10  # the portrait panel differs

    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("driver" in d for _, d in calls) and calls[-1][1] == "generating frame 25 of 25"


def test_failures_are_one_line_with_upload_names_and_leave_no_files(assets, service):
    form = full_form(assets, pose=str(assets["not_video"]), controls=["headpose"])
    with pytest.raises(PdfgcError) as err:
        service.run(form)
    message = str(err.value)
    assert "driver_text.mp4" in message and str(assets["root"]) not in message and "\n" not in message
    assert not any((service.settings.workspace / "results").iterdir())
    with pytest.raises(PdfgcError, match="checkpoint folder not found: /no/such/folder"):
        service.run(full_form(assets, checkpoints="/no/such/folder"))


def test_old_results_are_deleted_and_the_pipeline_is_reused(assets, service):
    service.settings.keep_results = 2
    folders = []
    for k in range(3):
        folders.append(service._new_result_folder())
        os.utime(folders[-1], (1000 + k, 1000 + k))  # creation order, whatever the clock's resolution
    results = sorted((service.settings.workspace / "results").iterdir())
    assert len(results) == 2 and not folders[0].exists() and folders[2].exists()
    first = service.pipeline(str(assets["ckpt"]), "official")
    assert service.pipeline(str(assets["ckpt"]), "small") is first  # networks.yaml decides, no reload


# ---------------------------------------------------------------------------------------------
# the page's callbacks
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def callbacks(assets, service):
    from pdfgc.app.ui import CheckpointChoice, make_callbacks

    choices = [CheckpointChoice("random", assets["ckpt"], random_weights=True)]
    return make_callbacks(service, choices)


def test_generate_callback_returns_videos_files_and_summary(assets, callbacks):
    _, notice, generate = callbacks
    a = assets
    video, strip, files, summary = generate(str(a["portrait"]), str(a["speech"]), str(a["driver"]), None,
                                            str(a["driver"]), ["mouth", "headpose", "gaze"], 1.5, 1.2, 1.2,
                                            True, str(a["ckpt"]), "official")
    assert Path(video).is_file() and Path(strip["value"]).is_file() and strip["visible"] is True
    assert files == [video, strip["value"]]
    assert summary.endswith("(random weights: untrained output)") and "mouth, gaze, head pose" in summary
    assert notice(str(a["ckpt"]))["visible"] is True and notice("/some/trained/export")["visible"] is False


def test_page_is_offline_and_uses_the_command_line_defaults(assets, service):
    from pdfgc.app.ui import CheckpointChoice, build_app

    choices = [CheckpointChoice("trained", assets["root"]), CheckpointChoice("random", assets["ckpt"], True)]
    blocks = build_app(service, choices, networks_default="small")
    assert blocks.analytics_enabled is False
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    assert by_id["networks"].value == "small" and by_id["checkpoint"].value == str(assets["root"])
    assert by_id["checkpoint-notice"].visible is False  # a trained checkpoint is selected: no notice
    assert by_id["controls"].value == ["mouth", "blink", "gaze", "emo", "headpose"]


def test_callback_errors_become_one_line_messages(assets, callbacks, service, monkeypatch):
    import gradio as gr

    preview, _, generate = callbacks
    args = [str(assets["portrait"]), str(assets["silent"]), None, None, None, ["mouth"], 1.5, 1.2, 1.2,
            False, str(assets["ckpt"]), "official"]
    with pytest.raises(gr.Error, match="audio is silent.*silent.wav"):
        generate(*args)
    with pytest.raises(gr.Error, match="portrait is not a readable image file"):
        preview(str(assets["silent"]))
    assert preview(str(assets["portrait"])).shape == (96, 96, 3)

    def crash(*_, **__):
        raise RuntimeError("boom inside a network")

    monkeypatch.setattr(service, "run", crash)
    with pytest.raises(gr.Error) as err:
        generate(*args)
    assert err.value.message == "generation failed unexpectedly (RuntimeError); see the server log"


# ---------------------------------------------------------------------------------------------
# examples, checkpoints, command line
# ---------------------------------------------------------------------------------------------


def test_demo_checkpoint_is_the_newest_complete_export(tmp_path):
    from pdfgc.app.examples import find_demo_checkpoint
    from pdfgc.checkpoints import OFFICIAL_FILES

    def export(run: str, stage: str, files, mtime: float) -> Path:
        folder = tmp_path / run / "train" / stage / "export"
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_bytes(b"x")
        os.utime(folder, (mtime, mtime))
        return folder

    assert find_demo_checkpoint(tmp_path) is None
    old = export("2026-01-01", "synthtalk_stage3", OFFICIAL_FILES.values(), 1000)
    stage2 = ["appearance_model.pth", "motion_model.pth", "audio_model.pth", "generator0_model.pth"]
    export("2026-02-01", "synthtalk_stage2", stage2, 3000)  # newer but cannot generate
    assert find_demo_checkpoint(tmp_path) == old
    new = export("2026-03-01", "synthtalk_stage3", OFFICIAL_FILES.values(), 2000)
    assert find_demo_checkpoint(tmp_path) == new


def test_random_weights_checkpoint_is_seeded_and_loads(assets, tmp_path):
    from pdfgc.app.examples import random_weights_checkpoint
    from pdfgc.checkpoints import OFFICIAL_FILES, load_official

    again = random_weights_checkpoint(tmp_path / "other")
    assert sorted(p.name for p in again.iterdir()) == sorted([*OFFICIAL_FILES.values(), "networks.yaml"])
    for name in OFFICIAL_FILES.values():
        a = torch.load(assets["ckpt"] / name, weights_only=True)
        b = torch.load(again / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    nets = load_official(again, networks_cfg=str(again / "networks.yaml"))
    assert nets.generator.size == 64
    assert random_weights_checkpoint(tmp_path / "other") == again  # made once, then reused


def test_checkpoint_list_puts_the_requested_then_the_demo_export_first(assets, monkeypatch):
    import pdfgc.app.examples as examples
    from pdfgc.app.server import checkpoint_choices

    cache = assets["ckpt"].parent  # its random-weights checkpoint is already made
    demo = assets["root"] / "logs_demo_export"
    demo.mkdir(exist_ok=True)
    monkeypatch.setattr(examples, "find_demo_checkpoint", lambda: None)
    only = checkpoint_choices(cache, None)
    assert [(c.path, c.random_weights) for c in only] == [(assets["ckpt"], True)]
    monkeypatch.setattr(examples, "find_demo_checkpoint", lambda: demo)
    choices = checkpoint_choices(cache, str(assets["root"]))
    assert [c.path for c in choices] == [assets["root"], demo, assets["ckpt"]]
    assert [c.random_weights for c in choices] == [False, False, True] and "make demo" in choices[1].label


def test_example_inputs_are_synthtalk_clips_made_once(tmp_path):
    from pdfgc.app.examples import EXAMPLES_VERSION, example_inputs
    from pdfgc.video import probe, read_image

    made = example_inputs(tmp_path)
    assert read_image(made.portrait).shape == (64, 64, 3)
    assert sf.info(str(made.audio)).samplerate == SR and sf.info(str(made.audio)).duration == pytest.approx(4.0)
    for driver in (made.pose, made.expression, made.eye):
        info = probe(driver)
        assert (info["num_frames"], info["fps"], info["width"]) == (100, 25, 64)
    assert len({made.pose.read_bytes(), made.expression.read_bytes(), made.eye.read_bytes()}) == 3
    stamp = made.portrait.stat().st_mtime_ns
    assert example_inputs(tmp_path) == made and made.portrait.stat().st_mtime_ns == stamp  # reused
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"examples-v{EXAMPLES_VERSION}"]  # no temporary left over


def test_command_line(tmp_path, monkeypatch, capsys):
    from pdfgc.app.server import parse_args, workspace

    args = parse_args([])
    assert (args.host, args.port, args.share, args.device, args.max_upload_mb) == ("127.0.0.1", 7860, False, "cpu", 50.0)
    with workspace() as root:
        assert root.is_dir() and os.environ["GRADIO_TEMP_DIR"] == str(root / "gradio")
    assert not root.exists()

    from pdfgc.cli import app_main

    # the console script pdfgc-app runs app.py: a bad option is one line and exit 2
    monkeypatch.setattr(sys, "argv", ["pdfgc-app", "--checkpoints", str(tmp_path / "nope"),
                                      "--cache-dir", str(tmp_path / "cache")])
    with pytest.raises(SystemExit) as exit_info:
        app_main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: checkpoint folder not found: {tmp_path / 'nope'}"
    assert not (tmp_path / "cache").exists()  # nothing was made for a bad command line


def test_a_taken_port_is_one_error_line():
    import socket

    import gradio as gr

    from pdfgc.app.server import launch, parse_args

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with gr.Blocks(analytics_enabled=False) as blocks:
            gr.Markdown("x")
        with pytest.raises(PdfgcError, match=f"^cannot serve on 127.0.0.1:{port}: "):
            launch(blocks, parse_args(["--port", str(port)]), [], block=False)


@pytest.mark.parametrize("argv, message", [
    (["--port", "web"], "argument --port: not a port number: 'web'"),
    (["--port", "99999"], "argument --port: port 99999 is outside 1-65535"),
    (["--max-upload-mb", "-1"], "argument --max-upload-mb: must be a number > 0, got -1"),
    (["--max-audio-seconds", "0"], "argument --max-audio-seconds: must be a number > 0, got 0"),
    (["--networks", "huge"], "argument --networks: invalid choice: 'huge'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_options_are_one_error_line(argv, message):
    from pdfgc.app.server import parse_args

    with pytest.raises(PdfgcError) as err:
        parse_args(argv)
    assert str(err.value).startswith(message) and str(err.value).endswith("(python app.py --help lists the options)")
    assert "\n" not in str(err.value)


def test_app_py_prints_one_error_line_and_exits_2(tmp_path):
    """The real entry point: a bad option and an unwritable cache folder, no usage block, no traceback."""
    import subprocess

    from conftest import REPO_ROOT

    env = {k: v for k, v in os.environ.items() if k != "PDFGC_DEBUG"}
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should go\n")
    for argv, line in ((["--port", "99999"], "error: argument --port: port 99999 is outside 1-65535 "
                        "(python app.py --help lists the options)"),
                       (["--cache-dir", str(blocker / "cache")], f"error: cannot write the app's cache folder "
                        f"{blocker / 'cache'} (Not a directory); give another with --cache-dir")):
        proc = subprocess.run([sys.executable, "app.py", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=300, env=env)
        assert proc.returncode == 2, proc.stderr[-2000:]
        errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert errors == [line] and "Traceback" not in proc.stderr and "usage:" not in proc.stderr


def test_generations_run_one_at_a_time_in_the_queue_with_the_upload_limit(assets, service):
    """What ``launch`` serves: Gradio's queue, Generate never two at once, uploads capped."""
    from pdfgc.app.browser import free_port
    from pdfgc.app.server import launch, parse_args
    from pdfgc.app.ui import CheckpointChoice, build_app

    blocks = build_app(service, [CheckpointChoice("random", assets["ckpt"], True)])
    args = parse_args(["--port", str(free_port()), "--max-upload-mb", "3"])
    launch(blocks, args, [], block=False)
    try:
        assert blocks._queue.max_size == 16 and blocks._queue.default_concurrency_limit == 1
        generate = [f for f in blocks.fns.values() if f.name == "generate"]
        assert len(generate) == 1 and generate[0].queue and generate[0].concurrency_limit == 1
        assert blocks.max_file_size == 3 * 2**20
        assert blocks.share is False
    finally:
        blocks.close()
