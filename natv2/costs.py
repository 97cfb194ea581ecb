"""Costs of a network: parameters, MACs (torch's own flop counter), latency on the current device.

    count_params(static)                          -> int
    count_macs(static, resolution=32)             -> int   (FLOPs / 2 of one 1x3xRxR forward)
    measure_latency(static, 32, batch_size=1, repeats=10, warmup=3, threads=1)  -> ms (median, torch.utils.benchmark)

A supernet passed here is measured as its active subnet (extracted first), so the elastic
machinery (kernel transforms, weight slicing) never counts.
"""
from __future__ import annotations

import copy
import statistics

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


def time_forward(fn, *, repeats: int = 10, warmup: int = 3, min_time: float = 0.1, threads: int | None = 1,
                 clock=None) -> list[float]:
    """Seconds per call of ``fn()``: one figure per timed block, at least ``repeats`` blocks.

    torch.utils.benchmark's Timer times the blocks (it pins torch to ``threads`` intra-op
    threads, None = the current count, and synchronises the accelerator around every block):
    ``warmup`` untimed calls, then an untimed probe that sizes a block as the smallest power of
    ten of calls lasting ``min_time / 100`` seconds at least (so the timer's own ~1 us per block
    stays under 0.1 %), then blocks of that size until there are ``repeats`` of them and
    ``min_time`` seconds of them.

    Not ``Timer.blocked_autorange``: its probe also asks the timer's overhead to be 1e-4 of a
    block, which for a 3-7 ms subnet means blocks of 10 passes, 100 passes for 10 blocks (~0.5 s
    a subnet; 0.85 s of a CIFAR-10 subnet's 2.4 s evaluation went to its costs). Blocks of one
    pass repeat as well at a quarter of the time: 16 pool subnets of a CIFAR-10 run (32 px)
    timed three times each way ranked alike (Kendall tau between repeats 0.78-0.85 against
    0.73-0.85, median difference 3-5 % against 7-11 %; 16 digits subnets: 0.78-0.85 against
    0.77-0.90, 6-10 % against 4-6 %), 0.12 s a subnet against 0.5 s.
    ``clock``: a timer function instead of the wall clock (e.g. ``time.thread_time``, CPU time,
    steadier on a shared machine).
    """
    from torch.utils.benchmark import Timer
    from torch.utils.benchmark.utils.common import set_torch_threads

    if repeats < 1 or warmup < 0 or min_time < 0 or (threads is not None and threads < 1):
        raise Natv2Error(f"latency: expected repeats >= 1, warmup >= 0, min_time >= 0, threads >= 1; "
                         f"got {repeats}, {warmup}, {min_time}, {threads}")
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads or torch.get_num_threads(),
                  **({} if clock is None else {"timer": clock}))
    # Timer.timeit(n) adds max(n // 100, 2) warm-up calls of its own to every block; its inner
    # block timer does not
    block = getattr(timer, "_timeit", None) or (lambda n: timer.timeit(n).raw_times[0])
    with set_torch_threads(threads or torch.get_num_threads()):
        if warmup:
            block(warmup)
        number = 1
        while block(number) < min_time / 100 and number < 10**9:
            number *= 10
        times: list[float] = []
        timed = 0.0  # seconds of timed blocks so far
        while len(times) < repeats or timed < min_time:
            seconds = block(number)
            times.append(seconds / number)
            timed += seconds
    return times


def inference_copy(model: nn.Module, device: torch.device, channels_last: bool = True, fold_bn: bool = True):
    """(net, memory format): the form a deployed subnet runs in (BN folded, channels_last, eval, on ``device``).

    The latency table (natv2.latency_table) times its blocks in exactly this form.
    """
    from natv2.nets.layers import fold_bn as _fold

    net = _fold(model) if fold_bn else copy.deepcopy(model).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return net.to(device).eval().to(memory_format=fmt), fmt


def measure_latency(
    model: nn.Module,
    resolution: int,
    *,
    batch_size: int = 1,
    repeats: int = 10,
    warmup: int = 3,
    min_time: float = 0.1,
    threads: int | None = 1,
    device: str | torch.device | None = None,
    channels_last: bool = True,
    fold_bn: bool = True,
    clock=None,
) -> float:
    """Median time in milliseconds of one forward pass of a ``batch_size`` batch.

    Measured on ``device`` (default: the model's) with ``threads`` torch threads (1 by default,
    None = the current count), on an inference copy (BN folded, channels_last) — the form a
    deployed subnet runs in — by :func:`time_forward`: ``warmup`` untimed passes, then the
    median over at least ``repeats`` timed blocks of ``Timer.blocked_autorange`` (``min_time``
    seconds at least).
    """
    if repeats < 1 or batch_size < 1 or warmup < 0:
        raise Natv2Error(f"latency: expected repeats >= 1, batch_size >= 1, warmup >= 0; got {repeats}, {batch_size}, {warmup}")
    net = _static(model)
    device = torch.device(device) if device is not None else _device_of(net)
    net, fmt = inference_copy(net, device, channels_last, fold_bn)
    # its own generator: a latency measurement must not advance the global RNG of a seeded run
    from natv2.rng import torch_stream

    x = torch.randn(batch_size, 3, resolution, resolution, generator=torch_stream(0, "latency"))
    x = x.to(device).contiguous(memory_format=fmt)
    with torch.inference_mode():
        times = time_forward(lambda: net(x), repeats=repeats, warmup=warmup, min_time=min_time, threads=threads,
                             clock=clock)
    return 1000.0 * statistics.median(times)
