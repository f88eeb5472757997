"""Exponential moving average of the generator weights (torch's AveragedModel).

The EMA copy is a submodule of the stage, so it lands in every Lightning checkpoint and a
resumed run continues it exactly; validation, samples and export use it.
"""

from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def make_ema(network: nn.Module, decay: float) -> AveragedModel:
    """An EMA shadow of ``network`` (buffers copied, not averaged)."""
    ema = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.requires_grad_(False)
    return ema
