"""Sample grids (and, where the stage can, videos) from a fixed validation batch.

Each stage module exposes ``sample_rows(batch) -> {row name: (B, 3, S, S) in [-1, 1]}``:
one row per view or control factor (stage 3: source, target, reconstruction, then each
factor driven from another sample). The callback renders the first validation batch at the
end of every ``every_n_epochs`` validation epoch on rank 0 into ``<run>/samples/`` and hands
the grid to loggers that take images (W&B, TensorBoard). Users pick checkpoints by eye.

Stages whose samples are time windows (``sample_video_over_window = True``; stage 3, whose
``frames`` are (B, K, 3, S, S) with the target at the centre index K//2, docs/design.md) also
get an mp4: video frame t is the same grid with the target moved to window frame t. Rolling the
window keeps every window-averaged code (the emotion code) fixed while the per-frame codes (pose,
eye, audio mouth) follow frame t, so each row plays one control factor over K frames.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid, save_image

from pdfgc.io import atomic_path
from pdfgc.video import to_uint8, write_video

log = logging.getLogger(__name__)


class SampleCallback(pl.Callback):
    """Render ``sample_rows`` of a fixed validation batch as a PNG grid (rows = views).

    :param every_n_epochs: render every N validation epochs
    :param num_samples: columns (samples of the batch) in the grid
    :param fps: frame rate of sample videos (stages that provide ``sample_video``)
    """

    def __init__(self, every_n_epochs: int = 1, num_samples: int = 4, fps: int = 25) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.fps = fps
        self._batch = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and self._batch is None:
            # Keep the first validation batch on CPU: the same samples every time.
            self._batch = {k: (v[: self.num_samples].detach().cpu() if torch.is_tensor(v) else v[: self.num_samples])
                           for k, v in batch.items()}

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or self._batch is None:
            return
        if trainer.current_epoch % self.every_n_epochs or not hasattr(pl_module, "sample_rows"):
            return
        batch = {k: (v.to(pl_module.device) if torch.is_tensor(v) else v) for k, v in self._batch.items()}
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            rows = pl_module.sample_rows(batch)
            video = self.render_video(pl_module, batch) if getattr(pl_module, "sample_video_over_window", False) else None
        pl_module.train(was_training)
        grid = rows_to_grid(rows)
        stem = Path(trainer.default_root_dir) / "samples" / f"step_{trainer.global_step:07d}"
        with atomic_path(stem.with_suffix(".png")) as tmp:
            save_image(grid, tmp)
        log.info("samples (rows: %s) -> %s", ", ".join(rows), stem.with_suffix(".png"))
        if video is not None:
            write_video(stem.with_suffix(".mp4"), video, fps=self.fps)
            log.info("sample video (%d frames) -> %s", len(video), stem.with_suffix(".mp4"))
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[grid], caption=[" / ".join(rows)], step=trainer.global_step)
            elif hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples", grid, trainer.global_step)

    @staticmethod
    def render_video(pl_module, batch) -> torch.Tensor:
        """``(K, H, W, 3)`` uint8: the sample grid with the window's target moved to each frame t."""
        window = batch["frames"].shape[1]
        frames = []
        for t in range(window):
            # Roll so that frame t sits at the centre index; window means are unchanged by a roll.
            shift = window // 2 - t
            moved = {k: (v.roll(shift, dims=1) if k in ("frames", "mels") else v) for k, v in batch.items()}
            frames.append(rows_to_grid(pl_module.sample_rows(moved)))
        video = to_uint8(torch.stack(frames) * 2 - 1)  # grids are in [0, 1]
        # H.264 needs even sides.
        return video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]


def rows_to_grid(rows: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rows ``{name: (B, 3, S, S) in [-1, 1]}`` -> one grid ``(3, H, W)`` in [0, 1], a row per entry."""
    return make_grid(torch.cat([r.float().cpu() for r in rows.values()]), nrow=len(next(iter(rows.values()))),
                     normalize=True, value_range=(-1, 1))
