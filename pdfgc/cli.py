"""Console scripts (``pdfgc-train``, ``pdfgc-generate``, ``pdfgc-evaluate``, ``pdfgc-app``,
``pdfgc-preprocess``).

Each runs the matching entry script of the repository root, so the console script and
``python train.py ...`` behave identically (same Hydra config folder, same overrides).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _run_script(name: str) -> None:
    script = REPO_ROOT / name
    if not script.exists():
        print(f"error: {script} not found (pdfgc must be installed from its repository, `pip install -e .`)",
              file=sys.stderr)
        sys.exit(2)
    sys.argv[0] = str(script)
    runpy.run_path(str(script), run_name="__main__")


def train_main() -> None:
    """``pdfgc-train``: same as ``python train.py``."""
    _run_script("train.py")


def generate_main() -> None:
    """``pdfgc-generate``: same as ``python generate.py``."""
    _run_script("generate.py")


def evaluate_main() -> None:
    """``pdfgc-evaluate``: same as ``python evaluate.py``."""
    _run_script("evaluate.py")


def app_main() -> None:
    """``pdfgc-app``: same as ``python app.py`` (the web demo)."""
    _run_script("app.py")


def preprocess_main() -> None:
    """``pdfgc-preprocess``: same as ``python preprocess.py`` (videos -> processed data)."""
    _run_script("preprocess.py")
