"""The SynthTalk factor oracle used by evaluation: loaded from a file, or trained once and cached."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pdfgc.metrics.oracle import load_oracle, save_oracle, synthtalk_oracle_data, train_oracle

log = logging.getLogger(__name__)


def oracle_arrays(pool, frame_stride: int = 1) -> dict[str, np.ndarray]:
    """Oracle training arrays from a :class:`~pdfgc.synthtalk.world.ClipPool` (frames already cropped).

    The oracle reads the mouth as drawn (speech + emotion), the visible truth.
    """
    size = pool.images.shape[-2]
    sl = (slice(None), slice(None, None, frame_stride))
    n = lambda a: a[sl].reshape(-1, *a.shape[2:])  # noqa: E731
    F = pool.images[sl].shape[1]
    return {
        "images": n(pool.images), "pose": n(pool.pose), "gaze": n(pool.gaze), "blink": n(pool.blink),
        "mouth": n(pool.mouth_drawn), "emotion": np.repeat(pool.emotion, F),
        "eye_boxes": n(pool.eye_boxes) / size, "mouth_box": n(pool.mouth_box) / size,
        "speaker": np.repeat(pool.speakers, F),
    }


def get_oracle(path: str | None, cache_path: Path, test_pool, steps: int, batch_size: int, speakers: int,
               image_size: int, seed: int = 0):
    """``(oracle, report)``: from ``path`` if given, else the cached one, else trained now and cached.

    Trained on frames with independent factors per frame from speakers no world split uses
    (:func:`~pdfgc.metrics.oracle.synthtalk_oracle_data`): trained on the clip pool it memorises
    clips (one emotion per clip, near-duplicate frames). Scored on the held-out ``test_pool``.
    """
    if path:
        return load_oracle(path), {}
    if cache_path.exists():
        log.info("factor oracle from cache %s", cache_path)
        return load_oracle(cache_path), {}
    log.info("training the factor oracle (%d steps on %d speakers); cached at %s", steps, speakers, cache_path)
    data = synthtalk_oracle_data(num_speakers=speakers, image_size=image_size, seed=seed, progress=True)
    # All of torch's threads: evaluation runs alone, and on 2 idle cores 2 threads take 0.65x the
    # time of 1 (100 steps: 9.1 s against 14.0 s).
    oracle, report = train_oracle(data, steps=steps, batch_size=batch_size, seed=seed,
                                  eval_data=oracle_arrays(test_pool, frame_stride=2))
    save_oracle(oracle, cache_path, extra={"report": report})
    return oracle, report
