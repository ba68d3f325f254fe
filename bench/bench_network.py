"""One RecResACNet forward (rec_num 2) against the machine's fp32 matmul rate, measured side by side:
PyTorch's own layers (the published ops and PyTorch's own kernel choice) vs the fast layers (every
convolution through oneDNN, channels-last throughout), fp32 and, with ``--bf16``, bf16 autocast.

The rate is the convolutions' arithmetic (2 x multiply-adds, counted from the layers' shapes) over the
wall time of the whole forward; the peak is a 4096 x 4096 fp32 ``torch.mm`` timed in the same
round-robin.

    PYTHONPATH=.:bench python bench/bench_network.py --case 3d64 [--repeats 3] [--bf16] [--batch 1]
"""
from __future__ import annotations

import argparse
import contextlib

import torch
from timing import machine, measure, row
from torch import nn

from drdm_engine.model.cpu import heap
from drdm_engine.model.cpu.routes import reference_layers
from drdm_engine.model.cpu.weights import frozen_weights
from drdm_engine.model.network import RecResACNet

CASES = {"3d64": (3, 64), "2d256": (2, 256), "3d128": (3, 128)}
MATMUL_SIDE = 4096


def convolution_flop(model: RecResACNet, image: torch.Tensor, t: torch.Tensor) -> int:
    """Floating-point operations (2 per multiply-add) of every convolution of one forward."""
    total = 0

    def count(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        w = module.weight
        if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            total += 2 * args[0].numel() * w[0].numel()
        else:
            total += 2 * out.numel() * w[0].numel()

    kinds = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, kinds)]
    with torch.no_grad():  # not inference mode: there the fused residual convolutions bypass the hooks
        model(image, t)
    for hook in hooks:
        hook.remove()
    return total


def layer_rates(ndims: int, size: int, repeats: int) -> None:
    """GFLOP/s of single fast-layer 3x3 convolutions at the network's channel counts and levels, next to
    the channel counts oneDNN's blocked weights pad them to (multiples of 16), and the matmul rate."""
    from drdm_engine.model.cpu.convolutions import Conv2d, Conv3d
    from drdm_engine.model.cpu.layout import channels_last

    a, b = torch.rand(MATMUL_SIDE, MATMUL_SIDE), torch.rand(MATMUL_SIDE, MATMUL_SIDE)
    works, flops = {"fp32 matmul 4096^3 (peak)": lambda: torch.mm(a, b)}, {}
    for channels, padded, side in ((10, 16, size), (20, 32, size // 2), (40, 48, size // 4)):
        for c in (channels, padded):
            conv = (Conv2d if ndims == 2 else Conv3d)(c, c, 3, padding=1).eval()
            x = channels_last(torch.rand((1, c) + (side,) * ndims))
            label = f"3x3 conv {c} -> {c} channels at {side}^{ndims}"
            works[label] = lambda conv=conv, x=x: conv(x)
            flops[label] = 2 * side ** ndims * c * c * 3 ** ndims
    print(machine())
    with torch.inference_mode(), frozen_weights():  # as in recovery: weights reordered once
        for work in works.values():
            work()
        times = measure(works, repeats)
    peak = 2 * MATMUL_SIDE ** 3 / times["fp32 matmul 4096^3 (peak)"][0]
    print(f"fp32 matmul: {peak / 1e9:.1f} GFLOP/s; fast layers (oneDNN, channels-last), {repeats} repeats (median)")
    for label, flop in flops.items():
        seconds = times[label][0]
        print(f"{label:<40} {seconds * 1e3:8.2f} ms  {flop / seconds / 1e9:6.1f} GFLOP/s = "
              f"{100 * flop / seconds / peak:5.1f} % of peak")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), default="3d64")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time the fast layers under bf16 autocast")
    parser.add_argument("--layers", action="store_true",
                        help="instead: one fast 3x3 convolution per U-Net level (10/20/40 channels) against the "
                             "same with the channels oneDNN pads them to (16/32/48), and the matmul rate")
    args = parser.parse_args()
    if args.layers:
        return layer_rates(*CASES[args.case], args.repeats)
    ndims, size = CASES[args.case]
    torch.manual_seed(0)
    model = RecResACNet(ndims).eval()
    image = torch.rand((args.batch, 1) + (size,) * ndims)
    t = torch.full((args.batch,), 79)
    a, b = torch.rand(MATMUL_SIDE, MATMUL_SIDE), torch.rand(MATMUL_SIDE, MATMUL_SIDE)

    def forward(layers: contextlib.AbstractContextManager, autocast: bool = False) -> torch.Tensor:
        with torch.inference_mode(), layers, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            return model(image, t)

    def fast_layers() -> contextlib.AbstractContextManager:
        """What recovery runs the fast layers in (``sampler.recover``): freed memory kept in the process
        while they run, weights reordered once (the ``frozen_weights`` block around ``main``'s works;
        PyTorch's own layers ignore it)."""
        return heap.retained()

    works = {
        "fp32 matmul 4096^3 (peak)": lambda: torch.mm(a, b),
        "forward, PyTorch's own layers, fp32": lambda: forward(reference_layers()),
        "forward, fast layers, fp32": lambda: forward(fast_layers()),
    }
    if args.bf16:
        works["forward, PyTorch's own layers, bf16 autocast"] = lambda: forward(reference_layers(), True)
        works["forward, fast layers, bf16 autocast"] = lambda: forward(fast_layers(), True)
    print(machine())
    flop = convolution_flop(model, image, t)
    print(f"{args.case}, batch {args.batch}: {flop / 1e9:.1f} GFLOP of convolutions per forward (rec_num 2); "
          f"{args.repeats} repeats, round-robin (median)")
    with frozen_weights():
        for work in works.values():
            work()  # warm-up: oneDNN primitive creation, allocator, the fast layers' reordered weights
        times = measure(works, args.repeats)
    peak = 2 * MATMUL_SIDE ** 3 / times["fp32 matmul 4096^3 (peak)"][0]
    baseline = times["forward, PyTorch's own layers, fp32"][0]
    print(f"fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
    for label, (seconds, spread) in times.items():
        if label.startswith("forward"):
            rate = flop / seconds
            print(row(label, seconds, spread, baseline) + f"  {rate / 1e9:6.1f} GFLOP/s = {100 * rate / peak:4.1f} % of peak")
    reference, fast = forward(reference_layers()), forward(fast_layers())
    print(f"max |fast - PyTorch's layers| fp32: {(fast - reference).abs().max():.2e} "
          f"(output max |value| {reference.abs().max():.3f}, normalised units)")


if __name__ == "__main__":
    main()
