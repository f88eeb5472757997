"""Stage 3's ridge fit from the codes to G0's f_mot (pdfgc.stages.generator_init.ridge_code_map)."""

import torch

from pdfgc.stages.generator_init import ridge_code_map


def test_ridge_code_map_recovers_an_exact_affine_map_and_shrinks_with_the_ridge():
    torch.manual_seed(0)
    x = torch.randn(3000, 6) * torch.tensor([0.01, 0.1, 1.0, 5.0, 10.0, 50.0])  # columns of any size
    truth, offset = torch.randn(6, 3), torch.randn(3)
    code_map, shift = ridge_code_map(x, x @ truth + offset, ridge=1e-9)
    assert code_map.dtype == torch.float64 and code_map.shape == (6, 3) and shift.shape == (3,)
    assert torch.allclose(code_map.float(), truth, atol=1e-3) and torch.allclose(shift.float(), offset, atol=1e-3)
    # Uncorrelated columns (their correlation matrix is the identity): a ridge of 1, whatever the
    # columns' sizes, halves every slope.
    q = torch.linalg.qr(x.double() - x.double().mean(0))[0] * (len(x) - 1) ** 0.5  # centred, orthogonal, unit std
    uncorrelated = q * torch.tensor([0.01, 1.0, 50.0, 0.1, 5.0, 10.0], dtype=torch.float64)
    shrunk, _ = ridge_code_map(uncorrelated, uncorrelated @ truth.double(), ridge=1.0)
    assert torch.allclose(shrunk, truth.double() / 2, rtol=5e-3)


def test_ridge_code_map_over_two_ranks_equals_the_fit_on_all_rows():
    """Each rank passes its own rows; ``reduce_sum`` (DDP's all-reduce) makes the fit global."""
    torch.manual_seed(1)
    x, y = torch.randn(400, 5), torch.randn(400, 2)
    whole = ridge_code_map(x, y, ridge=0.1)
    # Rank 1's tensors, in the order rank 0 will ask for their sums.
    recorded: list[torch.Tensor] = []
    ridge_code_map(x[300:], y[300:], ridge=0.1, reduce_sum=lambda t: recorded.append(t.clone()) or t)
    others = iter(recorded)
    split = ridge_code_map(x[:300], y[:300], ridge=0.1, reduce_sum=lambda t: t + next(others))
    assert all(torch.allclose(a, b) for a, b in zip(whole, split))
