"""The network a run starts from: fresh, fine-tuned from a checkpoint (ours or published), or resumed."""
from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint
from ..checkpoint import ModelMeta
from ..errors import DRDMError
from ..limits import require_int
from ..network import RecResACNet
from .config import TrainConfig


def meta_for(config: TrainConfig, ndims: int, trained_on: str) -> ModelMeta:
    """Metadata of the model this run trains (the schedule it was trained with, working side N)."""
    return ModelMeta(ndims=ndims, size=config.size, v_scale=config.v_scale, control_size=config.control_size,
                     noise_ratio=config.noise_ratio, amplitude=config.amplitude,
                     compose_padding=config.compose_padding, trained_on=trained_on).validate()


def _is_our_checkpoint(path: Path) -> bool:
    payload = checkpoint._read(path)
    return isinstance(payload, dict) and payload.get("format") == checkpoint.FORMAT


def starting_network(config: TrainConfig, ndims: int) -> tuple[RecResACNet, dict | None]:
    """Network to train and the training state to resume (``None`` unless ``config.resume``).

    Refuses with one line: a missing or unreadable file, a checkpoint of another dimension, a
    resume file without training state.
    """
    if config.resume:
        loaded, training = checkpoint.load_checkpoint(config.resume, ndims=ndims, with_training=True)
        if training is None:
            raise DRDMError(f"{config.resume} holds no training state; use --fine-tune to start from its weights")
        require_int(f"{config.resume}: training step", training.get("step"), 0)
        return loaded.net.train(), training
    if config.fine_tune:
        source = Path(config.fine_tune)
        if _is_our_checkpoint(source):
            net = checkpoint.load_checkpoint(source, ndims=ndims).net
        else:
            net, meta = checkpoint.import_published(source, size=config.size)
            if meta.ndims != ndims:
                raise DRDMError(f"model {source} is {meta.ndims}D but the training data is {ndims}D")
        return net.train(), None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = RecResACNet(ndims)
    return net.train(), None
