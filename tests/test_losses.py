"""Offline tests of pdfgc.losses (CPU, random VGG weights, 64 px)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from pdfgc.errors import PdfgcError
from pdfgc.losses import (
    MOUTH_BOX,
    MemoryBank,
    UntrainedVGGWarning,
    VGGPerceptualLoss,
    audio_visual_infonce,
    LinearLeakage,
    decorrelation_loss,
    discriminator_hinge_loss,
    eye_triplet_loss,
    feature_matching_loss,
    generator_hinge_loss,
    linear_leakage,
    mouth_region_l1,
    paste_strip,
)
from pdfgc.losses import perceptual as perceptual_mod
from pdfgc.losses.masks import box_to_pixels

torch.set_num_threads(min(2, torch.get_num_threads()))


def _d_out(logit_value: float, scales: int = 2, batch: int = 2, feats=None):
    """Fake multi-scale D output: list over scales of [feat0, feat1, logits]."""
    out = []
    for s in range(scales):
        side = 8 // (2 ** s)
        layers = [] if feats is None else [f[s] for f in feats]
        layers.append(torch.full((batch, 1, side, side), float(logit_value)))
        out.append(layers)
    return out


# ----------------------------------------------------------------------------- GAN


def test_hinge_known_values():
    assert discriminator_hinge_loss(_d_out(2.0), _d_out(-2.0)).item() == pytest.approx(0.0)
    assert discriminator_hinge_loss(_d_out(0.0), _d_out(0.0)).item() == pytest.approx(2.0)
    # real at 0.5 -> 0.5, fake at 0.5 -> 1.5
    assert discriminator_hinge_loss(_d_out(0.5), _d_out(0.5)).item() == pytest.approx(2.0)
    assert discriminator_hinge_loss(_d_out(1.0), _d_out(0.0)).item() == pytest.approx(1.0)
    assert generator_hinge_loss(_d_out(-2.0)).item() == pytest.approx(2.0)
    assert generator_hinge_loss(_d_out(3.0)).item() == pytest.approx(-3.0)
    # mean over scales: scale 0 at 1, scale 1 at 3 -> -2
    mixed = [[torch.ones(2, 1, 8, 8)], [torch.full((2, 1, 4, 4), 3.0)]]
    assert generator_hinge_loss(mixed).item() == pytest.approx(-2.0)
    # simplified inputs: bare tensor, list of logits
    assert discriminator_hinge_loss(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)).item() == (
        pytest.approx(2.0)
    )
    assert generator_hinge_loss([torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]).item() == (
        pytest.approx(-1.0)
    )


def test_hinge_half_precision_is_float32():
    real = [[torch.full((2, 1, 4, 4), 2.0, dtype=torch.bfloat16)]]
    fake = [[torch.full((2, 1, 4, 4), -2.0, dtype=torch.bfloat16, requires_grad=True)]]
    d = discriminator_hinge_loss(real, fake)
    g = generator_hinge_loss(fake)
    assert d.dtype == torch.float32 and g.dtype == torch.float32
    g.backward()
    assert fake[0][0].grad is not None


def test_feature_matching():
    torch.manual_seed(0)
    feats = [[torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4)] for _ in range(2)]
    real = [[f.clone().requires_grad_(True) for f in scale] + [torch.zeros(2, 1, 2, 2)]
            for scale in feats]
    same = [[f.clone().requires_grad_(True) for f in scale] + [torch.ones(2, 1, 2, 2)]
            for scale in feats]
    assert feature_matching_loss(real, same).item() == pytest.approx(0.0)

    fake = [[(f + 1.0).requires_grad_(True) for f in scale] + [torch.ones(2, 1, 2, 2)]
            for scale in feats]
    loss = feature_matching_loss(real, fake)
    # each intermediate layer differs by exactly 1: sum of 2 layers per scale, mean over scales
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    for scale in real:
        for f in scale[:-1]:
            assert f.grad is None  # real branch detached
    for scale in fake:
        for f in scale[:-1]:
            assert f.grad is not None and f.grad.abs().sum() > 0
    # logits-only discriminator -> 0
    assert feature_matching_loss(_d_out(1.0), _d_out(0.0)).item() == 0.0


# ----------------------------------------------------------------------------- perceptual


@pytest.fixture()
def fresh_warning_state(monkeypatch):
    monkeypatch.setattr(perceptual_mod, "_warned_untrained", False)


@pytest.fixture(scope="module")
def random_tv_vgg19():
    """A torchvision vgg19 with random conv weights (the 120M-parameter classifier is left
    zero: its init would dominate the test time and the loss never reads it)."""
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        model = torchvision.models.vgg19(weights=None)
    model = model.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, torch.nn.Conv2d):
                fan_out = m.out_channels * 9
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=g)
                m.bias.normal_(0.0, 0.01, generator=g)
        for p in model.classifier.parameters():
            p.zero_()
    return model


def _images(seed=0, n=2, side=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g) * 2 - 1


def test_perceptual_warns_once_and_is_zero_for_identical(fresh_warning_state):
    with pytest.warns(UntrainedVGGWarning) as record:
        loss_a = VGGPerceptualLoss()
        loss_b = VGGPerceptualLoss()
    assert sum(issubclass(w.category, UntrainedVGGWarning) for w in record) == 1
    x, y = _images(0, n=1), _images(1, n=1)
    assert loss_a(x, x).item() == pytest.approx(0.0, abs=1e-7)
    xg = x.clone().requires_grad_(True)
    yg = y.clone().requires_grad_(True)
    val = loss_b(xg, yg)
    assert val.item() > 0 and val.dtype == torch.float32
    val.backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert yg.grad is None  # target detached
    assert all(not p.requires_grad for p in loss_b.parameters())
    loss_b.train()
    assert not loss_b.vgg.training


def test_perceptual_missing_file(tmp_path):
    missing = tmp_path / "nope" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(PdfgcError, match="vgg19-dcbb9e9d.pth"):
        VGGPerceptualLoss(weights_path=str(missing))


def test_perceptual_rejects_wrong_file(tmp_path):
    bad = tmp_path / "not_vgg.pth"
    torch.save({"features.0.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(PdfgcError, match="not_vgg.pth"):
        VGGPerceptualLoss(weights_path=str(bad))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(PdfgcError, match="garbage.pth"):
        VGGPerceptualLoss(weights_path=str(garbage))


def _reference_features(tv_model, x):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    h = ((x + 1) / 2 - mean) / std
    out = []
    for i, layer in enumerate(tv_model.features[:30]):
        h = layer(h)
        if i in (1, 6, 11, 20, 29):
            out.append(h.clone())
    return out


@pytest.mark.parametrize("fmt", ["full", "features_prefixed", "features_bare"])
def test_perceptual_loads_torchvision_state_dict(tmp_path, random_tv_vgg19, fmt):
    if fmt == "full":
        sd = random_tv_vgg19.state_dict()
    elif fmt == "features_prefixed":
        sd = {k: v for k, v in random_tv_vgg19.state_dict().items() if k.startswith("features.")}
    else:
        sd = random_tv_vgg19.features.state_dict()
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    loss = VGGPerceptualLoss(weights_path=str(path))
    path.unlink()  # the full file is ~550 MB
    ref_sd = random_tv_vgg19.features[:30].state_dict()
    ours_sd = loss.vgg.state_dict()
    assert set(ours_sd) == set(ref_sd)
    for key in ref_sd:
        assert torch.equal(ours_sd[key], ref_sd[key])
    assert not any(p.requires_grad for p in loss.parameters())
    if fmt != "full":
        return
    # same outputs as the in-memory torchvision model
    x, y = _images(2, n=1, side=32), _images(3, n=1, side=32)
    with torch.no_grad():
        ours_x = loss.features(x)
        ref_x = _reference_features(random_tv_vgg19, x)
        for a, b in zip(ours_x, ref_x):
            torch.testing.assert_close(a, b)
        ref_y = _reference_features(random_tv_vgg19, y)
        weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
        expected = sum(w * (a - b).abs().mean() for w, a, b in zip(weights, ref_x, ref_y))
        torch.testing.assert_close(loss(x, y), expected)
    # frozen weights stay out of checkpoints by default, and loading without them is fine
    parent = torch.nn.Module()
    parent.perceptual = loss
    parent.head = torch.nn.Linear(2, 2)
    state = parent.state_dict()
    assert not any(k.startswith("perceptual.vgg.") for k in state)
    parent.load_state_dict(state)  # strict
    assert torch.equal(loss.vgg[28].weight, ref_sd["28.weight"])


def test_perceptual_resize(fresh_warning_state):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrainedVGGWarning)
        loss = VGGPerceptualLoss(resize=32)
    x = _images(4, n=1, side=48)
    assert loss.features(x)[0].shape[-1] == 32
    assert loss(x, _images(5, n=1, side=48)).item() > 0


# ----------------------------------------------------------------------------- contrastive


def test_infonce_aligned_and_shuffled():
    torch.manual_seed(0)
    B, N, D = 4, 8, 256
    vis = torch.randn(B, N, D)
    aligned = audio_visual_infonce(vis, vis.clone(), temperature=0.02)
    assert aligned["loss"].item() < 1e-3
    assert aligned["a2v_accuracy"].item() == 1.0 and aligned["v2a_accuracy"].item() == 1.0
    assert aligned["accuracy"].item() == 1.0

    inv = audio_visual_infonce(vis, vis.clone(), temperature=0.02, similarity="inverse_distance")
    assert inv["accuracy"].item() == 1.0 and inv["loss"].item() < 1e-3

    # unrelated audio (another random draw): chance level, ~log N per direction
    unrelated = audio_visual_infonce(vis, torch.randn(B, N, D), temperature=1.0)
    assert unrelated["a2v"].item() == pytest.approx(math.log(N), abs=0.15)
    assert unrelated["v2a"].item() == pytest.approx(math.log(N), abs=0.15)
    # time-shuffled audio at high temperature: exactly-at-chance logits
    perm = torch.roll(torch.arange(N), 1)
    shuffled = audio_visual_infonce(vis, vis[:, perm], temperature=100.0)
    assert shuffled["a2v"].item() == pytest.approx(math.log(N), abs=0.02)
    assert shuffled["accuracy"].item() == 0.0


def test_infonce_negatives_are_within_clip():
    # two clips whose features are identical across clips: if other clips were negatives the
    # loss would not be ~0
    torch.manual_seed(1)
    clip = torch.randn(1, 5, 64)
    vis = clip.repeat(3, 1, 1)
    out = audio_visual_infonce(vis, vis.clone(), temperature=0.02)
    assert out["loss"].item() < 1e-3


def test_infonce_gradients():
    torch.manual_seed(2)
    vis = torch.randn(2, 6, 32, requires_grad=True)
    aud = torch.randn(2, 6, 32, requires_grad=True)
    for sim in ("cosine", "inverse_distance"):
        vis.grad = None
        aud.grad = None
        out = audio_visual_infonce(vis, aud, temperature=0.1, similarity=sim)
        out["loss"].backward()
        assert vis.grad is not None and vis.grad.abs().sum() > 0
        assert aud.grad is not None and aud.grad.abs().sum() > 0
        assert torch.isfinite(vis.grad).all() and torch.isfinite(aud.grad).all()
    # early-code variant: a2v trains only the audio side
    vis.grad = None
    aud.grad = None
    audio_visual_infonce(vis, aud, detach_candidates=True)["a2v"].backward()
    assert vis.grad is None and aud.grad.abs().sum() > 0
    # finite gradient at zero distance (identical features)
    v = torch.randn(1, 4, 16, requires_grad=True)
    audio_visual_infonce(v, v, similarity="inverse_distance")["loss"].backward()
    assert torch.isfinite(v.grad).all()


def test_infonce_bad_shapes():
    with pytest.raises(ValueError):
        audio_visual_infonce(torch.randn(2, 4, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError):
        audio_visual_infonce(torch.randn(2, 4, 8), torch.randn(2, 4, 8), similarity="dot")


def test_eye_triplet():
    torch.manual_seed(3)
    p = torch.randn(8, 6)
    n = torch.randn(8, 6)
    good = eye_triplet_loss(p.clone(), p, n, temperature=0.1)
    bad = eye_triplet_loss(n.clone(), p, n, temperature=0.1)
    assert good.item() < bad.item()
    assert eye_triplet_loss(p, p, p).item() == pytest.approx(math.log(2), abs=1e-5)
    a = torch.randn(8, 6, requires_grad=True)
    eye_triplet_loss(a, p, n).backward()
    assert a.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- decorrelation


def test_memory_bank_wraparound_and_state_dict():
    bank = MemoryBank(dim=3, size=5)
    assert len(bank) == 0 and bank.get().shape == (0, 3)
    rows = torch.arange(12, dtype=torch.float32)[:, None].repeat(1, 3)
    bank.push(rows[:3])
    assert len(bank) == 3
    torch.testing.assert_close(bank.get(), rows[:3])
    bank.push(rows[3:7])  # wraps: keeps 2..6
    assert len(bank) == 5
    torch.testing.assert_close(bank.get(), rows[2:7])
    bank.push(rows[7:8])
    torch.testing.assert_close(bank.get(), rows[3:8])
    x = torch.ones(2, 3, requires_grad=True)
    bank.push(x * 100)  # detached on the way in
    assert not bank.features.requires_grad
    bank.push(rows[:12])  # more than size at once: newest 5
    torch.testing.assert_close(bank.get(), rows[7:12])

    bank.push(rows[:2])
    restored = MemoryBank(dim=3, size=5)
    restored.load_state_dict(bank.state_dict())
    assert set(bank.state_dict()) == {"features", "ptr", "count"}
    torch.testing.assert_close(restored.get(), bank.get())
    bank.push(rows[2:5])
    restored.push(rows[2:5])
    torch.testing.assert_close(restored.get(), bank.get())
    with pytest.raises(ValueError):
        bank.push(torch.zeros(2, 4))


def test_decorrelation_independent_vs_correlated():
    g = torch.Generator().manual_seed(4)
    De, Da, B, K = 8, 16, 32, 2000
    e_bank, a_bank = MemoryBank(De, K), MemoryBank(Da, K)
    e_bank.push(torch.randn(K, De, generator=g))
    a_bank.push(torch.randn(K, Da, generator=g))
    e = torch.randn(B, De, generator=g)
    a = torch.randn(B, Da, generator=g)
    M = B + K
    independent = decorrelation_loss(e, a, e_bank, a_bank)
    # E[C_ij^2] = 1/M for independent columns; the mean of De*Da such terms concentrates there
    assert independent.item() < 2.0 / M
    assert independent.item() > 0.25 / M

    # audio a linear function of expression (plus a little noise): clearly > 0
    W = torch.randn(De, Da, generator=g)
    e_all = torch.randn(M, De, generator=g)
    a_all = e_all @ W + 0.1 * torch.randn(M, Da, generator=g)
    e_bank2, a_bank2 = MemoryBank(De, K), MemoryBank(Da, K)
    e_bank2.push(e_all[B:])
    a_bank2.push(a_all[B:])
    correlated = decorrelation_loss(e_all[:B], a_all[:B], e_bank2, a_bank2)
    assert correlated.item() > 0.05
    assert correlated.item() > 50 * independent.item()
    # batch-only statistics also work
    assert decorrelation_loss(e_all[:B], a_all[:B]).item() > 0.05


def test_decorrelation_gradient_only_into_batch():
    torch.manual_seed(5)
    e_bank, a_bank = MemoryBank(4, 64), MemoryBank(6, 64)
    e_bank.push(torch.randn(40, 4))
    a_bank.push(torch.randn(40, 6))
    e = torch.randn(8, 4, requires_grad=True)
    a = torch.randn(8, 6, requires_grad=True)
    loss = decorrelation_loss(e, a, e_bank, a_bank)
    loss.backward()
    assert e.grad is not None and e.grad.abs().sum() > 0
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert not e_bank.features.requires_grad and e_bank.features.grad is None
    assert len(e_bank) == 40  # the loss does not push
    with pytest.raises(ValueError):
        a_bank.push(torch.randn(1, 6))
        decorrelation_loss(e, a, e_bank, a_bank)  # banks out of step


# ----------------------------------------------------------------------------- masks


def test_mouth_l1_ignores_outside_box():
    torch.manual_seed(6)
    target = torch.rand(2, 3, 64, 64)
    t, b, l, r = box_to_pixels(MOUTH_BOX, 64, 64)
    outside = target.clone()
    outside[..., :t, :] += 0.5
    outside[..., :, r:] -= 0.7
    assert mouth_region_l1(outside, target).item() == pytest.approx(0.0)
    inside = target.clone()
    inside[..., t:b, l:r] += 0.25
    assert mouth_region_l1(inside, target).item() == pytest.approx(0.25, abs=1e-6)
    # explicit mask form agrees with the box form
    mask = torch.zeros(64, 64)
    mask[t:b, l:r] = 1
    assert mouth_region_l1(inside, target, mask=mask).item() == pytest.approx(0.25, abs=1e-6)
    assert mouth_region_l1(outside, target, mask=mask).item() == pytest.approx(0.0)
    # the default box contains the mouth centre of the official crop (112, 140)/224
    assert t <= round(140 / 224 * 64) < b and l <= 32 < r
    g = inside.clone().requires_grad_(True)
    mouth_region_l1(g, target).backward()
    assert g.grad[..., :t, :].abs().sum() == 0 and g.grad[..., t:b, l:r].abs().sum() > 0


def test_paste_strip():
    base = torch.zeros(3, 64, 64)
    donor = torch.ones(3, 64, 64)
    box = (0.25, 0.5, 0.0, 1.0)
    out = paste_strip(base, donor, box)
    assert out[:, 16:32].eq(1).all() and out[:, :16].eq(0).all() and out[:, 32:].eq(0).all()
    assert base.eq(0).all()  # input untouched
    soft = paste_strip(base[None], donor[None], box, feather=4)
    assert soft.shape == (1, 3, 64, 64)
    assert 0 < soft[0, 0, 16, 32].item() < 1 and soft[0, 0, 24, 32].item() == 1


# --- landmark heatmaps (stage 0, landmarks) ------------------------------------------------

def test_heatmap_targets_peak_at_the_point_and_nan_points_are_empty():
    from pdfgc.losses.heatmaps import landmark_heatmaps

    # 64 px image, 16x16 maps (4 px cells): pixel (18, 42) is the centre of cell (row 10, col 4).
    points = torch.tensor([[[18.0, 42.0], [float("nan"), float("nan")]]])
    maps = landmark_heatmaps(points, map_size=16, image_size=64, sigma=1.0)
    assert maps.shape == (1, 2, 16, 16)
    assert maps[0, 0].argmax().item() == 10 * 16 + 4 and maps[0, 0, 10, 4].item() == pytest.approx(1.0)
    assert maps[0, 0, 10, 5].item() == pytest.approx(math.exp(-0.5), rel=1e-5), "one cell away = one sigma"
    assert maps[0, 1].abs().sum().item() == 0.0


def test_heatmap_loss_is_zero_at_the_target_and_ignores_missing_points():
    from pdfgc.losses.heatmaps import heatmap_loss, landmark_heatmaps

    points = torch.tensor([[[20.0, 30.0], [40.0, 12.0], [33.0, 33.0]]])
    target = landmark_heatmaps(points, 16, 64)
    assert heatmap_loss(target[:, :2], points, 64).item() == pytest.approx(0.0, abs=1e-12), \
        "a 2-map network learns from 3-point data"
    wrong = target.clone()
    wrong[:, 1] = 0.0
    missing = points.clone()
    missing[0, 1] = float("nan")
    assert heatmap_loss(wrong, points, 64).item() > 0.0
    assert heatmap_loss(wrong, missing, 64).item() == pytest.approx(0.0, abs=1e-12), "no target, no loss"
    with pytest.raises(ValueError, match="points"):
        heatmap_loss(target, points[:, :2], 64)


def test_heatmap_peaks_read_sub_cell_positions():
    from pdfgc.losses.heatmaps import heatmap_peaks, landmark_heatmaps

    points = torch.tensor([[[10.3, 50.9], [31.7, 8.2], [47.5, 47.5]]])
    found = heatmap_peaks(landmark_heatmaps(points, 16, 64), 64)
    assert (found - points).abs().max().item() < 0.2, "within 0.2 px from Gaussian maps of 4 px cells"


def test_motion_offsets_are_the_iris_lid_and_lip_differences():
    from pdfgc.losses.heatmaps import NUM_OFFSETS, motion_offsets

    points = torch.zeros(1, 70, 2)
    points[0, 36:42] = torch.tensor([[0.0, 0], [1, -1], [2, -1], [3, 0], [2, 1], [1, 1]])  # eye A, centred (1.5, 0)
    points[0, 42:48] = points[0, 36:42] + torch.tensor([10.0, 0])
    points[0, 68] = torch.tensor([2.0, 0.5])      # iris A: 0.5 right, 0.5 down of the eye's mean point
    points[0, 69] = torch.tensor([11.0, 0.0])     # iris B: 0.5 left
    points[0, 62, 1], points[0, 66, 1] = 20.0, 23.0  # inner lips 3 apart
    points[0, 48, 0], points[0, 54, 0] = 4.0, 12.0   # mouth 8 wide
    expected = torch.tensor([[0.5, 0.5, -0.5, 0.0, 2.0, 2.0, 3.0, 8.0]])
    assert NUM_OFFSETS == 8 and torch.allclose(motion_offsets(points), expected)
    shifted = points + torch.tensor([5.0, -3.0])  # a head translation moves no offset
    assert torch.allclose(motion_offsets(shifted), expected)
    assert torch.isnan(motion_offsets(points[:, :68])[0, :4]).all(), "no iris points: NaN iris offsets"


def test_expression_offsets_are_brow_corner_and_lower_lid_differences():
    from pdfgc.losses.heatmaps import NUM_EXPRESSION_OFFSETS, expression_offsets

    points = torch.zeros(1, 68, 2)
    points[0, [37, 38], 1] = torch.tensor([10.0, 12.0])   # eye A's upper lid at y 11
    points[0, [43, 44], 1] = 11.0                          # eye B's too
    points[0, 21] = torch.tensor([30.0, 6.0])              # inner brow A 5 above its lid
    points[0, 22] = torch.tensor([34.0, 7.0])              # inner brow B 4 above; 4 apart
    points[0, 17, 1], points[0, 26, 1] = 8.0, 9.0          # outer brows 3 and 2 above
    points[0, 51, 1], points[0, 57, 1] = 40.0, 46.0        # lips' centre line at y 43
    points[0, 48, 1], points[0, 54, 1] = 42.0, 44.5        # corner A 1 up, corner B 1.5 down
    points[0, [36, 39], 1], points[0, [40, 41], 1] = 12.0, 13.0   # lower lid A 1 below its corners
    points[0, [42, 45], 1], points[0, [46, 47], 1] = 12.0, 12.5   # lower lid B 0.5 below
    expected = torch.tensor([[-5.0, -4.0, -3.0, -2.0, 4.0, -1.0, 1.5, 1.0, 0.5]])
    assert NUM_EXPRESSION_OFFSETS == 9 and torch.allclose(expression_offsets(points), expected)
    moved = points + torch.tensor([-7.0, 2.5])  # a head translation moves none of them
    assert torch.allclose(expression_offsets(moved), expected)
    assert expression_offsets(torch.zeros(3, 70, 2)).shape == (3, 9), "iris points are ignored"


# ----------------------------------------------------------------------------- leakage


def _probe_r2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Held-out R² of a least-squares probe y <- x (first half fits, second half scores)."""
    h = len(x) // 2
    xa = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    w = torch.linalg.lstsq(xa[:h], y[:h].double()).solution
    res = y[h:].double() - xa[h:] @ w
    return float(1 - res.pow(2).sum() / (y[h:].double() - y[h:].double().mean(0)).pow(2).sum())


