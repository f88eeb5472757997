"""CSIM with dlib's shipped face descriptor on the astronaut portrait; PSNR/SSIM known answers."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from pdfgc.metrics.face_quality import (CosineIdentitySimilarity, DlibFaceDescriptor, cosine_similarity, frame_psnr,
                                        frame_ssim)


@pytest.fixture(scope="module")
def astronaut():
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def descriptor():
    return DlibFaceDescriptor(detect=True)


def test_mirror_keeps_identity_and_a_scrambled_face_loses_it(astronaut, descriptor):
    mirror = np.ascontiguousarray(astronaut[:, ::-1])
    box = descriptor.face_box(astronaut)
    top, left, bottom, right = box.top(), box.left(), box.bottom(), box.right()
    assert 40 < top < 120 and 140 < left < 220 and (right - left) > 60  # the astronaut's face, not the patch
    scrambled = astronaut.copy()
    face = scrambled[top:bottom, left:right]
    h, w = (face.shape[0] // 3) * 3, (face.shape[1] // 3) * 3
    tiles = [face[i:i + h // 3, j:j + w // 3].copy() for i in range(0, h, h // 3) for j in range(0, w, w // 3)]
    order = [8, 6, 7, 2, 0, 1, 5, 3, 4]
    for k, (i, j) in enumerate((i, j) for i in range(0, h, h // 3) for j in range(0, w, w // 3)):
        face[i:i + h // 3, j:j + w // 3] = tiles[order[k]]
    ref, mir, scr = descriptor(np.stack([astronaut, mirror, scrambled]))
    assert np.linalg.norm(ref - mir) < 0.6  # dlib's "same person" threshold
    sims = cosine_similarity(ref, np.stack([mir, scr]))
    assert sims[0] > 0.97
    assert sims[1] < sims[0] - 0.02


def test_aligned_crop_without_detection_keeps_identity(astronaut, descriptor):
    import cv2

    crop = cv2.resize(astronaut[40:220, 130:310], (112, 112))  # roughly aligned face crop, small
    no_detect = DlibFaceDescriptor(detect=False)
    ref = descriptor(astronaut)[0]
    sim = cosine_similarity(ref, no_detect(crop[None]))[0]
    noise = np.random.default_rng(0).integers(0, 256, crop.shape, dtype=np.uint8)
    assert sim > 0.97
    assert cosine_similarity(ref, no_detect(noise[None]))[0] < sim - 0.05


def test_csim_metric_averages_frames_and_skips_nan():
    metric = CosineIdentitySimilarity()
    ref = np.array([1.0, 0.0])
    metric.update(ref, np.array([[1.0, 0.0], [0.0, 1.0]]))  # cos 1 and 0
    metric.update(ref, np.array([[np.nan, np.nan], [1.0, 1.0]]))  # skipped, cos 0.7071
    assert metric.compute().item() == pytest.approx((1.0 + 0.0 + 2 ** -0.5) / 3)


def test_psnr_and_ssim_known_answers():
    rng = np.random.default_rng(1)
    frames = rng.integers(20, 230, (3, 32, 32, 3), dtype=np.uint8)
    brighter = frames + np.uint8(10)
    assert np.allclose(frame_psnr(brighter, frames), 20 * np.log10(255 / 10))
    assert np.allclose(frame_ssim(frames, frames), 1.0)
    noisy = np.clip(frames + rng.normal(0, 40, frames.shape), 0, 255).astype(np.uint8)
    s = frame_ssim(noisy, frames)
    assert s.shape == (3,) and np.all(s < 0.9)


def test_iresnet_sizes_are_insightfaces():
    from pdfgc.networks.iresnet import IResNet

    # arcface_torch's published backbone sizes: IResNet-50 43.59 M, IResNet-100 65.16 M parameters
    assert sum(p.numel() for p in IResNet("r50").parameters()) == pytest.approx(43.59e6, rel=1e-3)
    r100 = IResNet("r100").state_dict()
    assert sum(v.numel() for k, v in r100.items() if "running" not in k and "num_batches" not in k) == \
        pytest.approx(65.16e6, rel=1e-3)
    assert r100["fc.weight"].shape == (512, 512 * 7 * 7) and "layer3.29.conv2.weight" in r100


def test_arcface_descriptor_loads_user_weights_and_aligns_faces(astronaut, tmp_path):
    import torch

    from pdfgc.errors import PdfgcError
    from pdfgc.metrics.face_quality import ArcFaceDescriptor, build_identity_descriptor
    from pdfgc.networks.iresnet import IResNet

    torch.manual_seed(0)
    torch.save(IResNet("r18").state_dict(), tmp_path / "backbone.pth")
    arcface = build_identity_descriptor("arcface", arcface_weights=str(tmp_path / "backbone.pth"), arcface_depth="r18")
    noise = np.random.default_rng(0).integers(0, 256, astronaut.shape, dtype=np.uint8)
    emb = arcface(np.stack([astronaut, astronaut, noise]))
    assert emb.shape == (3, 512)
    assert np.isfinite(emb[:2]).all() and np.isnan(emb[2]).all()  # no face in the noise
    assert cosine_similarity(emb[0], emb[1:2])[0] == pytest.approx(1.0, abs=1e-6)
    crops, found = arcface.align(astronaut[None])
    assert found[0] and crops.shape == (1, 112, 112, 3)
    # the aligned crop is the face: its mean colour is skin, far from the whole picture's
    face = astronaut[76:166, 175:265].reshape(-1, 3).mean(0)
    assert np.abs(crops[0, 20:90, 20:90].reshape(-1, 3).mean(0) - face).max() < 30
    with pytest.raises(PdfgcError, match="not an arcface_torch IResNet-34"):
        ArcFaceDescriptor(tmp_path / "backbone.pth", depth="r34")
    with pytest.raises(PdfgcError, match="metrics.identity.arcface_weights"):
        build_identity_descriptor("arcface", arcface_weights=None)
    with pytest.raises(PdfgcError, match="ArcFace weights not found"):
        build_identity_descriptor("arcface", arcface_weights=str(tmp_path / "missing.pth"))
