"""StyleGAN2 building blocks (rosinality layout, pure PyTorch, no custom CUDA ops).

Parameter names and shapes follow the official PD-FGC release so that its generator file
loads key for key: ``ModulatedConv2d.weight (1, out, in, k, k)``, ``FusedLeakyReLU.bias
(1, C, 1, 1)``, ``NoiseInjection.weight (1,)``, ``Blur.kernel``/``Upsample.kernel (4, 4)``
buffers, raw (unscaled) ``EqualLinear`` weights with the scale applied at run time.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

SQRT2 = math.sqrt(2.0)
DEFAULT_BLUR = (1, 3, 3, 1)


def make_blur_kernel(taps: Sequence[float], gain: float = 1.0) -> torch.Tensor:
    """Separable FIR kernel ``(len, len)``: outer product of ``taps``, summing to ``gain``."""
    k = torch.as_tensor(taps, dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum() * gain


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    """``leaky_relu(x + bias, slope) * scale``; ``bias`` broadcasts against ``x``."""
    return F.leaky_relu(x + bias, slope) * scale


class PixelNorm(nn.Module):
    """Normalise each vector ``(B, D)`` to unit mean square over ``D``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: ``(B, in_dim) -> (B, out_dim)``.

    The stored ``weight (out, in)`` is ``N(0, 1) / lr_mul``; at run time it is multiplied by
    ``lr_mul / sqrt(in_dim)`` and the bias by ``lr_mul``. ``activation=True`` applies the fused
    leaky ReLU (slope 0.2, gain sqrt 2) after the bias.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias) if bias is not None else F.leaky_relu(out, 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}"


class FusedLeakyReLU(nn.Module):
    """Per-channel bias ``(1, C, 1, 1)`` + leaky ReLU 0.2, times sqrt 2. ``(B, C, H, W)``."""

    def __init__(self, channels: int, slope: float = 0.2, scale: float = SQRT2):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.slope = slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.slope, self.scale)


def _depthwise(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    return kernel.to(dtype=like.dtype)[None, None].expand(channels, 1, *kernel.shape).contiguous()


class Blur(nn.Module):
    """FIR low-pass filter, same for every channel: ``(B, C, H, W) -> (B, C, H + p0 + p1 - k + 1, ...)``.

    ``pad = (p0, p1)`` zero-pads before/after on both axes. ``kernel`` is a ``(k, k)`` buffer.
    """

    def __init__(self, taps: Sequence[float] = DEFAULT_BLUR, pad: tuple[int, int] = (1, 1),
                 gain: float = 1.0):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, gain))
        self.pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p0, p1 = self.pad
        padding = p0
        if p0 != p1:
            x = F.pad(x, [p0, p1, p0, p1])
            padding = 0
        # conv2d correlates; flipping makes it a true convolution (as upfirdn2d). Symmetric pads go
        # to conv2d itself: F.pad would write a padded copy of the whole map first.
        kernel = torch.flip(self.kernel, [0, 1])
        return F.conv2d(x, _depthwise(kernel, x.shape[1], x), padding=padding, groups=x.shape[1])


class Upsample(nn.Module):
    """2x FIR upsampling (zero insertion + ``[1,3,3,1]`` filter): ``(B, C, H, W) -> (B, C, 2H, 2W)``.

    Equivalent to rosinality's ``upfirdn2d(up=2, pad=(2, 1))``; done with one depthwise
    transposed convolution. ``kernel`` is a ``(4, 4)`` buffer (gain 4).
    """

    factor = 2

    def __init__(self, taps: Sequence[float] = DEFAULT_BLUR):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, gain=self.factor ** 2))
        k = len(taps)
        # The transposed conv is the full convolution of the zero-inserted input (length
        # 2H + k - 2); upfirdn2d's front padding pad0 keeps the 2H samples from k - 1 - pad0 on.
        pad0 = (k - self.factor + 1) // 2 + self.factor - 1
        self.offset = k - 1 - pad0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        # A transposed conv scatters with the kernel as is, i.e. a true convolution.
        out = F.conv_transpose2d(x, _depthwise(self.kernel, c, x), stride=self.factor, groups=c)
        o = self.offset
        return out[:, :, o:o + self.factor * h, o:o + self.factor * w]


