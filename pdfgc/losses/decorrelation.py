"""Expression/audio decorrelation of stage 3: **L_decor** with memory banks.

The paper (Fig. 2, stage 3) computes L_decor between an "exp feat memory bank" and an "aud feat
memory bank" but gives no formula. Ours (a documented choice):

Let the current batch hold ``B`` paired samples ``e_b`` (window-averaged expression code
``f̄_exp``, ``De`` dims) and ``a_b`` (audio feature, ``Da`` dims), and the banks hold ``K``
earlier pairs (detached). Stack ``Z_e = [e_1..e_B ; sg(E_1..E_K)]`` (``M = B + K`` rows) and
likewise ``Z_a``. Standardise every column over the ``M`` rows,

    ẑ_e[:, i] = (Z_e[:, i] - mean_i) / sqrt(var_i + eps)      (biased variance)

form the ``De x Da`` cross-correlation (Pearson) matrix ``C = ẑ_eᵀ ẑ_a / M`` and take

    L_decor = (1 / (De * Da)) * sum_{i,j} C_ij²

Only the current batch carries gradient (including through the mean/std). For independent
features ``E[C_ij²] ≈ 1/M``, so the floor of the loss is ``~1/M``: the banks make the statistic
meaningful (``M`` of a few thousand) where one batch (``M = 32``) would be noise. The loss
removes *linear* dependence only (a linear-probe notion of leakage), which is what the paper's
"feature-level decorrelation" suggests.

Usage per step: ``loss = decorrelation_loss(e, a, exp_bank, audio_bank)`` with the banks as
they were *before* this batch, then ``exp_bank.push(e); audio_bank.push(a)`` (after
``all_gather`` under DDP, so every rank keeps identical banks). Push both banks together: row
``k`` of one must pair with row ``k`` of the other.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

__all__ = ["MemoryBank", "decorrelation_loss", "cross_correlation"]


class MemoryBank(nn.Module):
    """FIFO queue of the last ``size`` detached feature vectors of width ``dim``.

    State lives in buffers (``features (size, dim)``, ``ptr``, ``count``), so it is saved in
    checkpoints and a resumed run continues with exactly the same bank. Entries are stored in
    float32 whatever the input dtype.

    DDP: the caller gathers features from all ranks before ``push`` so that banks stay equal.
    """

    features: torch.Tensor
    ptr: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if dim <= 0 or size <= 0:
            raise ValueError(f"MemoryBank needs dim > 0 and size > 0, got dim={dim}, size={size}")
        self.dim = int(dim)
        self.size = int(size)
        self.register_buffer("features", torch.zeros(self.size, self.dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def push(self, features: torch.Tensor) -> None:
        """Append ``features (B, dim)`` (detached), overwriting the oldest entries when full."""
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features (B, {self.dim}), got {tuple(features.shape)}")
        x = features.detach().to(device=self.features.device, dtype=self.features.dtype)
        n = x.shape[0]
        if n == 0:
            return
        if n >= self.size:
            self.features.copy_(x[-self.size:])
            self.ptr.zero_()
            self.count.fill_(self.size)
            return
        p = int(self.ptr)
        first = min(n, self.size - p)
        self.features[p:p + first] = x[:first]
        if first < n:
            self.features[: n - first] = x[first:]
        self.ptr.fill_((p + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))

    def get(self) -> torch.Tensor:
        """The valid entries, oldest first, ``(len(self), dim)`` (a detached view/copy)."""
        n = int(self.count)
        if n < self.size:
            return self.features[:n].detach()
        p = int(self.ptr)
        return torch.cat([self.features[p:], self.features[:p]], dim=0).detach()

    @torch.no_grad()
    def reset(self) -> None:
        self.features.zero_()
        self.ptr.zero_()
        self.count.zero_()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def cross_correlation(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Pearson cross-correlation ``(Dx, Dy)`` of the columns of ``x (M, Dx)``, ``y (M, Dy)``."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected (M, Dx) and (M, Dy); got {tuple(x.shape)}, {tuple(y.shape)}")
    xs = _standardise(x.float(), eps)
    ys = _standardise(y.float(), eps)
    return xs.transpose(0, 1) @ ys / x.shape[0]


def decorrelation_loss(
    exp_features: torch.Tensor,
    audio_features: torch.Tensor,
    exp_bank: Optional[MemoryBank] = None,
    audio_bank: Optional[MemoryBank] = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Expression/audio decorrelation **L_decor** (formula in the module docstring).

    ``L_decor = mean_{i,j} Corr(e_i, a_j)²`` over the current batch ∪ the banks' entries.

    Args:
        exp_features: ``(B, De)`` window-averaged expression codes of this batch (with grad).
        audio_features: ``(B, Da)`` paired audio features of this batch (detach them at the
            call site if the audio encoder must not receive this gradient).
        exp_bank, audio_bank: :class:`MemoryBank` of widths ``De`` and ``Da`` holding earlier
            pairs (same count), or both ``None`` for batch-only statistics. Not modified here.
        eps: variance floor of the standardisation.

    Returns:
        Scalar float32 tensor in ``[0, 1]``: ``~1/M`` for independent features (``M`` = batch +
        bank rows), 1 only if every expression dim is perfectly correlated with every audio dim.
    """
    if exp_features.dim() != 2 or audio_features.dim() != 2:
        raise ValueError(
            f"expected (B, De) and (B, Da); got {tuple(exp_features.shape)}, "
            f"{tuple(audio_features.shape)}"
        )
    if exp_features.shape[0] != audio_features.shape[0]:
        raise ValueError(
            f"batch sizes differ: {exp_features.shape[0]} expression vs "
            f"{audio_features.shape[0]} audio features"
        )
    if (exp_bank is None) != (audio_bank is None):
        raise ValueError("pass both memory banks or neither")
    e = exp_features.float()
    a = audio_features.float()
    if exp_bank is not None and audio_bank is not None:
        if len(exp_bank) != len(audio_bank):
            raise ValueError(
                f"memory banks hold {len(exp_bank)} expression and {len(audio_bank)} audio "
                "entries; push both together so rows stay paired"
            )
        if len(exp_bank) > 0:
            e = torch.cat([e, exp_bank.get().to(e.device)], dim=0)
            a = torch.cat([a, audio_bank.get().to(a.device)], dim=0)
    if e.shape[0] < 2:
        raise ValueError("decorrelation needs at least 2 samples (batch + bank)")
    c = cross_correlation(e, a, eps)
    return c.pow(2).mean()
