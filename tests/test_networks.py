"""Networks: official keys/shapes, forward contracts, generator noise, small config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from pdfgc.errors import PdfgcError
from pdfgc.networks import (AudioEncoder, Generator, Networks, build_networks, codes,
                            compose_style, load_networks_config, split_style)
from pdfgc.networks.fan import HourGlass
from pdfgc.networks.stylegan_layers import Blur, ModulatedConv2d, Upsample

TSV = Path(__file__).resolve().parents[1].parent / "shared/reference/official_state_dict_keys.tsv"
PARTS = ("appearance", "motion", "audio", "generator")
# Parameter counts of the release (official_architecture.md), in millions.
REFERENCE_MPARAMS = {"appearance": 38.36, "motion": 9.04, "audio": 7.63, "generator": 91.02}


def read_tsv() -> dict[str, list[tuple[str, str]]]:
    if not TSV.is_file():
        pytest.skip(f"reference key list not found at {TSV} (shared/reference is not checked out)")
    table: dict[str, list[tuple[str, str]]] = {}
    for line in TSV.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        filename, key, shape = line.split("\t")
        table.setdefault(filename.removesuffix("_model.pth"), []).append((key, shape))
    return table


@pytest.fixture(scope="module")
def official() -> Networks:
    torch.manual_seed(0)
    return build_networks("official").eval()


@pytest.fixture(scope="module")
def small() -> Networks:
    torch.manual_seed(0)
    return build_networks("small", with_discriminator=True)


# -- official config: keys, shapes, sizes -----------------------------------------------------

@pytest.mark.parametrize("part", PARTS)
def test_official_state_dict_equals_reference(official, part):
    reference = read_tsv()[part]
    ours = [(k, str(tuple(v.shape))) for k, v in getattr(official, part).state_dict().items()]
    assert set(ours) == set(reference), (sorted(set(ours) - set(reference))[:5],
                                         sorted(set(reference) - set(ours))[:5])
    assert ours == reference  # same order too, so exported files list keys like the release


@pytest.mark.parametrize("part", PARTS)
def test_official_parameter_counts(official, part):
    count = sum(p.numel() for p in getattr(official, part).parameters()) / 1e6
    assert count == pytest.approx(REFERENCE_MPARAMS[part], abs=0.006)


def test_never_used_parameters_are_frozen(official, small):
    mapping = list(official.generator.style.parameters())
    assert len(mapping) == 16 and not any(p.requires_grad for p in mapping)
    assert list(small.generator.style.parameters()) == []  # mapping_layers 0
    frozen = {n for n, p in official.named_parameters() if not p.requires_grad}
    expected = {f"generator.style.{i}.{w}" for i in range(1, 9) for w in ("weight", "bias")}
    expected |= {"generator.input.input", "appearance.model.fc.weight", "appearance.model.fc.bias"}
    assert frozen == expected


def test_official_forward_shapes(official):
    torch.manual_seed(1)
    img = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        id_vec, id_map = official.appearance(img)
        assert id_vec.shape == (2, 2048) and id_map.shape == (2, 512, 7, 7)
        assert official.appearance.classify(id_vec).shape == (2, 5995)
        pose, eye, emotion, mouth_feature = official.motion(img)
        assert (pose.shape, eye.shape, emotion.shape, mouth_feature.shape) == (
            (2, 6), (2, 6), (2, 30), (2, 512))
        unified = official.motion.unified(img)
        assert unified.shape == (2, 512)
        assert torch.allclose(official.motion.heads(unified)[0], pose)
        assert official.motion.mouth_code(mouth_feature).shape == (2, 500)
        feature, mouth = official.audio(torch.rand(2, 1, 80, 20))
        assert feature.shape == (2, 512) and mouth.shape == (2, 500)
        style = compose_style(id_vec[:1], mouth[:1], emotion[:1], eye[:1], pose[:1])
        image, styles = official.generator(style, id_map[:1], return_styles=True)
    assert image.shape == (1, 3, 224, 224)
    assert image.abs().max() <= 1
    assert [s.shape[1] for s in styles] == [512, 512, 512, 512, 256, 128]


def test_hourglass_handles_non_doubling_sizes():
    torch.manual_seed(0)
    hourglass = HourGlass(depth=4, features=8).eval()
    x = torch.randn(1, 8, 56, 56)  # 56 -> 28 -> 14 -> 7 -> 3 and back 3 -> 7
    assert hourglass(x).shape == x.shape
    bottom = HourGlass(depth=1, features=8).eval()
    assert bottom(torch.randn(2, 8, 7, 7)).shape == (2, 8, 7, 7)


# -- small config -----------------------------------------------------------------------------

@pytest.mark.parametrize("channels,stride", [(1, 2), (8, 2), (2, 1)])
def test_fan_bottleneck_width_and_stem_stride(channels, stride):
    from pdfgc.networks.fan import FAN

    fan = FAN(width=32, hourglass_depth=2, image_size=64, num_landmarks=70, bottleneck_channels=channels,
              stem_stride=stride)
    heat = 64 // (2 * stride)  # conv1 (stride) and the max-pool; conv6 then halves the maps
    assert fan.heatmaps(torch.randn(2, 3, 64, 64)).shape == (2, 70, heat, heat)
    assert fan.fc.in_features == channels * (heat // 2) ** 2
    assert fan(torch.randn(2, 3, 64, 64)).shape == (2, 512)


def test_fan_bottleneck_starts_alive():
    """A from-scratch f_mot must not start dead: the ReLU after conv6 passes most of the map."""
    from pdfgc.networks.fan import FAN

    torch.manual_seed(0)
    fan = FAN(width=32, hourglass_depth=2, image_size=64, bottleneck_channels=8).eval()
    with torch.no_grad():
        bottleneck = fan.conv6(F.relu(fan.bn5(fan.heatmaps(torch.rand(8, 3, 64, 64) * 2 - 1))))
    assert (bottleneck > 0).float().mean() > 0.9


def test_small_forward_shapes(small):
    small.eval()
    img = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        id_vec, id_map = small.appearance(img)
        assert id_vec.shape == (3, 2048) and id_map.shape == (3, 512, 4, 4)
        outs = small.motion(img)
        assert [tuple(o.shape) for o in outs] == [(3, 6), (3, 6), (3, 30), (3, 512)]
        feature, mouth = small.audio(torch.rand(3, 1, 80, 20))
        assert feature.shape == (3, 512) and mouth.shape == (3, 500)
        feature5, mouth5 = small.audio(torch.rand(3, 2, 1, 80, 20))  # (B, K, 1, 80, 20)
        assert feature5.shape == (3, 2, 512) and mouth5.shape == (3, 2, 500)
        style = compose_style(id_vec, mouth, outs[2], outs[1], outs[0])
        image = small.generator(style, id_map)
        assert image.shape == (3, 3, 64, 64)
        scales = small.discriminator(image)
    assert len(scales) == 2 and all(len(features) == 5 for features in scales)
    assert scales[0][-1].shape[:2] == (3, 1) and scales[1][-1].shape[:2] == (3, 1)
    assert scales[1][-1].shape[-1] < scales[0][-1].shape[-1]


def test_small_forward_backward(small):
    small.train()
    small.generator.noise_mode = "random"
    try:
        torch.manual_seed(0)
        img = torch.rand(8, 3, 64, 64) * 2 - 1
        id_vec, id_map = small.appearance(img)
        pose, eye, emotion, mouth_feature = small.motion(img)
        _, mouth = small.audio(torch.rand(8, 1, 80, 20))
        image = small.generator(compose_style(id_vec, mouth, emotion, eye, pose), id_map)
        loss = image.square().mean() + sum(f[-1].mean() for f in small.discriminator(image))
        loss = loss + small.appearance.classify(id_vec).logsumexp(1).mean()
        loss = loss + small.motion.mouth_code(mouth_feature).square().mean()
        loss.backward()
    finally:
        small.generator.noise_mode = "fixed"
        small.eval()
    # every trainable parameter takes part in a full step (DDP needs no find_unused_parameters)
    assert [n for n, p in small.named_parameters() if p.requires_grad and p.grad is None] == []
    for part in ("appearance", "motion", "audio", "generator", "discriminator"):
        grads = [p.grad for p in getattr(small, part).parameters() if p.requires_grad]
        assert any(g.abs().sum() > 0 for g in grads), part
    small.zero_grad(set_to_none=True)


def test_tanh_range():
    torch.manual_seed(0)
    g = Generator(size=16, init_size=4, style_dim=8, channels={4: 8, 8: 8, 16: 8},
                  input_channels=8, mapping_layers=0)
    with torch.no_grad():
        for p in g.to_rgbs.parameters():
            p.mul_(50)
        out = g(torch.randn(2, 8) * 100, torch.randn(2, 8, 4, 4) * 100)
    assert out.abs().max() <= 1 and out.abs().max() > 0.99


# -- generator noise ---------------------------------------------------------------------------

def _tiny_generator(seed: int = 20202001) -> Generator:
    torch.manual_seed(0)
    g = Generator(size=32, init_size=4, style_dim=16, channels={4: 16, 8: 16, 16: 8, 32: 8},
                  input_channels=16, mapping_layers=2, noise_seed=seed)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.5)  # noise weights start at zero: make the noise visible
    return g.eval()


def test_noise_fixed_is_reused_and_seeded():
    g = _tiny_generator()
    style, id_map = torch.randn(3, 16), torch.randn(3, 16, 4, 4)
    with torch.no_grad():
        a = g(style, id_map)
        b = g(style, id_map)
        single = g(style[1:2], id_map[1:2])  # the same map for every sample and batch
        other = _tiny_generator(seed=1)
        other.load_state_dict(g.state_dict())
        c = other(style, id_map)
        other.noise_seed = 20202001
        d = other(style, id_map)
    assert torch.equal(a, b)
    # oneDNN may pick another conv algorithm per batch size: float32 rounding only (~2e-6)
    assert torch.allclose(single, a[1:2], atol=1e-5)
    assert not torch.allclose(a, c)
    assert torch.allclose(a, d, atol=1e-6)
    assert all(n.shape == (1, 1, s, s) for n, s in zip(g.fixed_noise(), g.noise_sides))
    assert not any("fixed" in k for k in g.state_dict())  # cached noise is not state


def test_noise_random_and_none():
    g = _tiny_generator()
    style, id_map = torch.randn(2, 16), torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        r1 = g(style, id_map, noise_mode="random")
        r2 = g(style, id_map, noise_mode="random")
        n1 = g(style, id_map, noise_mode="none")
        n2 = g(style, id_map, noise_mode="none")
        fixed = g(style, id_map)
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.zero_()
        fixed_zero_weight = g(style, id_map)
    assert not torch.allclose(r1, r2)
    assert torch.equal(n1, n2)
    assert not torch.allclose(n1, fixed)
    assert torch.allclose(n1, fixed_zero_weight, atol=1e-6)
    with pytest.raises(ValueError):
        g.noise_mode = "sometimes"


def test_generator_rejects_wrong_inputs():
    g = _tiny_generator()
    with pytest.raises(ValueError, match="style"):
        g(torch.randn(2, 15), torch.randn(2, 16, 4, 4))
    with pytest.raises(ValueError, match="id_map"):
        g(torch.randn(2, 16), torch.randn(2, 16, 8, 8))
    with pytest.raises(ValueError, match="power of 2"):
        Generator(size=48, init_size=7)


# -- layers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("upsample,demodulate,k", [(False, True, 3), (True, True, 3), (False, False, 1)])
def test_modconv_implementations_agree(upsample, demodulate, k):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, k, style_dim=7, demodulate=demodulate, upsample=upsample)
    x, style = torch.randn(3, 6, 5, 5), torch.randn(3, 7)
    conv.impl = "grouped"
    a, sa = conv(x, style)
    conv.impl = "scaled_input"
    b, sb = conv(x, style)
    assert a.shape == b.shape == (3, 5, 10 if upsample else 5, 10 if upsample else 5)
    assert torch.allclose(a, b, atol=1e-5) and torch.equal(sa, sb)


def _upfirdn_reference(x, kernel, up, pad0, pad1):
    """Zero insertion, zero padding, then a true 2-D convolution with ``kernel`` per channel."""
    b, c, h, w = x.shape
    z = torch.zeros(b, c, h * up, w * up)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, [pad0, pad1, pad0, pad1])
    weight = torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(z, weight, groups=c)


def test_fir_filters_match_upfirdn():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    up = Upsample((1, 2, 3, 4))  # asymmetric taps catch a flipped kernel
    assert up.kernel.shape == (4, 4)
    assert torch.allclose(up(x), _upfirdn_reference(x, up.kernel, 2, 2, 1), atol=1e-5)
    blur = Blur((1, 2, 3, 4), pad=(1, 1), gain=4.0)
    assert torch.allclose(blur(x), _upfirdn_reference(x, blur.kernel, 1, 1, 1), atol=1e-5)


# -- codes and configs --------------------------------------------------------------------------

def test_compose_style_order():
    parts = [torch.full((2, d), float(i)) for i, d in enumerate((2048, 500, 30, 6, 6))]
    style = compose_style(*parts)
    assert style.shape == (2, codes.STYLE_DIM) == (2, 2590)
    for i, sl in enumerate((codes.ID, codes.MOUTH, codes.EMOTION, codes.EYE, codes.POSE)):
        assert torch.all(style[:, sl] == i)
    assert torch.equal(split_style(style)["eye"], parts[3])
    with pytest.raises(ValueError, match="emotion"):
        compose_style(parts[0], parts[1], parts[2][:, :29], parts[3], parts[4])
    assert codes.eye_mask("gaze").tolist() == [0, 0, 1, 1, 0, 0]
    assert codes.eye_mask("blink").tolist() == [1, 1, 0, 0, 1, 1]
    assert codes.STAGE1_STYLE_DIM == 2560


@pytest.mark.parametrize("name", ["official", "small"])
def test_config_sizes_agree(name):
    cfg = load_networks_config(name)
    assert cfg.image_size == cfg.generator.size == cfg.motion.image_size
    assert cfg.generator.init_size == cfg.appearance.map_size
    assert cfg.generator.input_channels == cfg.appearance.map_channels == 512
    assert cfg.generator.style_dim == codes.STYLE_DIM


def test_configs_load_and_build():
    cfg = load_networks_config("small")
    assert load_networks_config(Path(__file__).resolve().parents[1] / "configs/networks/small.yaml") == cfg
    official = load_networks_config("official")
    assert official.generator.style_dim == 2590 and official.generator.init_size == 7
    with pytest.raises(PdfgcError, match="not found"):
        load_networks_config("no_such_config")
    cfg.generator.style_dim = 2560  # stage 1's G0
    nets = build_networks(cfg)
    assert nets.discriminator is None and nets.generator.style_dim == 2560
    assert isinstance(nets.audio, AudioEncoder)
    del cfg["discriminator"]
    with pytest.raises(PdfgcError, match="discriminator"):
        build_networks(cfg, with_discriminator=True)
