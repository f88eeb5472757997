"""The web app in a real browser: Debian's chromium driven by Playwright for Python.

The app runs in this process (random small weights, built-in SynthTalk examples made in a tmp
cache); chromium is the system one (``/usr/bin/chromium``: Playwright's own browser download does
not work offline), headless, with a fresh profile and no background networking
(:mod:`pdfgc.app.browser`). ``.ci/run`` installs both when missing; without them these tests skip.
"""

from __future__ import annotations

import math
import shutil
import wave
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

from pdfgc.app.browser import CHROMIUM, chromium_page, serve, upload, upload_examples, video_duration  # noqa: E402

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)),
                                reason=f"no chromium at {CHROMIUM} (apt-get install chromium)")
GENERATION_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app on a free local port, uploads limited to 5 MB; yields url, workspace, examples.

    The checkpoint is the random-weights one even where a ``make demo`` export exists in
    ``logs/demo`` (the app would select it at start): the test checks the notice of that case.
    """
    import pdfgc.app.examples

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pdfgc.app.examples, "find_demo_checkpoint", lambda logs_dir=None: None)
        with serve(["--cache-dir", str(tmp_path_factory.mktemp("app_cache")), "--max-upload-mb", "5"]) as served:
            yield served
    assert not served["workspace"].exists(), "uploads and results are removed with the server"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    with chromium_page(tmp_path_factory.mktemp("chromium_profile")) as page:
        yield page


def _open(page, app) -> None:
    page.goto(app["url"])
    page.locator("#generate").wait_for()


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def test_generate_in_browser_plays_a_video_as_long_as_the_speech(app, page):
    outside = []  # requests leaving localhost: the app must work offline and not phone home
    page.on("request", lambda r: outside.append(r.url) if r.url.split(":")[0] in ("http", "https")
            and not r.url.startswith(app["url"]) else None)
    _open(page, app)
    # random weights are the only checkpoint here: the page must say so
    assert "Random weights" in page.locator("#checkpoint-notice").inner_text()
    files = upload_examples(page, app["examples"])
    # record every progress line the page shows, however briefly (a DOM observer, not polling)
    page.evaluate("""() => {
        window.progressSeen = new Set();
        new MutationObserver(() => {
            for (const m of document.body.innerText.matchAll(/encoding the driver videos|generating frame \\d+ of \\d+/g))
                window.progressSeen.add(m[0]);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")
    page.locator("#generate").click()

    duration = video_duration(page, "#result", GENERATION_TIMEOUT_MS)
    speech = _wav_seconds(files["audio"])
    assert duration > 0 and math.isfinite(duration)
    assert abs(duration - speech) < 0.1, (duration, speech)  # one frame per 40 ms of speech
    frames = round(speech * 25)
    assert f"{frames} frames" in page.locator("#summary textarea").input_value()
    download = page.locator("#downloads a[download]")
    download.first.wait_for(timeout=10_000)
    assert download.count() == 1 and "pdfgc_portrait" in page.locator("#downloads").inner_text()
    assert outside == []
    # the uploads went into the app's temporary workspace (removed when the server stops)
    uploaded = {p.name for p in app["workspace"].rglob("*") if p.is_file()}
    assert {files["portrait"].name, files["audio"].name} <= uploaded, uploaded
    seen = set(page.evaluate("() => [...window.progressSeen]"))
    # the progress bar moved through the drivers and then once per second (25 frames) of video
    assert "encoding the driver videos" in seen and f"generating frame 25 of {frames}" in seen, seen


def _write_silent_wav(path: Path, seconds: float = 1.0) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(b"\x00\x00" * int(16000 * seconds))
    return path


def test_invalid_uploads_show_a_readable_message_in_the_page(app, page, tmp_path):
    _open(page, app)
    # a text file named like an image as the portrait: rejected as soon as it is uploaded
    text = tmp_path / "face.png"
    text.write_text("this is not a face\n")
    upload(page, "portrait", text)
    message = page.get_by_text("portrait is not a readable image file (png, jpg, ...): face.png")
    message.wait_for(timeout=20_000)
    assert message.is_visible()
    assert page.locator("#portrait-preview img").count() == 0

    # an upload over the limit (5 MB in this app) is refused before it reaches the server
    big = tmp_path / "long.wav"
    big.write_bytes(b"\0" * (6 * 2**20))
    upload(page, "audio", big)
    page.get_by_text("exceed the maximum allowed size").wait_for(timeout=20_000)
    assert not any(p.name == "long.wav" for p in app["workspace"].rglob("*"))
    assert "Traceback" not in page.content()

    # silent speech: refused when Generate is pressed, with the upload's own name
    _open(page, app)
    upload_examples(page, app["examples"], audio=_write_silent_wav(tmp_path / "quiet.wav"))
    page.locator("#generate").click()
    page.get_by_text("audio is silent (no sound above -80 dBFS): quiet.wav").wait_for(timeout=20_000)
    assert page.locator("#result video").count() == 0
    assert "Traceback" not in page.content()
