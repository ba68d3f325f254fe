"""Loss and augmentation maths of drdm_engine.training."""
import math

import torch

from drdm_engine.training import augmentation as augment
from drdm_engine.training import losses


def _smooth_field(nd: int, side: int, amplitude: float) -> torch.Tensor:
    axes = torch.meshgrid(*[torch.linspace(0, math.pi, side)] * nd, indexing="ij")
    return torch.stack([amplitude * torch.sin(axes[(c + 1) % nd]) for c in range(nd)]).unsqueeze(0)


def test_mrse_and_cosine_of_exact_inverse():
    c = torch.randn(2, 3, 8, 8, 8)
    assert torch.allclose(losses.mrse_per_sample(-c, c), torch.zeros(2), atol=1e-6)
    assert math.isclose(float(losses.cosine(-c, c)), -1.0, abs_tol=1e-5)
    assert math.isclose(float(losses.cosine(c, c)), 1.0, abs_tol=1e-5)
    assert torch.allclose(losses.mrse_per_sample(torch.zeros_like(c), c), torch.ones(2), atol=1e-4)


def test_recovery_loss_is_minimal_for_a_prediction_undoing_a_translation():
    """Constant F_clean (voxels): p = -F_clean / N (normalised) composes to exactly -c."""
    side = 16
    clean = torch.zeros(1, 2, side, side)
    clean[:, 0], clean[:, 1] = 1.5, -0.75
    undo = losses.recovery_loss(-clean / side, clean)
    assert float(undo.mrse) < 1e-8
    assert math.isclose(float(undo.cosine), -1.0, abs_tol=1e-3)  # eps 1e-7 under the square root
    assert float(undo.folding) == 0.0 and float(undo.gradient) == 0.0
    wrong = losses.recovery_loss(-clean, clean)  # voxels fed as normalised units: N times too large
    assert float(wrong.mrse) > 100 * float(undo.mrse) + 1


def test_folding_penalty_zero_for_smooth_field_positive_for_folding():
    smooth = _smooth_field(3, 16, 0.5)
    assert float(losses.folding_penalty(smooth)) == 0.0
    folding = _smooth_field(2, 16, 0.0)
    folding[:, 0] = -2.5 * torch.arange(16.0).view(16, 1)  # x -> x - 2.5 x: orientation reversed
    assert float(losses.folding_penalty(folding)) > 1.0


def test_gradient_penalty_ignores_constant_fields():
    assert float(losses.gradient_penalty(torch.full((1, 2, 8, 8), 0.3))) == 0.0
    assert float(losses.gradient_penalty(_smooth_field(2, 8, 0.1))) > 0.0


def test_augmentations_keep_shape_and_follow_the_generator():
    for shape in ((3, 1, 16, 16, 16), (3, 1, 32, 32)):
        x = torch.rand(shape)
        a = augment.augment(x, torch.Generator().manual_seed(5))
        b = augment.augment(x, torch.Generator().manual_seed(5))
        c = augment.augment(x, torch.Generator().manual_seed(6))
        assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
        assert torch.isfinite(a).all()


def test_crop_fractions_hold_the_asked_volume_fraction():
    g = torch.Generator().manual_seed(0)
    for scale in (0.6, 0.8, 1.0):
        fractions = augment.crop_fractions(3, scale, g)
        assert (fractions <= 1).all() and float(fractions.prod()) <= scale + 1e-9
        assert float(fractions.prod()) > 0.45


def test_intensity_clamp_bounds():
    x = torch.linspace(0, 1, 1000).view(1, 1, 10, 100).repeat(4, 1, 1, 1)
    g = torch.Generator().manual_seed(1)
    y = augment.random_intensity(x, g, gain_sd=0.0, offset_sd=0.0)
    top = y.flatten(1).max(1).values
    assert (y >= 0).all() and (top <= 1.0).all() and (top >= 0.6 - 1e-6).all()
