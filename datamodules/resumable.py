"""Data loading that resumes mid-epoch exactly, for index-addressed random datasets.

Our datasets draw sample ``i`` from ``(seed, i)``, so the only state of a training stream is
how many batches were consumed. :class:`ResumableLoader` exposes it through ``state_dict`` /
``load_state_dict``, which Lightning saves in every checkpoint and restores on
``ckpt_path=last``: a resumed run sees exactly the batches the uninterrupted run would have.
Under DDP each rank takes every ``world_size``-th sample, so ranks see different data
(Lightning's own sampler replacement is turned off by the trainer presets for this loader).
"""

from __future__ import annotations

from typing import Iterator

import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class OffsetSampler(Sampler[int]):
    """Indices ``start + rank, start + rank + world, ...`` below ``length`` (global index space)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        rank, world = _rank_world()
        return iter(range(self.start + rank, self.length, world))

    def __len__(self) -> int:
        rank, world = _rank_world()
        return len(range(self.start + rank, self.length, world))


class ResumableLoader(DataLoader):
    """A DataLoader whose position (batches consumed per rank) is saved and restored.

    Lightning prefetches one batch ahead of the step it checkpoints, so the position saved is
    the number of batches *handed to the training step*, tracked by :meth:`mark_consumed`
    through the ``on_train_batch_start`` hook of the data module's callback.
    """

    def __init__(self, dataset, batch_size: int = 1, sampler=None, **kwargs) -> None:
        # Lightning re-creates loaders with its own sampler for some modes (overfit_batches,
        # its distributed sampler): that sampler is then used as is, without resumption.
        self.offset_sampler = sampler if sampler is not None else OffsetSampler(len(dataset))
        super().__init__(dataset, batch_size=batch_size, sampler=self.offset_sampler, **kwargs)
        self._resume_at = 0
        self.consumed = 0

    def __iter__(self):
        _, world = _rank_world()
        if isinstance(self.offset_sampler, OffsetSampler):
            self.offset_sampler.start = self._resume_at * self.batch_size * world
        self.consumed = self._resume_at
        self._resume_at = 0
        return super().__iter__()

    def mark_consumed(self) -> None:
        self.consumed += 1

    def state_dict(self) -> dict:
        return {"batches": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = int(state.get("batches", 0))