def test_linear_leakage_reads_linear_dependence():
    g = torch.Generator().manual_seed(7)
    M, Dx, Dy = 2000, 16, 3
    x = torch.randn(M, Dx, generator=g)
    unrelated = torch.randn(M, Dy, generator=g)
    assert linear_leakage(x[:64], unrelated[:64], x[64:], unrelated[64:]).item() < 0.05
    dependent = x[:, :Dy] * 2.0 + 0.1 * torch.randn(M, Dy, generator=g)
    leak = linear_leakage(x[:64], dependent[:64], x[64:], dependent[64:]).item()
    # the share of y's variance the probe explains (0.99 here), shrunk by the ridge: ~R² / (1 + 0.1)²
    assert 0.99 / 1.1 ** 2 - 0.1 < leak < 1.0
    with pytest.raises(ValueError):
        linear_leakage(x[:4], dependent[:5])


def test_linear_leakage_training_removes_the_factor_and_keeps_the_signal():
    """A linear code of (signal, nuisance) trained to carry the signal: with L_leak against the
    nuisance, a held-out probe no longer reads the nuisance, and the signal is still there."""
    torch.manual_seed(8)
    encoder = torch.nn.Linear(3, 8)
    leak = LinearLeakage(code_dim=8, factor_dim=2, bank_size=512)
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-2)

    def code_of(z):
        return encoder(z) + 0.3 * torch.randn(len(z), 8)  # a noisy code, as real codes are

    def batch(n):
        z = torch.randn(n, 3)
        return z, z[:, :1], z[:, 1:]  # signal s = z0, nuisance = z1, z2

    z, s, nuisance = batch(2000)
    with torch.no_grad():
        before = _probe_r2(code_of(z), nuisance)
    assert before > 0.5
    for _ in range(600):
        zb, sb, nb = batch(32)
        code = code_of(zb)
        loss = torch.nn.functional.mse_loss(code[:, :1], sb) + 3.0 * leak(code, nb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        leak.push(code, nb)
    with torch.no_grad():
        code = code_of(z)
    assert _probe_r2(code, nuisance) < 0.05
    assert _probe_r2(code, s) > 0.8
    assert len(leak.code_bank) == 512 and set(leak.state_dict()) >= {"code_bank.features", "factor_bank.features"}


def test_linear_leakage_module_waits_for_rows_and_validation_leaves_it_alone():
    torch.manual_seed(10)
    leak = LinearLeakage(code_dim=4, factor_dim=1, bank_size=64, min_rows=16)
    x = torch.randn(8, 4, requires_grad=True)
    assert leak(x, x[:, :1]).item() == 0.0  # 8 rows < 16: no fit yet
    for _ in range(4):
        z = torch.randn(8, 4)
        leak.push(z, z[:, :1])
    z = torch.randn(8, 4)
    assert leak(z, z[:, :1]).item() > 0.1  # the first dim is the factor
    state = {k: v.clone() for k, v in leak.state_dict().items()}
    leak.eval()
    leak(torch.randn(8, 4), torch.randn(8, 1))
    for k, v in leak.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_linear_leakage_factor_groups_equal_separate_adversaries():
    """One code bank and one fit for several factor groups gives the sum of one adversary per
    group (ridge fits every factor column on its own)."""
    torch.manual_seed(11)
    pose_eye, mouth = LinearLeakage(6, 3, 128, min_rows=16), LinearLeakage(6, 20, 128, min_rows=16)
    grouped = LinearLeakage(6, 23, 128, min_rows=16, factor_groups=(3, 20))
    for _ in range(10):
        x = torch.randn(8, 6)
        y = torch.cat([x[:, :3] + 0.5 * torch.randn(8, 3), torch.randn(8, 20)], 1)
        torch.testing.assert_close(grouped(x, y), pose_eye(x, y[:, :3]) + mouth(x, y[:, 3:]))
        for leak, part in ((pose_eye, y[:, :3]), (mouth, y[:, 3:]), (grouped, y)):
            leak.push(x, part)
    assert grouped(x, y).item() > 0.3
    with pytest.raises(ValueError):
        LinearLeakage(6, 23, factor_groups=(3, 19))
