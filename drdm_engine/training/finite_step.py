"""Backward pass and optimiser step of one batch, skipped when its loss or gradients are not finite.

A non-finite value must neither reach the weights (Adam would make them NaN for good) nor end the run.
With a fused optimiser (the CUDA one) the decision needs no host read of the GPU: the skip flag goes to
the optimiser's own kernel, which leaves weights, moments and step count as they were when it is set
(the mechanism ``torch.amp.GradScaler`` uses for overflowing fp16 gradients). Elsewhere (the CPU) the
flags are read on the host, which costs nothing there, and a non-finite loss skips the backward pass
too: PyTorch's CPU ``grid_sample`` backward with border padding writes outside its buffers when a
sampling coordinate is NaN (a segmentation fault; pytorch/pytorch#24823), and the network warps with
its own, then NaN, prediction.
"""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist


@functools.lru_cache(maxsize=None)
def fused_adam_fits(device: torch.device) -> bool:
    """Whether fused Adam steps on ``device`` where a gradient's strides differ from its weight's along
    size-1 axes only: the weight of a channels-last convolution with one input channel, whose gradient
    comes out in the default layout. torch before 2.5 refuses that ("... must have same dtype, device,
    and layout"); the Trainer then uses the plain Adam. Tried once per device on a tiny weight."""
    weight = torch.nn.Parameter(torch.zeros(6, device=device).as_strided((2, 1, 3), (3, 1, 1)))
    weight.grad = torch.zeros(2, 1, 3, device=device)
    try:
        torch.optim.Adam([weight], fused=True).step()
    except RuntimeError:
        return False
    return True


def _any_rank(flag: torch.Tensor, distributed: bool) -> torch.Tensor:
    """``flag`` (0-d bool) set on any process of the run (itself in a single process)."""
    if not distributed:
        return flag
    votes = flag.float()
    dist.all_reduce(votes, op=dist.ReduceOp.MAX)
    return votes > 0


def non_finite(loss: torch.Tensor, parameters: list[torch.Tensor], distributed: bool) -> torch.Tensor:
    """0-d bool tensor on the loss's device: ``loss`` or the total norm of the gradients of ``parameters``
    is not finite, on this process or (under DDP) any other."""
    norm = torch.nn.utils.clip_grad_norm_(parameters, float("inf"))  # an infinite bound measures, clips nothing
    return _any_rank(~(torch.isfinite(loss) & torch.isfinite(norm)), distributed)


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: "torch.amp.GradScaler",
                      parameters: list[torch.Tensor], distributed: bool) -> torch.Tensor:
    """``scaler.scale(loss).backward()`` and ``scaler.step(optimizer)`` unless the loss or a gradient is
    not finite; returns that skip flag (0-d bool on the loss's device). The gradients must be zeroed
    before. An enabled scaler (fp16) decides its own skips from the gradients."""
    fused = bool(optimizer.defaults.get("fused"))
    if not fused:
        bad_loss = _any_rank(~torch.isfinite(loss), distributed)
        if bool(bad_loss):
            return bad_loss
    scaler.scale(loss).backward()
    skip = non_finite(loss, parameters, distributed)
    if fused:
        optimizer.found_inf = skip.float()
        scaler.step(optimizer)
    elif not bool(skip):
        scaler.step(optimizer)
    return skip
