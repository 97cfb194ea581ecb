"""Costs: parameters, MACs from torch's flop counter, latency."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from natv2.costs import count_macs, count_params, measure_latency
from natv2.errors import Natv2Error
from natv2.nets import build_supernet


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return build_supernet({"resolutions": [32, 64], "stem_stride": 1}, 10).eval()


def test_macs_of_a_hand_countable_net():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5))
    # conv: 8x8 outputs x 8 channels x (3 x 3 x 3) MACs; linear: 512 x 5
    assert count_macs(net, 8) == 8 * 8 * 8 * 27 + 512 * 5
    assert count_params(net) == 8 * 27 + 512 * 5 + 5
    assert net.training  # mode restored


def test_supernet_costs_are_those_of_the_extracted_subnet(supernet):
    space = supernet.space
    for g in space.sample(3, np.random.default_rng(0), "natv2"):
        supernet.set_active(g)
        static = supernet.extract(g)
        res = space.decode(g).resolution
        assert count_params(supernet) == count_params(static) == sum(p.numel() for p in static.parameters())
        # the kernel transforms of the elastic forward are not counted
        assert count_macs(supernet, res) == count_macs(static, res)


def test_macs_grow_with_size_and_resolution(supernet):
    space = supernet.space
    small, large = supernet.extract(space.smallest()), supernet.extract(space.largest())
    assert count_macs(small, 32) < count_macs(large, 32)
    assert count_params(small) < count_params(large)
    ratio = count_macs(large, 64) / count_macs(large, 32)
    assert 3.5 < ratio < 4.0  # convolutions scale with the pixels; the head's 1x1 part does not
    with pytest.raises(Natv2Error, match="resolution 0"):
        count_macs(large, 0)


def test_latency_is_a_positive_median(supernet):
    static = supernet.extract(supernet.space.smallest())
    ms = measure_latency(static, 32, batch_size=2, repeats=3, warmup=1, device="cpu")
    assert math.isfinite(ms) and ms > 0
    ms_plain = measure_latency(static, 32, batch_size=1, repeats=2, warmup=0, channels_last=False, fold_bn=False)
    assert ms_plain > 0
    with pytest.raises(Natv2Error, match="repeats >= 1"):
        measure_latency(static, 32, repeats=0)
