"""The web app in a real browser: Debian's chromium driven by Playwright for Python.

The app runs in this process (random small weights, built-in SynthTalk examples made in
``tmp_path``); chromium is the system one (``/usr/bin/chromium``: Playwright's own browser
download does not work offline), headless, with a fresh profile and no background networking.
``.ci/run`` installs both when missing; without them these tests are skipped.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import wave
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("PDFGC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
GENERATION_TIMEOUT_MS = 60_000

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)),
                                reason=f"no chromium at {CHROMIUM} (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """Serve the app on a free local port for this module; yields its URL, workspace and cache."""
    from pdfgc.app.server import create_app, launch, parse_args, workspace

    cache = tmp_path_factory.mktemp("app_cache")
    args = parse_args(["--port", str(_free_port()), "--cache-dir", str(cache), "--max-upload-mb", "5"])
    with workspace() as root:
        blocks, service, allowed = create_app(args, root)
        launch(blocks, args, allowed, block=False)
        try:
            yield {"url": f"http://127.0.0.1:{args.port}/", "workspace": root, "cache": cache}
        finally:
            blocks.close()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    """A chromium page with a fresh profile."""
    profile = tmp_path_factory.mktemp("chromium_profile")
    with playwright_sync.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = context.pages[0] if context.pages else context.new_page()
        try:
            yield page
        finally:
            context.close()


def _examples(cache: Path) -> dict[str, Path]:
    folder = next(cache.glob("examples-v*"))
    return {"portrait": folder / "portrait.png", "audio": folder / "speech.wav",
            "pose-driver": folder / "pose.mp4", "expression-driver": folder / "expression.mp4",
            "eye-driver": folder / "eye.mp4"}


def _upload(page, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_generate_in_browser_plays_a_video_as_long_as_the_speech(app_url, browser_page, tmp_path):
    page = browser_page
    page.goto(app_url["url"])
    page.locator("#generate").wait_for()
    # random weights are the only checkpoint here: the page must say so
    assert "Random weights" in page.locator("#checkpoint-notice").inner_text()

    examples = _examples(app_url["cache"])
    for elem_id, path in examples.items():
        _upload(page, elem_id, path)
    page.locator("#portrait-preview img").wait_for(timeout=20_000)  # the upload was read as an image
    page.locator("#generate").click()

    video = page.locator("#result video")
    video.wait_for(timeout=GENERATION_TIMEOUT_MS)
    duration = video.evaluate(
        """v => new Promise((resolve) => {
               if (v.readyState >= 1) return resolve(v.duration);
               v.addEventListener('loadedmetadata', () => resolve(v.duration));
               v.addEventListener('error', () => resolve(-1));
           })""")
    speech = _wav_seconds(examples["audio"])
    assert duration > 0 and math.isfinite(duration)
    assert abs(duration - speech) < 0.1, (duration, speech)  # one frame per 40 ms of speech
    frames = round(speech * 25)
    assert f"{frames} frames" in page.locator("#summary textarea").input_value()
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)



def _write_silent_wav(path: Path, seconds: float = 1.0) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\x00\x00" * int(16000 * seconds))
    return path


def test_invalid_uploads_show_a_readable_message_in_the_page(app_url, browser_page, tmp_path):
    page = browser_page
    page.goto(app_url["url"])
    page.locator("#generate").wait_for()

    # a text file named like an image as the portrait: rejected as soon as it is uploaded
    text = tmp_path / "face.png"
    text.write_text("this is not a face\n")
    _upload(page, "portrait", text)
    message = page.get_by_text("portrait is not a readable image file (png, jpg, ...): face.png")
    message.wait_for(timeout=20_000)
    assert message.is_visible()
    assert page.locator("#portrait-preview img").count() == 0

    # an upload over the limit (5 MB in this app) is refused before it reaches the server
    big = tmp_path / "long.wav"
    big.write_bytes(b"\0" * (6 * 2**20))
    _upload(page, "audio", big)
    page.get_by_text("exceed the maximum allowed size").wait_for(timeout=20_000)
    assert not any(p.name == "long.wav" for p in app_url["workspace"].rglob("*"))
    assert "Traceback" not in page.content()

    # silent speech: refused when Generate is pressed, with the upload's own name
    page.goto(app_url["url"])
    page.locator("#generate").wait_for()
    examples = _examples(app_url["cache"])
    examples["audio"] = _write_silent_wav(tmp_path / "quiet.wav")
    for elem_id, path in examples.items():
        _upload(page, elem_id, path)
    page.locator("#portrait-preview img").wait_for(timeout=20_000)
    page.locator("#generate").click()
    page.get_by_text("audio is silent (no sound above -80 dBFS): quiet.wav").wait_for(timeout=20_000)
    assert page.locator("#result video").count() == 0
    assert "Traceback" not in page.content()
