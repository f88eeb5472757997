"""Sample grids (and, where the stage can, videos) from a fixed validation batch.

Each stage module exposes ``sample_rows(batch) -> {row name: (B, 3, S, S) in [-1, 1]}``:
one row per view or control factor (stage 3: source, target, reconstruction, then each
factor driven from another sample). The callback renders the first validation batch at the
end of every ``every_n_epochs`` validation epoch on rank 0 into ``<run>/samples/`` and hands
the grid to loggers that take images (W&B, TensorBoard). Users pick checkpoints by eye.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid, save_image

from pdfgc.io import atomic_path

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
        pl_module.train(was_training)
        grid = make_grid(torch.cat([r.float().cpu() for r in rows.values()]), nrow=len(next(iter(rows.values()))),
                         normalize=True, value_range=(-1, 1))
        out = Path(trainer.default_root_dir) / "samples" / f"step_{trainer.global_step:07d}.png"
        with atomic_path(out) as tmp:
            save_image(grid, tmp)
        log.info("samples (rows: %s) -> %s", ", ".join(rows), out)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="samples", images=[grid], caption=[" / ".join(rows)], step=trainer.global_step)
            elif hasattr(logger, "experiment") and hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples", grid, trainer.global_step)
