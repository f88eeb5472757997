"""Linear leakage penalty: keep a code from carrying factors other heads own.

The code-factor matrix scores a code by how much of a factor a *linear* probe reads from it.
Nothing in the InfoNCE makes the visual lip code drop the head pose or the blinks that the
unified feature also carries (a 500-d code copied from f_mot keeps them), and nothing in the
reconstruction keeps the window-averaged emotion code from patching pose. This loss removes what
a linear adversary reads (our addition; the paper does not have it).

Per step, with the current batch ``x (B, Dx)`` / ``y (B, Dy)`` (the code, and what it must not
carry, e.g. pose labels) and memory banks of ``K`` earlier detached pairs:

1. stack batch and banks, standardise every column with the stack's (detached) mean and std;
2. fit the ridge adversary ``W = (X̂ᵀX̂/M + λI)⁻¹ X̂ᵀŶ/M`` on the detached stack
   (closed form, float64; ``λ`` = ``ridge``; 1e-3 was tried: its near-OLS weights turn
   every low-variance direction into a huge, noisy gradient and the InfoNCE stalled);
3. ``L_leak = mean over the batch and the Dy columns of (x̂_b W)²``: the share of each
   (unit-variance) column of ``y`` that the adversary explains on this batch.

The gradient, ``∝ x̂_b W Wᵀ``, lies in the (at most ``Dy``-dimensional) span of the
adversary's directions: it moves the codes to the bank's mean along those directions and leaves
the rest of the code alone. A code with nothing else to carry can still shrink to a constant,
so pair the loss with a term that needs the code (InfoNCE; the emotion class).
(Tried and dropped: dividing by the batch codes' spread makes shrinking useless, but its
gradient inflates every other direction too, and the lip code kept pose and blinks for the
evaluation's probe: lip/pose 0.24, lip/blink 0.51 against 0.15 and 0.)

The gradient goes only into the batch codes and pushes them off the adversary's directions;
the adversary is refitted every step, so the code cannot hide the factor in another direction
of the same (linear) kind. ``L_leak`` is ``~ (effective rank of x) / M`` for independent
codes and approaches the in-sample R² of the probe when ``y`` is linearly readable from ``x``.
"""

from __future__ import annotations

import torch

from pdfgc.losses.decorrelation import MemoryBank

__all__ = ["LinearLeakage", "linear_leakage"]


@torch.no_grad()
def fit_adversary(x_all: torch.Tensor, y_all: torch.Tensor, ridge: float, eps: float = 1e-5):
    """Ridge adversary ``y <- x`` on standardised columns of the stacked rows ``(M, Dx)``,
    ``(M, Dy)``. Returns ``(mean (1, Dx), std (1, Dx), weights (Dx, Dy))`` (float32).
    Ridge solves every column of ``y`` on its own, so one fit serves several factor groups."""
    x, y = x_all.double(), y_all.double()
    mean, std = x.mean(0, keepdim=True), x.var(0, unbiased=False, keepdim=True).add(eps).sqrt()
    xa = (x - mean) / std
    ya = (y - y.mean(0, keepdim=True)) / y.var(0, unbiased=False, keepdim=True).add(eps).sqrt()
    m, d = xa.shape
    gram = xa.T @ xa / m + ridge * torch.eye(d, dtype=xa.dtype, device=xa.device)
    weights = torch.linalg.solve(gram, xa.T @ ya / m)
    return mean.float(), std.float(), weights.float()


def explained_share(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, weights: torch.Tensor,
                    groups: tuple[int, ...] | None = None) -> torch.Tensor:
    """``mean (x̂ W)²`` for codes ``x (B, Dx)`` standardised by a fitted adversary; with
    ``groups`` (column counts of W summing to Dy) the sum over groups of each group's mean."""
    explained = (((x.float() - mean) / std) @ weights).pow(2)
    if groups is None:
        return explained.mean()
    return sum(part.mean() for part in explained.split(list(groups), dim=1))


def linear_leakage(x: torch.Tensor, y: torch.Tensor, x_bank: torch.Tensor | None = None,
                   y_bank: torch.Tensor | None = None, ridge: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``L_leak`` of codes ``x (B, Dx)`` (with grad) against ``y (B, Dy)`` (no grad needed).

    ``x_bank (K, Dx)``, ``y_bank (K, Dy)``: earlier rows (detached), paired row by row.
    Returns a float32 scalar, >= 0.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected x (B, Dx) and y (B, Dy); got {tuple(x.shape)}, {tuple(y.shape)}")
    if (x_bank is None) != (y_bank is None):
        raise ValueError("pass both banks or neither")
    x_all, y_all = x.detach().float(), y.detach().float()
    if x_bank is not None and len(x_bank):
        if len(x_bank) != len(y_bank):
            raise ValueError(f"banks hold {len(x_bank)} code and {len(y_bank)} factor rows; push them together")
        x_all = torch.cat([x_all, x_bank.to(x_all)])
        y_all = torch.cat([y_all, y_bank.to(y_all)])
    if x_all.shape[0] < 2:
        raise ValueError("linear_leakage needs at least 2 rows (batch + bank)")
    return explained_share(x, *fit_adversary(x_all, y_all, ridge, eps))


class LinearLeakage(torch.nn.Module):
    """``L_leak`` with its memory banks (buffers: saved in checkpoints, so a resumed run
    continues exactly).

    ``loss = leak(x, y)`` fits the adversary on [batch ∪ banks]; it is 0 until they hold
    ``min_rows`` rows (a fit on a handful of rows explains noise). Then call ``leak.push(x, y)``
    with the (gathered, under DDP) batch. ``factor_groups`` splits the ``factor_dim`` columns of
    ``y`` into groups (e.g. pose+eye, then a 500-d lip code) whose shares are summed, so that a
    wide group does not drown a narrow one; the codes are banked and fitted once for all.
    """

    def __init__(self, code_dim: int, factor_dim: int, bank_size: int = 1024, ridge: float = 0.1,
                 min_rows: int = 64, factor_groups: tuple[int, ...] | None = None) -> None:
        super().__init__()
        if factor_groups is not None and sum(factor_groups) != factor_dim:
            raise ValueError(f"factor_groups {tuple(factor_groups)} must sum to factor_dim {factor_dim}")
        self.code_bank = MemoryBank(code_dim, bank_size)
        self.factor_bank = MemoryBank(factor_dim, bank_size)
        self.ridge = float(ridge)
        self.min_rows = min(int(min_rows), self.code_bank.size)
        self.factor_groups = None if factor_groups is None else tuple(int(g) for g in factor_groups)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(self.code_bank) + len(x) < self.min_rows:
            return x.sum() * 0.0
        fit = fit_adversary(torch.cat([x.detach().float(), self.code_bank.get()]),
                            torch.cat([y.detach().float(), self.factor_bank.get()]), self.ridge)
        return explained_share(x, *fit, groups=self.factor_groups)

    @torch.no_grad()
    def push(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.code_bank.push(x.detach().float())
        self.factor_bank.push(y.detach().float())
