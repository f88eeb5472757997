"""Start the web app: ``python app.py [--port 7860] [--checkpoints DIR] ...`` (or ``pdfgc-app``).

Everything the server writes (uploads, Gradio's cache, results) lives in one temporary
workspace that is removed when the server stops; the built-in examples and the random-weights
checkpoint are made once into a cache folder outside the repository.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from pdfgc.errors import PdfgcError

log = logging.getLogger("pdfgc.app")


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error convention: a bad option is one ``error: ...`` line
    (raised as :class:`PdfgcError`, printed by ``cli_guard``, exit 2), not a usage block."""

    def error(self, message: str):
        raise PdfgcError(f"{message} (python app.py --help lists the options)")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line of ``app.py``; a bad option raises :class:`PdfgcError` (one line)."""
    p = _Parser(
        prog="app.py", description="PD-FGC web demo: portrait + speech (+ driver videos) -> talking head, "
        "with every factor switchable, in the browser (Gradio).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the whole network)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument("--checkpoints", default=None,
                   help="checkpoint folder selected at start (default: the newest `make demo` export, "
                   "else random weights)")
    p.add_argument("--networks", default="official", choices=["official", "small"],
                   help="network size for a folder without networks.yaml (default official)")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (default cpu)")
    p.add_argument("--cache-dir", default=None,
                   help="where the built-in examples are made once (default ~/.cache/pdfgc/app)")
    p.add_argument("--max-upload-mb", type=_positive, default=50.0, help="largest upload per file, MB")
    p.add_argument("--max-audio-seconds", type=_positive, default=60.0, help="longest speech the app takes")
    p.add_argument("--no-examples", action="store_true", help="start without the built-in examples")
    p.add_argument("--share", action="store_true",
                   help="also open a public gradio.live link (needs internet; off by default)")
    return p.parse_args(argv)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A fresh temporary folder for uploads, Gradio's cache and results, removed on exit.

    ``GRADIO_TEMP_DIR`` points into it while the app runs (Gradio reads it when it builds the
    page and the server), so uploads land here and not in a shared /tmp/gradio.
    """
    root = Path(tempfile.mkdtemp(prefix="pdfgc-app-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    try:
        yield root
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(root, ignore_errors=True)


def checkpoint_choices(cache_dir: Path, requested: Optional[str]) -> list:
    """The checkpoint list: the requested folder, the newest ``make demo`` export, random weights
    (made on first use). The first entry is selected at start."""
    from .examples import find_demo_checkpoint, random_weights_checkpoint
    from .ui import CheckpointChoice

    choices = []
    if requested:
        folder = Path(requested).expanduser().resolve()
        if not folder.is_dir():
            raise PdfgcError(f"checkpoint folder not found: {requested}")
        choices.append(CheckpointChoice(f"{folder.name} ({folder})", folder))
    demo = find_demo_checkpoint()
    if demo is not None:
        choices.append(CheckpointChoice(f"make demo: trained on SynthTalk ({demo})", demo))
    choices.append(CheckpointChoice("random weights (small network, untrained)",
                                    random_weights_checkpoint(cache_dir), random_weights=True))
    return choices


def create_app(args: argparse.Namespace, root: Path):
    """Examples, checkpoints, the service and the page for a workspace ``root``; returns
    ``(blocks, service, allowed_paths)``."""
    from pdfgc.generation import resolve_device

    from .examples import default_cache_dir, example_inputs
    from .service import GenerationService, Settings
    from .ui import build_app

    resolve_device(args.device)  # a CUDA device without CUDA fails now, not at the first request
    cache_dir = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    log.info("examples and random weights: %s", cache_dir)
    try:
        choices = checkpoint_choices(cache_dir, args.checkpoints)
        examples = None if args.no_examples else example_inputs(cache_dir)
    except OSError as exc:  # the cache folder cannot be made or written
        raise PdfgcError(f"cannot write the app's cache folder {cache_dir} ({exc.strerror or exc}); "
                         "give another with --cache-dir") from None
    settings = Settings(workspace=root, max_upload_mb=args.max_upload_mb,
                        max_audio_seconds=args.max_audio_seconds, device=args.device)
    service = GenerationService(settings)
    blocks = build_app(service, choices, examples, networks_default=args.networks)
    return blocks, service, [str(cache_dir.resolve())]


def launch(blocks, args: argparse.Namespace, allowed_paths: list[str], block: bool = True):
    """Queue (one generation at a time) and serve ``blocks``; uploads over the limit are refused."""
    blocks.queue(max_size=16, default_concurrency_limit=1)
    try:
        return blocks.launch(server_name=args.host, server_port=args.port, share=args.share,
                             max_file_size=int(args.max_upload_mb * 2**20), allowed_paths=allowed_paths,
                             show_error=False, ssr_mode=False, mcp_server=False, quiet=not block,
                             prevent_thread_lock=not block)
    except OSError as exc:  # port taken, address not available, ...
        raise PdfgcError(f"cannot serve on {args.host}:{args.port}: {exc}") from None


def main(argv: Optional[list[str]] = None) -> None:
    """Entry of ``app.py`` / ``pdfgc-app``: serve until interrupted."""
    args = parse_args(argv)
    # `kill` / `timeout` send SIGTERM: leave like Ctrl-C does, so the workspace is removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with workspace() as root:
        print("starting the web app (the first start also renders the built-in examples) ...", flush=True)
        blocks, _, allowed = create_app(args, root)
        try:
            launch(blocks, args, allowed)
        except KeyboardInterrupt:
            pass
        finally:
            blocks.close()
