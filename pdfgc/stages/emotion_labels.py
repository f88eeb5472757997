"""Emotion classes where the data labels each clip (MEAD; SynthTalk; ``emotion`` = -1 elsewhere).

Stages 0 and 3 may train a linear classifier on a motion code with cross-entropy (our addition,
docs/training.md "Emotion labels"); both build it and score it here. Neither classifier is
exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def emotion_classifier(code_dim: int, num_emotions: int) -> nn.Module:
    """Linear classifier ``(B, code_dim) -> (B, num_emotions)`` logits on batch-standardised codes:
    the class must be read from the code's direction, not its size (a small code made it
    unlearnable)."""
    return nn.Sequential(nn.BatchNorm1d(code_dim, affine=False), nn.Linear(code_dim, num_emotions))


def any_labelled(labels: torch.Tensor | None) -> bool:
    """Whether a batch's ``emotion`` labels ``(B,)`` (or None: the data has none) hold a class."""
    return labels is not None and bool((labels >= 0).any())


def labelled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of ``logits (B, C)`` against clip labels ``(B,)``, unlabelled (-1) rows
    ignored; 0, still with a graph, when no row of the batch is labelled (see
    :func:`any_labelled`), so that under DDP the classifier gets a gradient on every rank."""
    if not any_labelled(labels):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels.long(), ignore_index=-1)
