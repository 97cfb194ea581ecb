"""natv2.nets.depthwise: the tap-by-tap filter gradient of a depthwise conv on CPU maps smaller
than the filter equals torch's own (oneDNN) gradient, and the layers use it only there."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from natv2.nets import depthwise
from natv2.nets.depthwise import _SmallMapDepthwise, depthwise_conv2d, filter_grad_by_taps
from natv2.nets.elastic import ElasticDepthwiseConv
from natv2.nets.layers import ConvBNAct


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("size,kernel,stride,padding", [
    (1, 1, 1, 0), (2, 3, 1, 1), (3, 3, 2, 1), (4, 5, 1, 2), (4, 3, 2, 1), (5, 3, 1, (1, 0)), (2, 2, 1, 0)])
def test_small_map_gradients_equal_autograd(size, kernel, stride, padding, channels_last):
    gen = torch.Generator().manual_seed(size * 100 + kernel * 10 + stride)
    x = torch.randn(3, 5, size, size, generator=gen, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(5, 1, kernel, kernel, generator=gen, dtype=torch.float64)
    pad = (padding, padding) if isinstance(padding, int) else padding
    xa, wa = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = F.conv2d(xa, wa, None, stride, pad, 1, 5)
    grad_out = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ref_gx, ref_gw = torch.autograd.grad(ref, (xa, wa), grad_out)
    xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = _SmallMapDepthwise.apply(xb, wb, stride, *pad)
    gx, gw = torch.autograd.grad(out, (xb, wb), grad_out)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gw, ref_gw)
    assert gw.shape == (5, 1, kernel, kernel)


def test_gradcheck_through_the_function():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: _SmallMapDepthwise.apply(a, b, 2, 1, 1), (x, w))


def test_filter_grad_by_taps_sums_every_tap():
    # one channel, a 2 x 2 map of ones, 3 x 3 filter, padding 1: each tap's gradient counts the
    # output cells it reaches (centre 4, edges 2, corners 1), times the batch of 2
    x = torch.ones(2, 1, 2, 2)
    grad = filter_grad_by_taps(x, torch.ones(2, 1, 2, 2), (3, 3), 1, (1, 1))
    assert grad.squeeze().tolist() == [[2.0, 4.0, 2.0], [4.0, 8.0, 4.0], [2.0, 4.0, 2.0]]


def _uses_taps(monkeypatch, pays: bool) -> list[tuple]:
    calls: list[tuple] = []
    real = _SmallMapDepthwise.apply
    monkeypatch.setattr(depthwise, "taps_pay", lambda: pays)
    monkeypatch.setattr(_SmallMapDepthwise, "apply", lambda *a: calls.append(a[0].shape) or real(*a))
    return calls


CL = torch.channels_last


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (2, 3, 1, True), (4, 5, 1, True), (4, 7, 2, True), (4, 3, 1, False), (4, 3, 2, False), (8, 5, 1, False)])
def test_only_maps_smaller_than_the_filter_in_training_take_the_taps(monkeypatch, size, kernel, stride, expected):
    calls = _uses_taps(monkeypatch, True)
    x = torch.randn(2, 4, size, size).contiguous(memory_format=CL)
    w = torch.randn(4, 1, kernel, kernel, requires_grad=True)
    depthwise_conv2d(x, w, stride, kernel // 2).sum().backward()
    assert len(calls) == int(expected)
    with torch.no_grad():
        depthwise_conv2d(x, w, stride, kernel // 2)
    depthwise_conv2d(x, w.detach(), stride, kernel // 2)  # nothing to differentiate: plain conv
    depthwise_conv2d(x.contiguous(), w, stride, kernel // 2)  # NCHW: the strided sums do not pay
    assert len(calls) == int(expected)


def test_avx512_cpus_keep_onednns_gradient(monkeypatch):
    undecorated = depthwise.taps_pay.__wrapped__
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert undecorated() is False
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert undecorated() is True
    calls = _uses_taps(monkeypatch, False)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    depthwise_conv2d(torch.randn(2, 4, 2, 2).contiguous(memory_format=CL), w, 1, 1).sum().backward()
    assert calls == [] and w.grad.shape == (4, 1, 3, 3)


def test_static_and_elastic_depthwise_layers_train_through_the_taps(monkeypatch):
    calls = _uses_taps(monkeypatch, True)
    torch.manual_seed(0)
    static = ConvBNAct(8, 8, 5, 2, groups=8, act="relu")
    pointwise = ConvBNAct(8, 8, 1, 1, act="relu")
    elastic = ElasticDepthwiseConv(8, (3, 5, 7), 1)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=CL)
    pointwise(x).sum().backward()
    assert calls == []  # not depthwise
    static(x).sum().backward()  # 5 x 5 filter on a 4 x 4 map, stride 2
    elastic(x, 7).sum().backward()  # stride 1: cropped to the 7x7 taps a 4x4 map reaches
    assert len(calls) == 2
    # kernel 5 goes through the 7 -> 5 transformation matrix: its gradient too matches oneDNN's
    monkeypatch.setattr(depthwise, "taps_pay", lambda: False)
    y = elastic(x, 5)
    grads = torch.autograd.grad(y.square().sum(), (elastic.weight, elastic.transform_7to5))
    assert len(calls) == 2
    monkeypatch.setattr(depthwise, "taps_pay", lambda: True)
    y_taps = elastic(x, 5)
    grads_taps = torch.autograd.grad(y_taps.square().sum(), (elastic.weight, elastic.transform_7to5))
    assert len(calls) == 3
    torch.testing.assert_close(y_taps, y)
    for a, b in zip(grads_taps, grads):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
