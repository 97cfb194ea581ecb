"""Bench: depthwise filter gradients tap by tap (natv2.nets.depthwise) against oneDNN's, per layer
and per training step.

    PYTHONPATH=. python bench/depthwise_grad.py [--threads 2] [--rounds 6] [--batch 64] [--steps 5]

Part 1 times forward + backward of single depthwise layers (channels_last, batch --batch) at the
map and filter sizes of MobileNetV3's late stages, both ways. Part 2 times whole training steps
(SGD, cross-entropy) of the largest digits net (ofa_mbv3, 16 px, stride-1 stem) and of the largest
CIFAR-10 default net (32 px, stride-2 stem), switching the taps off and on in alternate rounds so
that a machine whose speed drifts hits both alike; it prints the median step time of each.
Measure on a quiet machine. On a CPU with AVX-512 the workflow keeps oneDNN's gradient
(``taps_pay()`` is false): this bench forces the taps on to compare.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from natv2.costs import time_forward
from natv2.nets import depthwise

LAYERS = [  # channels, input side, filter, stride
    (480, 2, 3, 1), (240, 4, 3, 1), (240, 4, 5, 1), (240, 4, 7, 1), (144, 8, 5, 1), (144, 8, 7, 1),
    (336, 4, 3, 2), (336, 4, 5, 2), (336, 4, 7, 2), (240, 8, 3, 2), (240, 8, 5, 2), (240, 8, 7, 2)]


def median_ms(fn, n: int) -> float:
    """Median ms per call of ``fn()`` over ``n`` timed blocks (natv2.costs.time_forward, the
    latency timer: 3 warm-up calls, torch.utils.benchmark's Timer), at the current thread count."""
    return 1e3 * statistics.median(time_forward(fn, repeats=n, warmup=3, min_time=0.0, threads=None))


def layer_ms(x: torch.Tensor, w: torch.Tensor, stride: int, pad: int, n: int) -> tuple[float, float]:
    """Median ms of forward + backward with oneDNN's filter gradient, then with the taps."""
    grad = torch.randn_like(F.conv2d(x, w, None, stride, pad, 1, x.shape[1]))
    onednn = median_ms(lambda: F.conv2d(x, w, None, stride, pad, 1, x.shape[1]).backward(grad), n)
    taps = median_ms(lambda: depthwise._SmallMapDepthwise.apply(x, w, stride, pad, pad).backward(grad), n)
    return onednn, taps


def layer_table(batch: int, n: int) -> None:
    from natv2.nets.layers import reachable_taps

    print(f"per layer, forward + backward, batch {batch}, channels_last (ms)")
    print(f"{'chs':>5} {'map':>4} {'filter':>6} {'stride':>6} {'oneDNN':>8} {'taps':>8}")
    for chs, side, k, stride in LAYERS:
        x = torch.randn(batch, chs, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
        w = torch.randn(chs, 1, k, k)
        pad = k // 2
        if stride == 1:
            w, (pad, _) = reachable_taps(w, x)  # what the layers do in training
        w.requires_grad_()
        onednn, taps = layer_ms(x, w, stride, pad, n)
        print(f"{chs:>5} {side:>4} {k:>4}x{k} {stride:>6} {onednn:>8.2f} {taps:>8.2f}")


def step_times(name: str, overrides: dict, batch: int, rounds: int, steps: int) -> None:
    from natv2.config import load_settings
    from natv2.nets import build_supernet

    settings = load_settings(overrides={"supernet": overrides})
    torch.manual_seed(0)
    net = build_supernet(settings.supernet, 10)
    net.set_active(net.space.largest())
    net = net.to(memory_format=torch.channels_last).train()
    res = overrides["resolutions"][0]
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()

    times: dict[bool, list[float]] = {False: [], True: []}
    measured = depthwise.taps_pay
    try:
        for r in range(rounds):
            for taps in ((False, True) if r % 2 == 0 else (True, False)):
                depthwise.taps_pay = (lambda on=taps: on)
                times[taps].append(median_ms(step, steps))
    finally:
        depthwise.taps_pay = measured
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"{name}: {off:.0f} ms per step with oneDNN's gradient, {on:.0f} ms with taps "
          f"({batch * 1e3 / off:.0f} -> {batch * 1e3 / on:.0f} images/s, {off / on:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads; "
          f"the workflow uses the taps here: {depthwise.taps_pay()}")
    layer_table(args.batch, 11)
    step_times("digits, largest net (16 px, stride-1 stem)",
               {"variant": "ofa_mbv3", "resolutions": [16], "stem_stride": 1}, args.batch, args.rounds, args.steps)
    step_times("cifar10 default, largest net (32 px, stride-2 stem)",
               {"variant": "ofa_mbv3", "resolutions": [32], "stem_stride": 2}, args.batch, args.rounds, args.steps)


if __name__ == "__main__":
    main()
