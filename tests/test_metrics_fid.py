"""FID: the real torchmetrics / torch-fidelity path with a random BN-calibrated Inception file,
and a Gaussian-feature known answer against a NumPy/SciPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from pdfgc.errors import PdfgcError
from pdfgc.metrics.fid import build_fid, fid_from_features, fid_images


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torchvision InceptionV3 in the FID release's layout (1008 classes, no aux), random weights,
    BatchNorm statistics recalibrated so that eval-mode activations stay finite."""
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 299, 299) * 2 - 1)
    path = tmp_path_factory.mktemp("fid") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_identical_sets_give_zero_and_different_sets_more(inception_file):
    fid = build_fid(inception_file, feature=64)
    frames = np.random.default_rng(0).integers(0, 256, (10, 48, 48, 3), dtype=np.uint8)
    real = fid_images(frames)
    fid.update(real, real=True)
    fid.update(real, real=False)
    same = fid.compute().item()
    fid.reset()
    fid.update(real, real=True)
    dark = fid_images((frames * 0.3).astype(np.uint8))
    fid.update(dark, real=False)
    darker = fid.compute().item()
    assert abs(same) < 1e-3
    assert darker > 1.0
    # the evaluation caches Inception features per clip and computes FID from them at the end
    with torch.no_grad():
        cached = fid_from_features(fid.inception(real).numpy(), fid.inception(dark).numpy())
    assert cached == pytest.approx(darker, rel=1e-4)


def test_weights_problems_are_one_line_errors(tmp_path):
    with pytest.raises(PdfgcError, match="metrics.fid.weights"):
        build_fid(None)
    with pytest.raises(PdfgcError, match="not found"):
        build_fid(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PdfgcError, match="not an InceptionV3"):
        build_fid(tmp_path / "other.pth")


def reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_gaussian_features_match_a_numpy_reference():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((400, 6))
    b = rng.standard_normal((300, 6)) @ np.diag([1, 2, 0.5, 1, 1, 3]) + np.array([1, 0, 0, -2, 0, 0.5])
    expected = reference_fid(a, b)
    assert expected > 5.0
    assert fid_from_features(a, b) == pytest.approx(expected, rel=1e-6)
    assert np.isnan(fid_from_features(a[:1], b))
