"""Fast paths (pdfgc.fast_paths, the fused StyleGAN layers, generation switches): each gives the
float32 reference's result within its stated tolerance. Small networks, CPU; CUDA-only paths skip
without a GPU; torch.compile is slow (compilation) and marked so."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.nn import functional as F

from pdfgc.fast_paths import CudaGraphRunner, FastPaths, accelerate
from pdfgc.generation import GenerationPipeline, GenerationRequest, ModelOptions, call_padded
from pdfgc.networks import Generator, build_networks
from pdfgc.networks.stylegan_layers import Blur, ModulatedConv2d, StyledConv

CL = torch.channels_last
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Tolerances (max abs difference of an image in [-1, 1] from the float32 reference). bfloat16 has
# an 8-bit mantissa (relative step 2^-8 = 0.004); through ~10 layers of a random network the
# images differ by a few 1e-2 at worst (official 224 px: ~0.1, see benchmarks/RESULTS.md).
FP32_ATOL = 1e-4  # layout / implementation changes: float32 rounding only
BF16_MAX = 0.15
BF16_MEAN = 0.02


def _tiny_generator(**kw) -> Generator:
    torch.manual_seed(0)
    g = Generator(size=32, init_size=4, style_dim=16, channels={4: 32, 8: 32, 16: 16, 32: 16},
                  input_channels=16, mapping_layers=1, **kw)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)  # noise weights start at zero: make the noise path count
            if name.endswith("activate.bias"):
                p.normal_(0, 0.2)
    return g.eval()


def _inputs(b: int = 3, g: Generator | None = None):
    gen = torch.Generator().manual_seed(1)
    style = torch.randn(b, 16, generator=gen)
    id_map = torch.randn(b, 16, 4, 4, generator=gen)
    return style, id_map


# -- the fused layers equal the unfused formulas (values and gradients) --------------------------

@pytest.mark.parametrize("upsample", [False, True])
@pytest.mark.parametrize("with_noise", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_styled_conv_fusion_equals_unfused(upsample, with_noise, channels_last):
    torch.manual_seed(0)
    layer = StyledConv(6, 5, 3, style_dim=7, upsample=upsample)
    with torch.no_grad():
        layer.noise.weight.fill_(0.7)
        layer.activate.bias.normal_()
    x = torch.randn(2, 6, 5, 5)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    x.requires_grad_(True)
    style = torch.randn(2, 7, requires_grad=True)
    side = 10 if upsample else 5
    noise = torch.randn(1, 1, side, side) if with_noise else None

    out = layer(x, style, noise)
    grads = torch.autograd.grad(out.square().sum(), [x, style, *layer.parameters()], allow_unused=True)

    def unfused():  # the textbook order: demodulated conv, + noise, + bias, leaky ReLU, x sqrt 2
        layer.conv.impl = "grouped"
        conv_out, _ = layer.conv(x, style)
        layer.conv.impl = "auto"
        if noise is not None:
            conv_out = conv_out + layer.noise.weight * noise
        return F.leaky_relu(conv_out + layer.activate.bias, 0.2) * math.sqrt(2)

    ref = unfused()
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, style, *layer.parameters()],
                                    allow_unused=True)  # no noise: its weight is unused
    assert out.shape == ref.shape == (2, 5, side, side)
    assert torch.allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        assert g is None or torch.allclose(g, r, atol=1e-4, rtol=1e-4)
    if channels_last:  # the fused epilogue keeps the layout (no NCHW <-> NHWC copies)
        assert out.is_contiguous(memory_format=CL)


def test_generator_trains_under_bf16_autocast():
    """trainer.precision=bf16-mixed: the fused layers run forward and backward under autocast and
    the gradients stay close to float32 ones (cosine similarity, per parameter tensor)."""
    g = _tiny_generator().train()
    style, id_map = _inputs()

    def grads(autocast: bool):
        g.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = g(style, id_map, noise_mode="fixed").square().mean()
        loss.backward()
        return {n: p.grad.detach().clone() for n, p in g.named_parameters() if p.grad is not None}

    ref, bf = grads(False), grads(True)
    assert ref.keys() == bf.keys() and len(ref) > 10
    for name in ref:
        if ref[name].abs().max() > 1e-6:
            assert F.cosine_similarity(ref[name].flatten(), bf[name].flatten(), dim=0) > 0.95, name


@pytest.mark.parametrize("demodulate", [False, True])
def test_pointwise_modconv_equals_grouped(demodulate):
    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 3, 1, style_dim=5, demodulate=demodulate)
    x, style = torch.randn(4, 8, 6, 6), torch.randn(4, 5)
    conv.impl = "grouped"
    ref, _ = conv(x, style)
    conv.impl = "scaled_input"  # 1x1: the batched-matmul path
    for inp in (x, x.contiguous(memory_format=CL)):
        out, _ = conv(inp, style)
        assert torch.allclose(out, ref, atol=1e-5)


def test_blur_with_asymmetric_pad_equals_explicit_padding():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7)
    blur = Blur((1, 2, 3, 4), pad=(2, 1))
    ref = F.conv2d(F.pad(x, [2, 1, 2, 1]), torch.flip(blur.kernel, [0, 1])[None, None].repeat(3, 1, 1, 1),
                   groups=3)
    assert blur(x).shape == (2, 3, 7, 7)
    assert torch.allclose(blur(x), ref, atol=1e-6)


# -- switches on the generator and the encoders ---------------------------------------------------

def _run(net, paths: FastPaths, *inputs):
    fast = accelerate(net, paths, "cpu", copy_weights=True)
    with torch.inference_mode():
        return fast(*inputs)


def test_generator_channels_last_and_impls_match_fp32():
    g = _tiny_generator()
    style, id_map = _inputs()
    ref = _run(g, FastPaths(modconv_impl="grouped"), style, id_map)
    for paths in (FastPaths(modconv_impl="scaled_input"), FastPaths(channels_last=True),
                  FastPaths(channels_last=True, modconv_impl="grouped")):
        out = _run(g, paths, style, id_map)
        assert out.dtype == torch.float32
        assert (out - ref).abs().max() < FP32_ATOL, paths


@pytest.mark.parametrize("precision", ["bf16", "bf16-true"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_generator_bf16_close_to_fp32(precision, channels_last):
    g = _tiny_generator()
    style, id_map = _inputs()
    ref = _run(g, FastPaths(), style, id_map)
    out = _run(g, FastPaths(precision=precision, channels_last=channels_last), style, id_map)
    diff = (out - ref).abs()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert diff.max() < BF16_MAX and diff.mean() < BF16_MEAN
    assert diff.max() > 0  # it did run in bfloat16
    assert g.conv1.conv.weight.dtype == torch.float32  # copy_weights left the original alone


def test_bf16_true_casts_weights_but_keeps_rgb_sum_float32():
    g = _tiny_generator()
    fast = accelerate(g, FastPaths(precision="bf16-true"), "cpu")
    assert all(p.dtype == torch.bfloat16 for p in g.parameters())  # cast in place
    seen = []
    hook = g.to_rgbs[-1].register_forward_hook(lambda m, i, o: seen.append(o[0].dtype))
    with torch.inference_mode():
        image = fast(*_inputs())
    hook.remove()
    assert seen == [torch.float32] and image.dtype == torch.float32


@pytest.mark.parametrize("part", ["appearance", "motion", "audio"])
def test_encoders_fast_paths_match_fp32(part):
    torch.manual_seed(0)
    net = getattr(build_networks("small"), part).eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 80, 20, generator=gen) if part == "audio" else \
        torch.rand(2, 3, 64, 64, generator=gen) * 2 - 1
    ref = _run(net, FastPaths(), x)
    cl = _run(net, FastPaths(channels_last=True), x)
    bf = _run(net, FastPaths(precision="bf16-true", channels_last=True), x)
    for r, c, b in zip(ref, cl, bf):
        scale = r.abs().max().item() + 1e-6
        assert (c - r).abs().max() / scale < 1e-4
        # bfloat16 through a deep random network: a few percent of the output's range
        assert (b - r).abs().max() / scale < 0.1 and b.dtype == torch.float32


def test_bad_switches_are_rejected():
    cpu = torch.device("cpu")
    for paths, match in ((FastPaths(precision="fp16"), "CUDA"), (FastPaths(precision="fp16-true"), "CUDA"),
                         (FastPaths(precision="int8"), "precision"),
                         (FastPaths(modconv_impl="winograd"), "modconv_impl"),
                         (FastPaths(cuda_graphs=True), "CUDA")):
        with pytest.raises(ValueError, match=match):
            paths.validate(cpu)


def test_call_padded_pads_to_one_shape_and_cuts_back():
    shapes = []

    def net(a, b):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return a * 2 + b.sum(dim=1, keepdim=True), a.mean(dim=1)

    a, b = torch.randn(3, 4), torch.randn(3, 5)
    out = call_padded(net, 8, a, b)
    assert shapes == [((8, 4), (8, 5))]
    assert torch.allclose(out[0], a * 2 + b.sum(dim=1, keepdim=True)) and out[1].shape == (3,)
    full = torch.randn(8, 4)
    assert call_padded(lambda t: t + 1, 8, full).shape == (8, 4)  # a full batch is not padded


def test_cuda_graph_runner_passes_cpu_tensors_through():
    calls = []
    runner = CudaGraphRunner(lambda t: calls.append(1) or t * 3)
    x = torch.randn(2, 3)
    assert torch.equal(runner(x), x * 3) and calls == [1]


def test_same_noise_seed_keeps_the_noise_tensors():
    """A captured CUDA graph reads the fixed noise maps in place: setting the same seed again (the
    pipeline does per request) must not replace them; another seed must."""
    g = _tiny_generator()
    before = g.fixed_noise()
    g.noise_seed = g.noise_seed
    assert all(a is b for a, b in zip(before, g.fixed_noise()))
    g.noise_seed = 7
    assert not torch.equal(before[0], g.fixed_noise()[0])


# -- the generation pipeline with the switches -------------------------------------------------

@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    import cv2
    from skimage import data

    root = tmp_path_factory.mktemp("fast")
    face = root / "face.png"
    cv2.imwrite(str(face), cv2.resize(data.astronaut(), (96, 96))[:, :, ::-1])
    t = np.arange(int(0.6 * 16000)) / 16000
    wav = root / "a.wav"
    sf.write(str(wav), (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32),
             16000)
    torch.manual_seed(0)
    nets = build_networks("small").eval()
    return dict(root=root, face=face, wav=wav, nets=nets)


def _frames(world, precision="fp32", batch_size=4, **options):
    pipe = GenerationPipeline(ModelOptions(checkpoints="", device="cpu", **options), networks=world["nets"])
    req = GenerationRequest(audio_path=str(world["wav"]), app_img_path=str(world["face"]),
                            output_path=str(world["root"] / "x.mp4"), mouth=True,
                            precision=precision, batch_size=batch_size)
    return torch.cat(list(pipe.iter_images(req)))


def test_pipeline_switches_match_fp32(small_world):
    ref = _frames(small_world)
    assert ref.shape[0] == 15  # 0.6 s at 25 fps: batches of 4 end with a short one
    cl = _frames(small_world, channels_last=True, modconv_impl="grouped")
    assert (cl - ref).abs().max() < FP32_ATOL
    bf = _frames(small_world, precision="bf16-true", channels_last=True)
    assert (bf - ref).abs().max() < BF16_MAX and (bf - ref).abs().mean() < BF16_MEAN
    # the fp32 networks the pipeline was given were not cast by the bf16-true request
    assert small_world["nets"].generator.conv1.conv.weight.dtype == torch.float32


@pytest.mark.slow
def test_compiled_generator_matches_eager():
    g = _tiny_generator()
    style, id_map = _inputs()
    ref = _run(g, FastPaths(channels_last=True), style, id_map)
    out = _run(g, FastPaths(channels_last=True, compile=True), style, id_map)
    assert (out - ref).abs().max() < FP32_ATOL


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16-true"])
def test_cuda_graphs_match_eager_on_gpu(precision):
    g = _tiny_generator()
    style, id_map = _inputs(8)
    ref = _run(g, FastPaths(), style, id_map)
    for paths in (FastPaths(precision=precision, cuda_graphs=True),
                  FastPaths(precision=precision, channels_last=True, cuda_graphs=True)):
        fast = accelerate(g, paths, "cuda", copy_weights=True)
        with torch.inference_mode():
            first = fast(style, id_map).cpu()
            again = fast(style * 0.5, id_map).cpu()  # replay with new inputs
            direct = accelerate(g, FastPaths(precision=precision), "cuda", copy_weights=True)(
                style * 0.5, id_map).cpu()
        tol = FP32_ATOL * 10 if precision == "fp32" else BF16_MAX  # TF32 / bf16 on the GPU
        assert (first - ref).abs().max() < tol
        assert (again - direct).abs().max() < tol


@needs_cuda
def test_grouped_and_scaled_input_agree_on_gpu():
    g = _tiny_generator().cuda()
    style, id_map = (t.cuda() for t in _inputs())
    with torch.inference_mode():
        g.modconv_impl = "grouped"
        a = g(style, id_map)
        g.modconv_impl = "scaled_input"
        b = g(style, id_map)
    assert (a - b).abs().max() < 1e-3
