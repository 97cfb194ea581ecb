"""Depthwise convolution whose filter gradient, on maps smaller than the filter, is summed tap by tap.

torch's CPU convolutions run on oneDNN. On an AVX2 CPU (no AVX-512), oneDNN's jit kernels for the
filter (weight) gradient of a depthwise convolution on channels_last maps do not take a map
smaller than its filter: ``ONEDNN_VERBOSE=1`` then prints ``x64:gemm:jit,backward_weights``, one
small GEMM per channel, at 12-23 ms per layer against 0.6-0.9 ms for a 3 x 3 filter on a 4 x 4
map (``jit_dw:avx2``). The late stages of every MobileNetV3 subnet run 3 x 3 to 7 x 7 filters on
4 x 4 and 2 x 2 maps, so these gradients were a large share of a training step there.

Where the filter is larger than the map, the gradient is cheap to sum directly: for each tap, the
product of the output gradient with the input shifted by that tap, summed over batch and space.
The input gradient and the forward pass stay oneDNN's. Same values as torch's gradient up to the
float summation order (tests/test_depthwise.py checks both against autograd).

Fwd + bwd per layer, batch 64, channels_last, 2 threads, torch 2.14.1 / oneDNN 3.12 on a 2-core
AMD EPYC (AVX2), oneDNN / taps in ms (input side, filter, stride):
2 px 3x3: 11.7 / 1.5; 4 px 5x5: 14.7 / 4.3; 4 px 7x7: 22.9 / 7.0; 4 px 5x5 s2: 23.1 / 2.4;
4 px 7x7 s2: 22.3 / 4.3; but where the map is as large as the filter oneDNN wins: 4 px 3x3:
0.7 / 2.0; 4 px 3x3 s2: 0.6 / 1.3; 8 px 5x5: 6.9 / 8.8; 8 px 7x7: 10.0 / 14.0; 8 px 5x5 s2: 2.9 / 5.9.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


@functools.cache
def taps_pay() -> bool:
    """Whether this CPU's oneDNN lacks the fast kernel: torch reports no AVX-512 capability.

    Measured only on an AVX2 CPU; AVX-512 CPUs keep oneDNN's gradient (their figures in the
    README were taken with it)."""
    return not torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int | tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, 1, channels)`` with the tap-by-tap filter
    gradient where a channels_last CPU map is smaller than the filter (see the module docstring;
    on contiguous maps the taps' strided sums cost more than they save)."""
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    if (weight.requires_grad and torch.is_grad_enabled() and x.device.type == "cpu"
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.jit.is_tracing() and taps_pay()):
        if x.shape[-2] < weight.shape[-2] or x.shape[-1] < weight.shape[-1]:
            return _SmallMapDepthwise.apply(x, weight, stride, ph, pw)
    return F.conv2d(x, weight, None, stride, (ph, pw), 1, x.shape[1])


def filter_grad_by_taps(x: torch.Tensor, grad_out: torch.Tensor, kernel: tuple[int, int], stride: int,
                        padding: tuple[int, int]) -> torch.Tensor:
    """The (C, 1, kh, kw) filter gradient of a depthwise conv, one tap at a time.

    Works in N x H x W x C order (a free permute of channels_last tensors), so each tap's sum
    runs over the leading dimensions with the channels contiguous."""
    (kh, kw), (ph, pw) = kernel, padding
    oh, ow = grad_out.shape[-2:]
    xp = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)
    go = grad_out.permute(0, 2, 3, 1)
    grad = x.new_empty(x.shape[1], kh, kw)
    for i in range(kh):
        for j in range(kw):
            shifted = xp[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride]
            grad[:, i, j] = (go * shifted).sum((0, 1, 2))
    return grad.unsqueeze(1)


class _SmallMapDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int, ph: int, pw: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, ph, pw)
        return F.conv2d(x, weight, None, stride, (ph, pw), 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        stride, ph, pw = ctx.conv
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [stride, stride], [ph, pw], [1, 1], False, [0, 0], x.shape[1],
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = filter_grad_by_taps(x, grad_out, tuple(weight.shape[-2:]), stride, (ph, pw))
        return grad_x, grad_w, None, None, None