MODCONV_IMPLS = ("auto", "grouped", "scaled_input")


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution.

    ``forward(x (B, in, H, W), style (B, style_dim)) -> (out (B, out, H', W'), s (B, in))`` where
    ``s = modulation(style)`` scales the input channels of the shared ``weight (1, out, in, k, k)``
    (equalised scale ``1/sqrt(in*k*k)``), optionally demodulated per output channel.
    ``upsample=True`` doubles the side with a stride-2 transposed conv followed by ``blur``.

    Two equivalent implementations (``impl``): ``"grouped"`` builds one modulated weight per
    sample and runs a single grouped convolution (the release's way); ``"scaled_input"`` scales
    the input channels by ``s``, convolves with the shared weight and scales the output by the
    demodulation factors (several times faster on CPU, where the per-sample weights dominate).
    ``"auto"`` picks ``grouped`` on CUDA and ``scaled_input`` elsewhere. A 1x1 conv without
    upsampling (ToRGB) runs as one batched matmul with per-sample weights under ``scaled_input``.
    :meth:`modulate` returns the output before demodulation so that :class:`StyledConv` can fuse
    it with the noise, bias and activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_taps: Sequence[float] = DEFAULT_BLUR, impl: str = "auto"):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.impl = impl
        self.scale = 1.0 / math.sqrt(in_channels * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        if upsample:
            # transposed conv (k) gives 2H + k - 2; the blur pads so that the result is 2H.
            p = (len(blur_taps) - 2) - (kernel_size - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + 1, p // 2 + 1), gain=4.0)
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in MODCONV_IMPLS:
            raise ValueError(f"ModulatedConv2d: impl must be one of {MODCONV_IMPLS}, got {value!r}")
        self._impl = value

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, k={self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}, impl={self.impl!r}")

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, gain, s = self.modulate(x, style)
        return (raw if gain is None else raw * gain), s

    def modulate(self, x: torch.Tensor, style: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The modulated conv split for fusion: ``out = raw * gain`` (``gain`` ``(B, out, 1, 1)`` or
        ``None`` when already applied), plus the modulation ``s (B, in)``.

        Callers that add a bias and an activation after the conv (:class:`StyledConv`) fold
        ``gain`` into that same pass instead of a separate multiplication over the output.
        """
        s = self.modulation(style)
        impl = self.impl
        if impl == "auto":
            impl = "grouped" if x.is_cuda else "scaled_input"
        if impl == "grouped":
            raw, gain = self._grouped(x, s), None
        elif self.kernel_size == 1 and not self.upsample:
            raw, gain = self._pointwise(x, s), None
        else:
            raw, gain = self._scaled_input(x, s)
        if self.upsample:
            raw = self.blur(raw)  # per-channel and linear: commutes with the per-channel gain
        return raw, gain, s

    def _grouped(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, o = self.kernel_size, self.out_channels
        weight = self.weight * (self.scale * s.view(b, 1, c, 1, 1))  # (B, out, in, k, k)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4)) + 1e-8)
            weight = weight * demod.view(b, o, 1, 1, 1)
        x = x.reshape(1, b * c, h, w)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c, o, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=b)
        else:
            out = F.conv2d(x, weight.reshape(b * o, c, k, k), padding=self.padding, groups=b)
        return out.view(b, o, *out.shape[2:])

    def _demodulation(self, weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """``(B, out)`` factors ``1 / |w * s|``: sum over (in, k, k) of (w s)^2 = s^2 @ (sum_k w^2)."""
        return torch.rsqrt(s.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + 1e-8)

    def _scaled_input(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, c = x.shape[:2]
        weight = self.weight[0] * self.scale  # (out, in, k, k)
        x = x * s.view(b, c, 1, 1)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        gain = None
        if self.demodulate:
            gain = self._demodulation(weight, s).view(b, self.out_channels, 1, 1)
        return out, gain

    def _pointwise(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """1x1 conv as one batched matmul with per-sample weights ``(B, out, in)``: reads ``x`` once
        (no scaled copy of the input; ``x.flatten(2)`` of a channels-last map is a strided view)."""
        b, c, h, w = x.shape
        weight = self.weight[0, :, :, 0, 0] * self.scale  # (out, in)
        if self.demodulate:
            gain = self._demodulation(self.weight[0] * self.scale, s)  # (B, out)
            modulated = weight[None] * s[:, None, :] * gain[:, :, None]
        else:
            modulated = weight[None] * s[:, None, :]
        return torch.bmm(modulated, x.flatten(2)).view(b, self.out_channels, h, w)


class NoiseInjection(nn.Module):
    """Add ``weight (1,)`` times a noise map ``(B or 1, 1, H, W)``; ``noise=None`` adds nothing.

    The generator decides which noise to pass (fixed, random or none).
    """

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            return x
        return x + self.weight * noise


class StyledConv(nn.Module):
    """Modulated conv -> noise -> fused leaky ReLU. ``(B, in, H, W), (B, style_dim) -> (B, out, H', W')``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_taps: Sequence[float] = DEFAULT_BLUR,
                 impl: str = "auto"):
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, kernel_size, style_dim,
                                    upsample=upsample, blur_taps=blur_taps, impl=impl)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: torch.Tensor, style: torch.Tensor,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        raw, gain, _ = self.conv.modulate(x, style)
        # leaky(raw*gain + w*noise + bias) * scale in two passes over the map instead of five:
        # scale > 0 goes inside the leaky ReLU, the small offset (bias + noise) is built first.
        act = self.activate
        offset = act.bias if noise is None else act.bias + self.noise.weight * noise
        offset = offset * act.scale
        if offset.shape[-1] > 1 and raw.dim() == 4 and not raw.is_contiguous() \
                and raw.is_contiguous(memory_format=torch.channels_last):
            offset = offset.contiguous(memory_format=torch.channels_last)  # keep raw's layout
        if gain is None:
            out = torch.add(offset, raw, alpha=act.scale)
        else:
            out = torch.addcmul(offset, raw, gain * act.scale)
        return F.leaky_relu_(out, act.slope)  # fresh tensor: in place is safe for autograd


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB + ``bias (1, 3, 1, 1)``, plus the upsampled skip.

    ``forward(x (B, in, H, W), style, skip (B, 3, H/2, W/2) or None) -> (rgb (B, 3, H, W), s (B, in))``.
    """

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True,
                 blur_taps: Sequence[float] = DEFAULT_BLUR, impl: str = "auto"):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        if upsample:
            self.upsample = Upsample(blur_taps)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False, impl=impl)

    def forward(self, x: torch.Tensor, style: torch.Tensor,
                skip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out, s = self.conv(x, style)
        # The RGB skip sums over every resolution: keep it in float32 even when the network runs
        # in bfloat16 (3 channels: the cast is cheap).
        out = out.float() + self.bias.float()
        if skip is not None:
            out = out + self.upsample(skip)
        return out, s


class ConstantInput(nn.Module):
    """Learned start map ``input (1, C, m, m)``; kept for key compatibility (the appearance map replaces it)."""

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)
