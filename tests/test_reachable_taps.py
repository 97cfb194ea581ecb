"""natv2.nets.layers.reachable_taps: a stride-1 filter cropped to the taps that reach a small map
gives the same outputs and gradients as the whole filter (the training-step speed-up of late
stages at 32 px), and inference keeps the whole filter."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from natv2.nets.elastic import ElasticDepthwiseConv
from natv2.nets.layers import ConvBNAct, reachable_taps


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_cropped_depthwise_filter_is_exact(size, kernel):
    gen = torch.Generator().manual_seed(size * 10 + kernel)
    x = torch.randn(3, 6, size, size + 1, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 1, kernel, kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    full = F.conv2d(x, w, None, 1, kernel // 2, 1, 6)
    cropped_w, padding = reachable_taps(w, x)
    assert cropped_w.shape[-2] == min(kernel, 2 * size - 1) and cropped_w.shape[-1] == min(kernel, 2 * size + 1)
    crop = F.conv2d(x, cropped_w, None, 1, padding, 1, 6)
    torch.testing.assert_close(crop, full)
    grads_full = torch.autograd.grad(full.square().sum(), (x, w))
    grads_crop = torch.autograd.grad(crop.square().sum(), (x, w))
    for a, b in zip(grads_crop, grads_full):
        torch.testing.assert_close(a, b)


def test_elastic_and_static_layers_match_with_and_without_the_crop():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 2, 2, requires_grad=True)
    elastic = ElasticDepthwiseConv(16, (3, 5, 7), 1)
    static = ConvBNAct(16, 16, 7, 1, groups=16, act="h_swish")
    for layer, call in ((elastic, lambda m, t: m(t, 7)), (elastic, lambda m, t: m(t, 5)), (static, lambda m, t: m(t))):
        trained = call(layer, x)  # autograd on: cropped
        with torch.no_grad():
            plain = call(copy.deepcopy(layer), x)  # inference: the whole filter
        torch.testing.assert_close(trained.detach(), plain, rtol=1e-5, atol=1e-5)
