"""The quality figures' fast paths give the values of their plain definitions."""
from __future__ import annotations

import pytest
import torch

from drdm_engine.core import fields, metrics
from drdm_engine.core.metrics import label_agreement, strided_norms
from drdm_engine.core.order import quantile


@pytest.mark.parametrize("n", [1, 2, 7, 100, 12345])
def test_quantile_is_torch_quantile(n: int) -> None:
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    ties = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(n)).float()
    for q in (0.0, 0.005, 0.3, 0.5, 0.51, 0.99, 0.995, 1.0):
        assert torch.equal(quantile(values, q), torch.quantile(values, q))
        assert torch.equal(quantile(ties, q), torch.quantile(ties, q))


def test_jacobian_differences_are_torch_gradient() -> None:
    u = torch.randn(2, 3, 9, 2, 5, generator=torch.Generator().manual_seed(0))
    expected = torch.gradient(u, dim=(2, 3, 4))
    for axis in range(3):
        assert torch.equal(fields._gradient(u, 2 + axis), expected[axis])


def test_strided_norms_by_chunks_are_the_whole_field_norms() -> None:
    u = torch.randn(3, 10, 4, 5, generator=torch.Generator().manual_seed(1))
    whole = u.movedim(0, -1).reshape(-1, 3).norm(dim=1)[::7]
    chunks = torch.cat([strided_norms(u[:, s:s + 3], s * 20, 7) for s in range(0, 10, 3)])
    assert torch.allclose(chunks, whole, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.int64])
def test_label_agreement_counts_every_label_type(dtype: torch.dtype) -> None:
    """Dice and volume change by counting, for uint8 and wide label maps (values beyond 255 and negative)."""
    generator = torch.Generator().manual_seed(2)
    palette = torch.tensor([0, 3, 7, 200] if dtype == torch.uint8 else [0, -5, 3, 70000, 2 ** 40 if dtype == torch.int64 else 9])
    before = palette[torch.randint(0, len(palette), (6, 7, 8), generator=generator)].to(dtype)
    after = before.clone().reshape(-1)
    after[::5] = palette[1].to(dtype)
    after = after.reshape(before.shape)
    result = label_agreement(before, after, {int(palette[1]): "first"})
    for value in palette[1:].tolist():
        key = "first" if value == int(palette[1]) else str(value)
        a, b = before == value, after == value
        assert result["dice"][key] == pytest.approx(2 * int((a & b).sum()) / int(a.sum() + b.sum()), abs=1e-12)
        assert result["volume_change"][key] == pytest.approx((int(b.sum()) - int(a.sum())) / int(a.sum()), abs=1e-12)
    assert set(result["dice"]) == {"first", *(str(v) for v in palette[2:].tolist())}


@pytest.mark.parametrize("shape", [(37, 20, 18), (16, 9, 9), (17, 5, 6), (2, 7, 7), (50, 40)])
def test_folding_over_slabs_equals_the_whole_field(shape):
    """Slabs with one row either side give the determinants of the whole field: the same folded count
    and minimum, whatever the slab height (one row, a remainder, a single slab)."""
    nd = len(shape)
    g = torch.Generator().manual_seed(3)
    u = fields.resize(torch.randn((1, nd) + (4,) * nd, generator=g) * 4, shape)
    det = fields.jacobian_determinant(u)
    assert int((det <= 0).sum()) > 0
    for rows in (1, 3, 16, 100):
        figures = metrics.folding(u, rows)
        assert figures["jacobian_min"] == float(det.min())
        assert figures["folding_fraction"] == int((det <= 0).sum()) / det.numel()
