"""Stage 3's generator G from stage 1's G0: same layers, a different style input.

G0 is driven by ``[id 2048 | f_mot 512]``, G by ``[id 2048 | mouth 500 | emotion 30 | eye 6 |
pose 6]``. Every tensor whose shape agrees is copied; in each style-input matrix
(``*.modulation``, an :class:`~pdfgc.networks.stylegan_layers.EqualLinear`) the identity columns
are copied at G0's effective scale (the run-time ``1/sqrt(in_dim)`` differs: 2560 against 2590),
and the motion columns cannot be: they read f_mot, G's read the factor codes. Copied as they are
they turned the SynthTalk start into noise (the audio lip code is ~8 in size where f_mot is
~0.1: held-out L1 0.86 against G0's 0.17).

So the motion columns start at zero (G renders the identity at G0's f_mot = 0), and once data is
at hand (:meth:`EmotionGeneratorStage.on_train_start`) they become G0's f_mot columns composed
with a ridge map from the codes to the same frame's f_mot: G then starts as G0 driven by its
codes' best linear guess of f_mot (SynthTalk: R² 0.90 of f_mot, L1 0.170 against G0's 0.170).
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch

from pdfgc.networks.codes import ID_DIM, UNIFIED_MOTION_DIM

#: per style-input layer: G0's effective f_mot columns (C, 512) and effective bias (C,), float64
MotionColumns = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _style_inputs(generator: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in generator.named_modules() if name.endswith("modulation")}


@torch.no_grad()
def generator_from_g0(generator: torch.nn.Module, g0_state: Mapping[str, torch.Tensor]) -> MotionColumns:
    """Load G0's weights ``g0_state`` (style 2560) into ``generator`` (style 2590).

    Tensors with matching key and shape are copied; style-input layers keep G0's identity
    response exactly and start with zero motion columns. Returns G0's effective f_mot columns
    and biases per style-input layer, for :func:`fold_codes_into_generator`.
    """
    own = generator.state_dict()
    for key, value in own.items():
        if key in g0_state and g0_state[key].shape == value.shape:
            own[key] = g0_state[key].clone()
    generator.load_state_dict(own)
    motion: MotionColumns = {}
    for name, layer in _style_inputs(generator).items():
        weight, bias = g0_state.get(f"{name}.weight"), g0_state.get(f"{name}.bias")
        if weight is None or bias is None or weight.shape != (layer.weight.shape[0], ID_DIM + UNIFIED_MOTION_DIM):
            continue
        g0_scale = layer.lr_mul / weight.shape[1] ** 0.5  # EqualLinear's run-time scale in G0
        effective = weight.double() * g0_scale
        layer.weight[:, :ID_DIM] = (effective[:, :ID_DIM] / layer.scale).to(layer.weight.dtype)
        layer.weight[:, ID_DIM:] = 0
        layer.bias.copy_(bias)
        motion[name] = (effective[:, ID_DIM:].clone(), bias.double() * layer.lr_mul)
    return motion


def _moments(x: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row count, column mean and sample std of ``x`` (N, D) over all ranks' rows (float64)."""
    stats = reduce_sum(torch.cat([torch.tensor([float(len(x))], dtype=x.dtype, device=x.device),
                                  x.sum(0), (x * x).sum(0)]))
    n, d = stats[0], x.shape[1]
    mean = stats[1:1 + d] / n
    var = (stats[1 + d:] / n - mean ** 2).clamp(min=0) * n / (n - 1).clamp(min=1)
    return n, mean, var.sqrt()


def ridge_code_map(x: torch.Tensor, y: torch.Tensor, ridge: float,
                   reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine ridge regression ``y ≈ x @ M + c`` on standardised columns of ``x``.

    :param x: (N, Dx) codes; :param y: (N, Dy) targets (this rank's rows).
    :param reduce_sum: sums a tensor over DDP ranks (identity on one process), so that every
        rank fits the same map from all ranks' rows.
    :returns: ``M`` (Dx, Dy) and ``c`` (Dy,), float64.
    """
    x, y = x.double(), y.double()
    n, mean_x, std = _moments(x, reduce_sum)
    _, mean_y, _ = _moments(y, reduce_sum)
    std = std + 1e-5
    # Centred, standardised normal equations, from the sums alone.
    cov_xx = (reduce_sum(x.T @ x) / n - torch.outer(mean_x, mean_x)) / torch.outer(std, std)
    cov_xy = (reduce_sum(x.T @ y) / n - torch.outer(mean_x, mean_y)) / std[:, None]
    dx = x.shape[1]
    standardised = torch.linalg.solve(cov_xx + ridge * torch.eye(dx, dtype=x.dtype, device=x.device), cov_xy)
    code_map = standardised / std[:, None]
    return code_map, mean_y - mean_x @ code_map


@torch.no_grad()
def fold_codes_into_generator(generator: torch.nn.Module, motion: MotionColumns,
                              code_map: torch.Tensor, shift: torch.Tensor) -> None:
    """Make G read its motion codes ``x`` (B, 542) as G0 read ``f_mot = x @ code_map + shift``.

    ``motion`` from :func:`generator_from_g0`; ``code_map`` (542, 512), ``shift`` (512,). Each
    style-input layer's motion columns and bias absorb the map: official keys and shapes.
    """
    layers = _style_inputs(generator)
    for name, (columns, bias) in motion.items():
        layer = layers[name]
        columns, bias = columns.to(code_map.device), bias.to(code_map.device)
        layer.weight[:, ID_DIM:] = (columns @ code_map.T / layer.scale).to(layer.weight.dtype)
        layer.bias.copy_(((bias + columns @ shift) / layer.lr_mul).to(layer.bias.dtype))


def code_gain(x: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
              floor: float = 1e-2) -> torch.Tensor:
    """Per-dim gain ``1 / std`` of the codes ``x`` (N, D) over all ranks' rows, ``std`` floored at
    ``floor`` (a dead dim is not blown up); float32 (D,).

    EqualLinear assumes unit-scale inputs: pose and emotion codes (std ~0.05) reach G's style
    layers 100x weaker than the lip code (~8), and Adam's steps move their response as little.
    """
    _, _, std = _moments(x.double(), reduce_sum)
    return (1 / std.clamp(min=floor)).float()


@torch.no_grad()
def fold_code_gain(generator: torch.nn.Module, gain: torch.Tensor) -> torch.nn.Module:
    """A copy of ``generator`` that reads raw codes as ``generator`` reads ``codes * gain``
    (``gain`` (542,), one per motion style input): the gain goes into every style-input layer's
    motion columns, so the export keeps the official keys, shapes and inputs."""
    folded = copy.deepcopy(generator)
    for layer in _style_inputs(folded).values():
        layer.weight[:, ID_DIM:] *= gain.to(layer.weight)
    return folded
