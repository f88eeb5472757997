"""Moments and affine ridge regression over all DDP ranks' rows, in float64.

One fit serves every linear map a stage folds into a network's last layer: stage 2's lip code
onto the audio code (:meth:`FineMotionStage.fold_lip_onto_audio`) and stage 3's codes onto G0's
f_mot (:meth:`EmotionGeneratorStage.on_train_start`).
"""

from __future__ import annotations

from typing import Callable

import torch

#: sums a tensor over DDP ranks; the identity on one process
ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


def moments(x: torch.Tensor, reduce_sum: ReduceSum = _no_reduce
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row count, column mean (D,) and sample std (D,) of ``x`` (N, D) over all ranks' rows,
    from sums alone (one reduction), in ``x``'s dtype (callers pass float64)."""
    stats = reduce_sum(torch.cat([torch.tensor([float(len(x))], dtype=x.dtype, device=x.device),
                                  x.sum(0), (x * x).sum(0)]))
    n, d = stats[0], x.shape[1]
    mean = stats[1:1 + d] / n
    var = (stats[1 + d:] / n - mean ** 2).clamp(min=0) * n / (n - 1).clamp(min=1)
    return n, mean, var.sqrt()


def affine_ridge(x: torch.Tensor, y: torch.Tensor, ridge: float, reduce_sum: ReduceSum = _no_reduce
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine ridge regression ``y ≈ x @ M + c`` on standardised columns of ``x``.

    :param x: (N, Dx) inputs; :param y: (N, Dy) targets (this rank's rows).
    :param ridge: added to the diagonal of the standardised ``x``'s covariance (a correlation
        matrix), so it does not depend on the size of ``x``.
    :param reduce_sum: sums over DDP ranks, so that every rank fits the same map from all rows.
    :returns: ``M`` (Dx, Dy) and ``c`` (Dy,), float64.
    """
    x, y = x.double(), y.double()
    n, mean_x, std = moments(x, reduce_sum)
    _, mean_y, _ = moments(y, reduce_sum)
    std = std + 1e-5
    # Centred, standardised normal equations, from the sums alone.
    cov_xx = (reduce_sum(x.T @ x) / n - torch.outer(mean_x, mean_x)) / torch.outer(std, std)
    cov_xy = (reduce_sum(x.T @ y) / n - torch.outer(mean_x, mean_y)) / std[:, None]
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    standardised = torch.linalg.solve(cov_xx + ridge * eye, cov_xy)
    code_map = standardised / std[:, None]
    return code_map, mean_y - mean_x @ code_map
