"""Channels-last (NHWC) training: the stage's networks and the batch's images in that layout.

oneDNN (CPU) and cuDNN (tensor cores) run convolutions in NHWC without the reorders NCHW costs;
the values are the same to float rounding. The callback converts the LightningModule when the
trainer sets it up (before the optimiser exists and before a checkpoint is restored, so Adam's
moments take the same layout) and every 4-D image batch before the step sees it. Checkpoints and
exports stay loadable either way: ``load_state_dict`` copies values, and exports are written
contiguous (:meth:`pdfgc.stages.base.StageModule.export`).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def to_channels_last(batch: Any) -> Any:
    """The batch with every 4-D floating tensor (``(B, C, H, W)``, e.g. images) in channels-last
    layout; other tensors, and nested dicts / lists / tuples around them, kept as they are."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {k: to_channels_last(v) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple takes its fields as arguments
        return type(batch)(*(to_channels_last(v) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(v) for v in batch)
    return batch


def module_to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Put ``module``'s 4-D parameters and buffers (convolution weights) in channels-last layout,
    in place (the same Parameter objects, so an optimiser built before still holds them), and
    switch on the ``channels_last`` attribute of networks that have one (the generator keeps its
    maps in that layout itself; its modulated weights are 5-D). Returns ``module``."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.dim() == 4 and not tensor.is_contiguous(memory_format=torch.channels_last):
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    for sub in module.modules():
        if isinstance(getattr(sub, "channels_last", None), bool):
            sub.channels_last = True
    return module


class ChannelsLast(pl.Callback):
    """Train (and validate) in channels-last layout. No options: add it to ``callbacks``."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        module_to_channels_last(pl_module)

    def _convert(self, batch: Any) -> None:
        # Lightning hands the hook the batch object the step gets: convert its entries in place.
        if isinstance(batch, dict):
            batch.update(to_channels_last(batch))
        elif isinstance(batch, list):
            batch[:] = to_channels_last(batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._convert(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._convert(batch)
