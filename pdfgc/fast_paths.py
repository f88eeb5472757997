"""Inference fast paths of the networks, each a switch: precision, channels-last, modulated-conv
implementation, ``torch.compile`` and CUDA graphs.

:class:`FastPaths` holds the switches (``configs/generate.yaml`` sets them for generation);
:func:`accelerate` wraps one network so that calling it applies them all, with float32 tensors in
and float32 tensors out whatever runs inside. Every switch gives the same result as the plain
float32 network within a stated tolerance (``tests/test_fast_paths.py``; the measured speed and
error on the official networks are in ``benchmarks/RESULTS.md``, the choices in
``docs/performance.md``).

Precisions:

* ``fp32``: the reference.
* ``bf16`` / ``fp16``: ``torch.autocast`` (weights stay float32, each op casts its inputs).
* ``bf16-true`` / ``fp16-true``: the weights themselves are cast once and the activations stay
  in that dtype; no per-op casts. The generator keeps its RGB skip sum and ``tanh`` in float32.
  ``fp16*`` needs CUDA.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

#: precision name -> (autocast dtype or None, weight dtype)
PRECISIONS: dict[str, tuple[torch.dtype | None, torch.dtype]] = {
    "fp32": (None, torch.float32),
    "bf16": (torch.bfloat16, torch.float32),
    "fp16": (torch.float16, torch.float32),
    "bf16-true": (None, torch.bfloat16),
    "fp16-true": (None, torch.float16),
}


@dataclass
class FastPaths:
    """The switches. Defaults are the plain float32 networks (the reference)."""

    precision: str = "fp32"  # see PRECISIONS
    channels_last: bool = False  # NHWC feature maps: oneDNN / tensor-core friendly
    compile: bool = False  # torch.compile (inductor) each network
    modconv_impl: str = "auto"  # generator modulated conv: auto | grouped | scaled_input
    cuda_graphs: bool = False  # replay a captured CUDA graph per input shape (CUDA only)

    def validate(self, device: torch.device) -> None:
        """Raise ``ValueError`` naming a bad switch value or a switch the device cannot run."""
        from pdfgc.networks.stylegan_layers import MODCONV_IMPLS

        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.precision.startswith("fp16") and device.type != "cuda":
            raise ValueError(f"precision {self.precision} needs a CUDA device (use fp32 or bf16 on CPU)")
        if self.modconv_impl not in MODCONV_IMPLS:
            raise ValueError(f"modconv_impl must be one of {', '.join(MODCONV_IMPLS)}, "
                             f"got {self.modconv_impl!r}")
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError("cuda_graphs needs a CUDA device")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision][0]

    @property
    def weight_dtype(self) -> torch.dtype:
        return PRECISIONS[self.precision][1]


def _map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


class AcceleratedNetwork(nn.Module):
    """Calls ``network`` with the fast paths: floating inputs are cast to the weights' dtype (4-D
    ones to channels-last when asked), the call runs under autocast when asked, and floating
    outputs come back as float32 (nested tuples/lists kept). The wrapped (possibly cast) module is
    ``.network``; ``runner`` (compiled / graphed) is what is called, default the network."""

    def __init__(self, network: nn.Module, paths: FastPaths, device: torch.device,
                 runner: Callable[..., Any] | None = None):
        super().__init__()
        self.network = network
        self.paths = paths
        self.device = device
        # not a registered submodule: a compiled runner would repeat the weights in state_dict()
        object.__setattr__(self, "_runner", network if runner is None else runner)

    def _prepare_input(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            t = t.to(device=self.device, dtype=self.paths.weight_dtype)
            if self.paths.channels_last and t.dim() == 4:
                t = t.contiguous(memory_format=torch.channels_last)
        return t

    def reset(self) -> None:
        """Forget captured CUDA graphs (after changing the network's state, e.g. its noise)."""
        if isinstance(self._runner, CudaGraphRunner):
            self._runner.reset()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        args = _map_tensors(args, self._prepare_input)
        kwargs = _map_tensors(kwargs, self._prepare_input)
        dtype = self.paths.autocast_dtype
        if dtype is None:
            out = self._runner(*args, **kwargs)
        else:
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                out = self._runner(*args, **kwargs)
        return _map_tensors(out, lambda t: t.float() if t.is_floating_point() else t)


class CudaGraphRunner:
    """Replays one captured CUDA graph per input signature (shapes and dtypes) of ``fn``.

    Inputs are copied into the graph's static tensors, the graph is replayed and the outputs are
    cloned (the static outputs are overwritten by the next replay). For inference only (call it
    under ``torch.inference_mode()``); shapes must repeat for it to pay off (fixed batch size).
    """

    def __init__(self, fn: Callable[..., Any], warmup: int = 3):
        self.fn = fn
        self.warmup = warmup
        self._graphs: dict[tuple, tuple] = {}

    def reset(self) -> None:
        """Drop every captured graph; the next call captures again."""
        self._graphs.clear()

    @staticmethod
    def _signature(args: tuple) -> tuple:
        return tuple((tuple(a.shape), a.dtype, a.stride()) if isinstance(a, torch.Tensor) else ("obj", a)
                     for a in args)

    def __call__(self, *args: Any) -> Any:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors or not tensors[0].is_cuda:
            return self.fn(*args)
        key = self._signature(args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        graph, static_in, static_out = self._graphs[key]
        for dst, src in zip(static_in, args):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        graph.replay()
        return _map_tensors(static_out, torch.Tensor.clone)

    def _capture(self, args: tuple) -> tuple:
        static_in = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the capture (cuDNN picks its algorithms)
            for _ in range(self.warmup):
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.fn(*static_in)
        return graph, static_in, static_out


def accelerate(network: nn.Module, paths: FastPaths, device: torch.device | str,
               copy_weights: bool = False) -> AcceleratedNetwork:
    """Wrap ``network`` (eval mode, moved to ``device``) with the fast paths of ``paths``.

    ``bf16-true``/``fp16-true`` cast the weights in place unless ``copy_weights`` (then a cast
    copy is wrapped and ``network`` is left as it was). A generator (anything with
    ``modconv_impl``/``channels_last`` attributes) gets those switches set; other networks get
    channels-last parameters. ``compile`` wraps the call in ``torch.compile`` (static shapes; a
    new batch size compiles once more), ``cuda_graphs`` in :class:`CudaGraphRunner` (after
    compilation when both are on).
    """
    device = torch.device(device)
    paths.validate(device)
    if copy_weights and paths.weight_dtype != torch.float32:
        network = copy.deepcopy(network)
    network = network.to(device=device, dtype=paths.weight_dtype).eval()
    if hasattr(network, "modconv_impl"):
        network.modconv_impl = paths.modconv_impl
    if hasattr(network, "channels_last"):
        network.channels_last = paths.channels_last
    elif paths.channels_last:
        network = network.to(memory_format=torch.channels_last)
    runner: Callable[..., Any] = network
    if paths.compile:
        runner = torch.compile(network, dynamic=False)
    if paths.cuda_graphs:
        if device.type != "cuda":
            warnings.warn("cuda_graphs ignored: not a CUDA device")
        else:
            runner = CudaGraphRunner(runner)
    return AcceleratedNetwork(network, paths, device, runner)

