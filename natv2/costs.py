"""Costs of a network: parameters, MACs (torch's own flop counter), latency on the current device.

    count_params(static)                          -> int
    count_macs(static, resolution=32)             -> int   (FLOPs / 2 of one 1x3xRxR forward)
    measure_latency(static, 32, batch_size=1, repeats=20, warmup=5, device="cpu")  -> ms (median)

A supernet passed here is measured as its active subnet (extracted first), so the elastic
machinery (kernel transforms, weight slicing) never counts.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn

from natv2.errors import Natv2Error


def _static(model: nn.Module) -> nn.Module:
    """The active subnet of a supernet (anything with ``extract``), else the model itself."""
    return model.extract() if hasattr(model, "extract") and hasattr(model, "active_genome") else model


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def count_params(model: nn.Module) -> int:
    """Number of parameters (of the active subnet, for a supernet)."""
    return int(sum(p.numel() for p in _static(model).parameters()))


def count_macs(model: nn.Module, resolution: int, *, in_chs: int = 3) -> int:
    """Multiply-accumulates of one image at ``resolution`` (torch.utils.flop_counter; MACs = FLOPs / 2).

    Counts convolutions, linear layers and matrix products (what the flop counter knows);
    element-wise ops (activations, BN in eval mode, additions) are not MACs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not isinstance(resolution, int) or resolution < 1:
        raise Natv2Error(f"resolution {resolution!r}: expected a positive integer")
    net = _static(model)
    was_training = net.training
    net.eval()
    x = torch.zeros(1, in_chs, resolution, resolution, device=_device_of(net))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x)
    finally:
        net.train(was_training)
    return int(counter.get_total_flops()) // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    resolution: int,
    *,
    batch_size: int = 1,
    repeats: int = 20,
    warmup: int = 5,
    device: str | torch.device | None = None,
    channels_last: bool = True,
    fold_bn: bool = True,
) -> float:
    """Median wall time in milliseconds of one forward pass of a ``batch_size`` batch.

    Measured on ``device`` (default: the model's) after ``warmup`` untimed passes, on an
    inference copy (BN folded, channels_last) — the form a deployed subnet runs in.
    """
    from natv2.nets.layers import fold_bn as _fold

    if repeats < 1 or batch_size < 1 or warmup < 0:
        raise Natv2Error(f"latency: expected repeats >= 1, batch_size >= 1, warmup >= 0; got {repeats}, {batch_size}, {warmup}")
    net = _static(model)
    device = torch.device(device) if device is not None else _device_of(net)
    net = _fold(net) if fold_bn else copy.deepcopy(net).eval()
    net = net.to(device).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    # its own generator: a latency measurement must not advance the global RNG of a seeded run
    from natv2.rng import torch_stream

    x = torch.randn(batch_size, 3, resolution, resolution, generator=torch_stream(0, "latency"))
    x = x.to(device).contiguous(memory_format=fmt)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            net(x)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)
