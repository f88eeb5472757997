"""Drive the web app in a real browser: the app served from this process, Debian's chromium
through Playwright for Python. Used by the browser test and by the README screenshot
(``python -m pdfgc.app.browser docs/app.png``).

Playwright's own browser download does not work offline, so the system chromium is launched
by path, headless, with a fresh profile and no background networking.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

#: The system chromium (``apt-get install chromium``); ``PDFGC_CHROMIUM`` overrides it.
CHROMIUM = os.environ.get("PDFGC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Upload element id -> field of :class:`pdfgc.app.examples.Examples`.
EXAMPLE_UPLOADS = {"portrait": "portrait", "audio": "audio", "pose-driver": "pose",
                   "expression-driver": "expression", "eye-driver": "eye"}
EXAMPLE_UPLOADS_BY_FIELD = {field: elem_id for elem_id, field in EXAMPLE_UPLOADS.items()}


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(extra_args: Optional[list[str]] = None) -> Iterator[dict]:
    """Serve the app on a free local port in a background thread while the block runs.

    Yields ``{"url", "workspace", "examples"}``; ``extra_args`` are ``app.py`` flags.
    """
    from .examples import default_cache_dir, example_inputs
    from .server import create_app, launch, parse_args, workspace

    args = parse_args(["--port", str(free_port()), *(extra_args or [])])
    with workspace() as root:
        blocks, _, allowed = create_app(args, root)
        launch(blocks, args, allowed, block=False)
        try:
            cache = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
            yield {"url": f"http://127.0.0.1:{args.port}/", "workspace": root, "examples": example_inputs(cache)}
        finally:
            blocks.close()


@contextlib.contextmanager
def chromium_page(profile_dir: Path, width: int = 1280, height: int = 900) -> Iterator:
    """A Playwright page in the system chromium with a fresh profile in ``profile_dir``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height})
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def upload(page, elem_id: str, path: Path) -> None:
    """Put ``path`` into the file input of the component with ``elem_id``."""
    page.locator(f"#{elem_id} input[type=file]").set_input_files(str(path))


def upload_examples(page, examples, **replace: Path) -> dict[str, Path]:
    """Upload the five example files (``replace`` swaps some: ``audio=Path(...)``); returns them."""
    files = {elem_id: Path(getattr(examples, field)) for elem_id, field in EXAMPLE_UPLOADS.items()}
    files.update({EXAMPLE_UPLOADS_BY_FIELD[k]: v for k, v in replace.items()})
    for elem_id, path in files.items():
        upload(page, elem_id, path)
    page.locator("#portrait-preview img").wait_for(timeout=20_000)  # read back as an image
    return files


def video_duration(page, selector: str, timeout_ms: int) -> float:
    """Wait for a ``<video>`` under ``selector`` and return its duration in seconds (-1 when the
    browser cannot load it)."""
    video = page.locator(f"{selector} video")
    video.wait_for(timeout=timeout_ms)
    return video.evaluate(
        """v => new Promise((resolve) => {
               if (v.readyState >= 1) return resolve(v.duration);
               v.addEventListener('loadedmetadata', () => resolve(v.duration));
               v.addEventListener('error', () => resolve(-1));
           })""")


def screenshot(target: Path) -> Path:
    """The README screenshot: the built-in example with the strip, generated, as a small PNG."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp, serve(["--cache-dir", str(Path(tmp) / "cache")]) as app, \
            chromium_page(Path(tmp) / "profile", width=1280, height=900) as page:
        page.goto(app["url"])
        page.locator("#generate").wait_for()
        upload_examples(page, app["examples"])
        page.locator("#strip input").check()
        page.locator("#generate").click()
        video_duration(page, "#strip-video", 120_000)
        page.wait_for_timeout(1000)  # let the players paint their first frame
        raw = Path(tmp) / "raw.png"
        page.screenshot(path=str(raw), full_page=True)
        image = Image.open(raw).convert("RGB")
        image = image.resize((image.width * 2 // 3, image.height * 2 // 3), Image.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    return target


if __name__ == "__main__":
    print(screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/app.png")))
