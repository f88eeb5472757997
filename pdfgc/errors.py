"""User-facing errors: one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_BAD_INPUT = 2


class PdfgcError(Exception):
    """An error caused by the user's input or environment, shown as one line.

    The message must name the problem and, where there is one, the file:
    ``PdfgcError(f"audio file not found: {path}")``.
    """


def cli_guard(main: F) -> F:
    """Wrap an entry point: a :class:`PdfgcError` prints ``error: <msg>`` and exits 2.

    Set ``PDFGC_DEBUG=1`` to get the full traceback instead.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except PdfgcError as exc:
            if os.environ.get("PDFGC_DEBUG"):
                raise
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)

    return wrapper  # type: ignore[return-value]
