"""Real videos -> the processed-data layout (``preprocess.py``; docs/preprocessing.md).

* :mod:`~pdfgc.preprocessing.discover`: the input clips (VoxCeleb2 tree, any folder of videos,
  one file, frame folders), their speaker, clip id, split and shard.
* :mod:`~pdfgc.preprocessing.clip`: one clip: decode, landmarks, alignment, pose, eyes, mel, write.
* :mod:`~pdfgc.preprocessing.quality`: landmark gaps and the face checks that reject a clip.
* :mod:`~pdfgc.preprocessing.records`: ``index.jsonl``, ``rejected.jsonl``, shard files, merging.
* :mod:`~pdfgc.preprocessing.run`: the run loop (sharding, workers, progress, resume, summary).
* :mod:`~pdfgc.preprocessing.rejection`: the rejection reasons.
"""

from pdfgc.preprocessing.rejection import REASONS, ClipRejected
from pdfgc.preprocessing.run import PreprocessConfig, Summary, run, run_from_config

__all__ = ["REASONS", "ClipRejected", "PreprocessConfig", "Summary", "run", "run_from_config"]
