"""Our checkpoint format and the import of published state dicts."""
from __future__ import annotations

import pytest
import torch

from drdm_engine import RecResACNet
from drdm_engine.core.errors import DRDMError
from drdm_engine.model.checkpoint import ModelMeta, import_published, load_checkpoint, save_checkpoint


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    torch.manual_seed(0)
    net = RecResACNet(3, timesteps=40, in_channels=2)
    meta = ModelMeta(ndims=3, size=64, timesteps=40, in_channels=2, amplitude=2.0, trained_on="phantoms")
    save_checkpoint(tmp_path / "m.pt", net, meta, training={"step": 7})
    loaded, training = load_checkpoint(tmp_path / "m.pt", ndims=3, with_training=True)
    assert training == {"step": 7} and loaded.meta.amplitude == 2.0 and loaded.meta.engine_version
    assert loaded.meta.schedule.gain(64) == 2.0 and not loaded.net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, loaded.net.state_dict()[key])
    assert not list(tmp_path.glob(".*tmp*"))


def test_import_published_infers_its_shape(reference, tmp_path):
    net, meta = import_published(reference / "drdm_cmr_2d_published.pth", 256, compose_padding="zeros")
    assert (meta.ndims, meta.timesteps, meta.in_channels, meta.size) == (2, 80, 1, 256)
    save_checkpoint(tmp_path / "cmr.pt", net, meta)
    assert load_checkpoint(tmp_path / "cmr.pt").meta.compose_padding == "zeros"
    with pytest.raises(DRDMError, match="already a DRDM checkpoint"):
        import_published(tmp_path / "cmr.pt", 256)
    with pytest.raises(DRDMError, match="multiple of 8"):
        import_published(reference / "drdm_cmr_2d_published.pth", 250)


def test_unfit_checkpoints_are_refused_with_one_line(reference, tmp_path):
    state = torch.load(reference / "drdm_cmr_2d_published.pth", map_location="cpu")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(DRDMError, match="does not fit") as info:
        import_published(tmp_path / "extra.pth", 256)
    assert "\n" not in str(info.value)
    torch.save({"some": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(DRDMError, match="not a RecResACNet state dict"):
        import_published(tmp_path / "other.pth", 256)
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DRDMError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(DRDMError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    save_checkpoint(tmp_path / "two.pt", RecResACNet(2), ModelMeta(ndims=2, size=64))
    with pytest.raises(DRDMError, match="is 2D but the image is 3D"):
        load_checkpoint(tmp_path / "two.pt", ndims=3)
