"""The network a run starts from: fresh, fine-tuned from a checkpoint (ours or published), or resumed."""
from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import DRDMError
from ..core.limits import require_int
from ..model import checkpoint
from ..model.checkpoint import ModelMeta
from ..model.network import RecResACNet
from .config import TrainConfig

OUTPUT_INIT_STD = 1e-5
FRESH_AMPLITUDE = 2.0
ARCHITECTURE = ("timesteps", "in_channels", "rec_num")
"""ModelMeta fields that describe the network's shape: a fine-tuned or resumed model keeps its source's."""
TRAIN_MISMATCH = "the image is {ndims}D; start from a {ndims}D model"


def meta_for(config: TrainConfig, ndims: int, trained_on: str, source: ModelMeta | None = None) -> ModelMeta:
    """Metadata of the model this run trains (the schedule it is trained with, working side N).

    The architecture (timesteps, input channels, recurrences) is the source model's (fine-tune, resume),
    else a fresh :class:`RecResACNet`'s. The amplitude is ``config.amplitude`` when set, else the source
    model's (a published import keeps the published N / S), else 2 for a fresh model (spec section 2.5).
    """
    amplitude = config.amplitude
    if amplitude is None:
        amplitude = source.amplitude if source is not None else FRESH_AMPLITUDE
    architecture = {name: getattr(source, name) for name in ARCHITECTURE} if source is not None else {}
    return ModelMeta(ndims=ndims, size=config.size, v_scale=config.v_scale, control_size=config.control_size,
                     noise_ratio=config.noise_ratio, amplitude=amplitude, compose_padding=config.compose_padding,
                     trained_on=trained_on, **architecture).validate()


def quiet_output(net: RecResACNet, std: float = OUTPUT_INIT_STD) -> RecResACNet:
    """Start the output convolution near zero (weights N(0, std), bias 0), so a fresh network predicts
    almost "no motion" (~1e-4 of the target) instead of fields ~100x one diffusion step (PyTorch's
    default init), which the loss then spends its first hundreds of steps shrinking."""
    with torch.no_grad():
        net.conv_out.weight.normal_(0.0, std)
        net.conv_out.bias.zero_()
    return net


def starting_network(config: TrainConfig, ndims: int) -> tuple[RecResACNet, dict | None, ModelMeta | None]:
    """Network to train, the training state to resume (``None`` unless ``config.resume``) and the
    metadata of the model it came from (``None`` for a fresh network).

    Refuses with one line: a missing or unreadable file, a checkpoint of another dimension, a
    resume file without training state.
    """
    if config.resume:
        loaded, training = checkpoint.load_checkpoint(config.resume, ndims=ndims, with_training=True,
                                                      mismatch=TRAIN_MISMATCH)
        if training is None:
            raise DRDMError(f"{config.resume} holds no training state; use --fine-tune to start from its weights")
        require_int(f"{config.resume}: training step", training.get("step"), 0)
        return loaded.net.train(), training, loaded.meta
    if config.fine_tune:
        source = Path(config.fine_tune)
        if checkpoint.is_checkpoint(source):
            loaded = checkpoint.load_checkpoint(source, ndims=ndims, mismatch=TRAIN_MISMATCH)
            net, meta = loaded.net, loaded.meta
        else:
            net, meta = checkpoint.import_published(source, size=config.size)
            if meta.ndims != ndims:
                raise DRDMError(f"model {source} is {meta.ndims}D but the training data is {ndims}D")
        return net.train(), None, meta
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = quiet_output(RecResACNet(ndims))
    return net.train(), None, None
