"""Why a clip is rejected: the reasons written to ``rejected.jsonl`` and counted in the summary."""

from __future__ import annotations

# reason -> what it means (docs/preprocessing.md lists the same table).
REASONS = {
    "unreadable": "the file cannot be decoded (not a media file, truncated, no video stream, bad images)",
    "no_audio": "no audio stream in the video, or no audio file beside the frame folder",
    "silent_audio": "the audio is silent (RMS below min_audio_rms)",
    "too_short": "fewer than min_frames frames (with audio)",
    "no_face": "no face found in any frame",
    "face_missing": "too many frames without a face, or a longer gap than max_gap_frames",
    "several_faces": "several faces in more than max_several_faces_fraction of the frames",
    "error": "an unexpected error while processing (a bug: please report the logged line)",
}


class ClipRejected(Exception):
    """One clip cannot be used; the run logs it and goes on.

    Attributes:
        reason: one of :data:`REASONS`.
        detail: one line naming the problem (and the file).
    """

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail
