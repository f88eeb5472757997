"""G: the StyleGAN2 generator of PD-FGC, started from the appearance map instead of a constant."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from .codes import STYLE_DIM
from .stylegan_layers import (DEFAULT_BLUR, ConstantInput, EqualLinear, ModulatedConv2d, PixelNorm,
                              StyledConv, ToRGB)

NOISE_MODES = ("fixed", "random", "none")
OFFICIAL_CHANNELS = {7: 512, 14: 512, 28: 512, 56: 512, 112: 256, 224: 128}
RELEASE_NOISE_SEED = 20202001


class Generator(nn.Module):
    """G: modulated-conv generator ``(style (B, style_dim), id_map (B, C0, m, m)) -> (B, 3, S, S)``.

    The style vector is used directly as w for every layer (the release's ``input_is_latent``);
    the appearance map ``id_map`` (``m = init_size``, ``C0 = input_channels``) replaces the
    constant input. Resolutions go ``init_size * 2**i`` up to ``size``; each stage is an upsampling
    StyledConv, a StyledConv and a ToRGB whose output is added to the upsampled RGB skip. The
    output passes through ``tanh`` so it lies in ``[-1, 1]``.

    Kept only so that the release's file loads key for key: the mapping MLP ``style`` (PixelNorm +
    ``mapping_layers`` EqualLinear, lr_mul 0.01), the constant ``input.input`` (both frozen:
    ``requires_grad=False``, so DDP never waits for their gradients) and the ``noises.noise_i``
    buffers.

    Args:
        size: output side S (224 official).
        init_size: side m of the start map (7 official); ``size = init_size * 2**k``.
        style_dim: length of the style vector (2590; 2560 for stage 1's G0).
        channels: channels per resolution, e.g. ``{7: 512, ..., 224: 128}``.
        input_channels: channels of ``id_map`` (512).
        mapping_layers: length of the unused mapping MLP (8 official, 0 to drop it).
        noise_mode: ``"fixed"`` (one map per layer drawn once from ``noise_seed`` and reused for
            every batch, the release's behaviour), ``"random"`` (fresh per sample and call, for
            training) or ``"none"``. Can be changed on the instance or per call.
        noise_seed: seed of the fixed noise (20202001, the release's).
        modconv_impl: modulated-conv implementation, ``"auto"`` (grouped conv on CUDA, input
            scaling on CPU), ``"grouped"`` or ``"scaled_input"``; all give the same result.
        channels_last: run the feature maps in channels-last memory layout (faster convolutions
            on CPU oneDNN and on tensor cores); same result up to float rounding.

    Weights may be cast to bfloat16/float16 (``generator.to(torch.bfloat16)``): inputs are cast to
    the weights' dtype, while the RGB skip sum and ``tanh`` stay float32; the image is float32.
    """

    def __init__(self, size: int = 224, init_size: int = 7, style_dim: int = STYLE_DIM,
                 channels: Mapping[int, int] | None = None, input_channels: int = 512,
                 mapping_layers: int = 8, mapping_lr_mul: float = 0.01,
                 blur_kernel: Sequence[float] = DEFAULT_BLUR, noise_mode: str = "fixed",
                 noise_seed: int = RELEASE_NOISE_SEED, modconv_impl: str = "auto",
                 channels_last: bool = False):
        super().__init__()
        channels = {int(k): int(v) for k, v in (channels or OFFICIAL_CHANNELS).items()}
        num_up = math.log2(size / init_size) if size >= init_size else -1.0
        if num_up < 0 or num_up != int(num_up):
            raise ValueError(f"Generator: size {size} must be init_size {init_size} times a power of 2")
        self.size = size
        self.init_size = init_size
        self.style_dim = style_dim
        self.input_channels = input_channels
        self.num_stages = int(num_up)
        resolutions = [init_size * 2 ** i for i in range(self.num_stages + 1)]
        missing = [r for r in resolutions if r not in channels]
        if missing:
            raise ValueError(f"Generator: channels has no entry for resolutions {missing}")
        self.channels = {r: channels[r] for r in resolutions}

        mapping: list[nn.Module] = [PixelNorm()]
        for _ in range(mapping_layers):
            mapping.append(EqualLinear(style_dim, style_dim, lr_mul=mapping_lr_mul, activation=True))
        self.style = nn.Sequential(*mapping)
        self.style.requires_grad_(False)

        c0 = self.channels[init_size]
        self.input = ConstantInput(input_channels, init_size)
        self.input.requires_grad_(False)  # never used: the appearance map replaces it
        impl = dict(impl=modconv_impl)
        self.conv1 = StyledConv(input_channels, c0, 3, style_dim, blur_taps=blur_kernel, **impl)
        self.to_rgb1 = ToRGB(c0, style_dim, upsample=False, **impl)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = c0
        for res in resolutions[1:]:
            out_ch = self.channels[res]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True,
                                         blur_taps=blur_kernel, **impl))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_taps=blur_kernel,
                                         **impl))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_taps=blur_kernel, **impl))
            in_ch = out_ch

        # Layer i's noise side: conv1 at m, then two convs per stage.
        self.noise_sides = [init_size] + [r for r in resolutions[1:] for _ in range(2)]
        self.num_layers = len(self.noise_sides)
        self.noises = nn.Module()
        for i, side in enumerate(self.noise_sides):
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, side, side))

        self.noise_mode = noise_mode
        self.channels_last = bool(channels_last)
        self._noise_seed = int(noise_seed)
        self._fixed_noise: list[torch.Tensor] | None = None  # CPU float32, not in the state_dict
        self._fixed_noise_cache: dict[tuple, list[torch.Tensor]] = {}

    @property
    def modconv_impl(self) -> str:
        """Implementation used by every modulated conv (settable; see the class docstring)."""
        return self.conv1.conv.impl

    @modconv_impl.setter
    def modconv_impl(self, value: str) -> None:
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.impl = value

    # -- noise ---------------------------------------------------------------------------------
    @property
    def noise_mode(self) -> str:
        return self._noise_mode

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise ValueError(f"Generator: noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        self._noise_mode = mode

    @property
    def noise_seed(self) -> int:
        return self._noise_seed

    @noise_seed.setter
    def noise_seed(self, seed: int) -> None:
        if int(seed) == getattr(self, "_noise_seed", None):
            return  # keep the cached maps: a captured CUDA graph reads them in place
        self._noise_seed = int(seed)
        self._fixed_noise = None
        self._fixed_noise_cache = {}

    def fixed_noise(self, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """The fixed noise maps, one ``(1, 1, side, side)`` per layer, drawn from ``noise_seed``."""
        if self._fixed_noise is None:
            gen = torch.Generator().manual_seed(self._noise_seed)
            self._fixed_noise = [torch.randn(1, 1, s, s, generator=gen) for s in self.noise_sides]
        key = (torch.device(device), dtype)
        if key not in self._fixed_noise_cache:
            self._fixed_noise_cache[key] = [n.to(device=device, dtype=dtype) for n in self._fixed_noise]
        return self._fixed_noise_cache[key]

    def _noise(self, mode: str, batch: int, like: torch.Tensor) -> list[torch.Tensor | None]:
        if mode == "fixed":
            return list(self.fixed_noise(like.device, like.dtype))
        if mode == "random":
            return [torch.randn(batch, 1, s, s, device=like.device, dtype=like.dtype)
                    for s in self.noise_sides]
        return [None] * self.num_layers

    # -- forward -------------------------------------------------------------------------------
    def forward(self, style: torch.Tensor, id_map: torch.Tensor, return_styles: bool = False,
                noise_mode: str | None = None):
        """Render ``(B, 3, size, size)`` in [-1, 1] from ``style (B, style_dim)`` and ``id_map``.

        ``id_map`` is ``(B, input_channels, init_size, init_size)`` (E_app's map). With
        ``return_styles=True`` also returns the list of the ToRGB modulation styles
        ``(B, C_i)``, one per resolution (the release's ``style_feature_loss`` output).
        """
        b = style.shape[0]
        if style.dim() != 2 or style.shape[1] != self.style_dim:
            raise ValueError(f"Generator: style must be (B, {self.style_dim}), got {tuple(style.shape)}")
        m = self.init_size
        if tuple(id_map.shape) != (b, self.input_channels, m, m):
            raise ValueError(f"Generator: id_map must be ({b}, {self.input_channels}, {m}, {m}), "
                             f"got {tuple(id_map.shape)}")
        mode = noise_mode or self.noise_mode
        if mode not in NOISE_MODES:
            raise ValueError(f"Generator: noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        dtype = self.conv1.conv.weight.dtype  # float32, or the dtype the weights were cast to
        style, id_map = style.to(dtype), id_map.to(dtype)
        if self.channels_last:
            id_map = id_map.contiguous(memory_format=torch.channels_last)  # later maps follow
        noise = self._noise(mode, b, id_map)

        out = self.conv1(id_map, style, noise[0])
        skip, s = self.to_rgb1(out, style)
        rgb_styles = [s]
        for i, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * i](out, style, noise[2 * i + 1])
            out = self.convs[2 * i + 1](out, style, noise[2 * i + 2])
            skip, s = to_rgb(out, style, skip)
            rgb_styles.append(s)
        image = torch.tanh(skip)
        if return_styles:
            return image, rgb_styles
        return image

    def extra_repr(self) -> str:
        return (f"size={self.size}, init_size={self.init_size}, style_dim={self.style_dim}, "
                f"noise_mode={self.noise_mode!r}, noise_seed={self.noise_seed}")
