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


def _standardise_with(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (z - mean) / std


@torch.no_grad()
def fit_adversary(x_all: torch.Tensor, y_all: torch.Tensor, ridge: float, eps: float = 1e-5):
    """Ridge adversary ``y <- x`` on standardised columns of the stacked rows ``(M, Dx)``,
    ``(M, Dy)``. Returns ``(mean (1, Dx), std (1, Dx), weights (Dx, Dy))`` (float32)."""
    x, y = x_all.double(), y_all.double()
    mean, std = x.mean(0, keepdim=True), x.var(0, unbiased=False, keepdim=True).add(eps).sqrt()
    xa = (x - mean) / std
    ya = (y - y.mean(0, keepdim=True)) / y.var(0, unbiased=False, keepdim=True).add(eps).sqrt()
    m, d = xa.shape
    gram = xa.T @ xa / m + ridge * torch.eye(d, dtype=xa.dtype, device=xa.device)
    weights = torch.linalg.solve(gram, xa.T @ ya / m)
    return mean.float(), std.float(), weights.float()


def explained_share(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, weights: torch.Tensor,
                    eps: float = 1e-5) -> torch.Tensor:
    """``mean (x̂ W)²`` for codes ``x (B, Dx)`` standardised by a fitted adversary."""
    batch = _standardise_with(x.float(), mean.to(x.device), std.to(x.device))
    return (batch @ weights.to(x.device)).pow(2).mean()


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
    return explained_share(x, *fit_adversary(x_all, y_all, ridge, eps), eps=eps)


class LinearLeakage(torch.nn.Module):
    """``L_leak`` with its memory banks and its adversary (all buffers: saved in checkpoints, so
    a resumed run continues exactly).

    ``loss = leak(x, y)`` refits the adversary on [batch ∪ banks] every ``refit_every`` calls
    (a fit over a few thousand rows of a 500-d code costs more than the rest of the step) and
    uses the last fit in between; it is 0 until [batch ∪ banks] holds ``min_rows`` rows (a fit
    on a handful of rows explains noise). Then call ``leak.push(x, y)`` with the (gathered, under DDP)
    batch.
    """

    mean: torch.Tensor
    std: torch.Tensor
    weights: torch.Tensor
    calls: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, code_dim: int, factor_dim: int, bank_size: int = 1024, ridge: float = 0.1,
                 refit_every: int = 1, min_rows: int = 64) -> None:
        super().__init__()
        self.code_bank = MemoryBank(code_dim, bank_size)
        self.factor_bank = MemoryBank(factor_dim, bank_size)
        self.ridge, self.refit_every = float(ridge), max(int(refit_every), 1)
        self.register_buffer("mean", torch.zeros(1, code_dim))
        self.register_buffer("std", torch.ones(1, code_dim))
        self.register_buffer("weights", torch.zeros(code_dim, factor_dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.min_rows = min(int(min_rows), self.code_bank.size)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows = len(self.code_bank) + len(x)
        if rows < self.min_rows:  # too few rows for a fit of this width: it would explain noise
            if self.training:
                self.calls += 1
            return x.sum() * 0.0
        if self.training and int(self.calls) % self.refit_every == 0 or not bool(self.fitted):
            stacked = fit_adversary(torch.cat([x.detach().float(), self.code_bank.get()]),
                                    torch.cat([y.detach().float(), self.factor_bank.get()]), self.ridge)
            if not self.training:  # validation never changes the training state
                return explained_share(x, *stacked)
            for buffer, value in zip((self.mean, self.std, self.weights), stacked):
                buffer.copy_(value)
            self.fitted.fill_(True)
        if self.training:
            self.calls += 1
        return explained_share(x, self.mean, self.std, self.weights)

    @torch.no_grad()
    def push(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.code_bank.push(x.detach().float())
        self.factor_bank.push(y.detach().float())
