"""RecResACNet against the published implementation's outputs (../shared/reference)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from drdm_engine import RecResACNet
from drdm_engine.core import fields
from drdm_engine.model.network import parameter_count
from drdm_engine.model.sampler import RecoverySettings, recover


@pytest.fixture(scope="module")
def published(reference):
    net = RecResACNet(2, timesteps=80, in_channels=1)
    state = torch.load(reference / "drdm_cmr_2d_published.pth", map_location="cpu")
    net.load_state_dict(state, strict=True)
    return net.eval(), np.load(reference / "parity_2d_cmr.npz")


def test_published_checkpoint_loads_strictly(published):
    net, _ = published
    assert parameter_count(net) == 443_435 and len(net.state_dict()) == 193


@pytest.mark.parametrize("source", ["clean", "warped"])
@pytest.mark.parametrize("t", [0, 5, 40, 79])
def test_network_output_matches_published(published, source, t):
    net, data = published
    image = torch.from_numpy(data["image" if source == "clean" else "warped_t40"])[None, None]
    with torch.inference_mode():
        out = net(image, torch.tensor([t]))[0].numpy()
    assert np.abs(out - data[f"net_out_{source}_t{t}"]).max() <= 1e-5


def test_single_pass_matches_published(published):
    net, data = published
    single = RecResACNet(2)
    single.load_state_dict(net.state_dict())
    single.rec_num = 1
    with torch.inference_mode():
        out = single.eval()(torch.from_numpy(data["warped_t40"])[None, None], torch.tensor([40]))[0].numpy()
    assert np.abs(out - data["net_out_warped_t40_rec1"]).max() <= 1e-5


def test_diffused_image_matches_published(published):
    _, data = published
    image = torch.from_numpy(data["image"])[None, None]
    field = torch.from_numpy(data["recover_ddf_rand_T48"])[None] * 256
    diffused = fields.warp(image, field, "bicubic", "zeros")[0, 0].numpy()
    assert np.abs(diffused - data["recover_img_diff_T48"]).max() <= 1e-5


@pytest.mark.slow
def test_full_recovery_matches_published_statistically(published):
    """80 recovery steps from the published start field (2D cardiac config: zero-padded composition).

    The loop is chaotic at float32 rounding level: the same code in float64 and float32 ends 0.055
    (normalised) apart, as far as it ends from the published float32 result (0.048), so bitwise
    parity (1e-4) is out of reach for any implementation other than the published binary. What must
    hold: the recovered field's size, folding and the recovered image agree with the published run.
    Run with PyTorch's own layers: a perturbation of the start field by 1e-6 of its range moves these
    figures by more than the thresholds below (magnitude ratio 0.91-1.03, correlation 0.81-0.94 over 4
    draws, ``notes/issue12.md``), and so do the fast layers' 1e-6 rounding differences; that the fast
    layers compute the same network is checked at 1e-5 on the published outputs
    (``test_published_network_parity_on_the_fast_path``).
    """
    net, data = published
    image = torch.from_numpy(data["image"])[None, None]
    start = torch.from_numpy(data["recover_ddf_rand_T48"])[None] * 256
    with torch.inference_mode():
        settings = RecoverySettings(compose_padding="zeros", fast_layers=False)
        composed = recover(net, image, start, range(79, -1, -1), settings)
    ref = torch.from_numpy(data["recover_ddf_comp_T48"])[None] * 256
    ours_mag, ref_mag = composed.norm(dim=1).mean(), ref.norm(dim=1).mean()
    assert abs(float(ours_mag / ref_mag) - 1) < 0.03  # 7.29 vs 7.33 voxels measured
    assert abs(float(fields.folding_fraction(composed) - fields.folding_fraction(ref))) < 0.005
    # mean |difference| 1.24 voxels measured; float32 vs float64 of this same code: 1.11 voxels
    assert float((composed - ref).abs().mean()) < 2.0
    rec = fields.warp(image, composed, "bicubic", "zeros")[0, 0].numpy()
    corr = np.corrcoef(rec.ravel(), data["recover_img_rec_T48"].ravel())[0, 1]
    # measured 0.949; the diffused image scores 0.36 and the undeformed input 0.68 against the same target
    assert corr > 0.9
    assert float(start.norm(dim=1).mean()) > 3 * float(ours_mag)  # recovery undid most of the diffusion
