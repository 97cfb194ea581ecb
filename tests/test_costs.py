"""Costs: parameters, MACs from torch's flop counter, latency."""
from __future__ import annotations

import dataclasses
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


def test_parallel_branch_costs_are_the_originals():
    """Params and MACs the OFAv2 parallel branches add (``OFA_mbv3_extended/networks/stages/
    static_stages/stat_layers_builders.py:225-290``, ``networks/layers/static_layers/stat_layers.py:50-85``):
    per block a 1x1 conv (no bias) + BN, and the transformation branch: in the first block of a
    stage a 1x1 conv with bias + BN after the max-pool, in the later blocks (same width) BN alone."""
    torch.manual_seed(0)
    net = build_supernet({"variant": "SE_P", "resolutions": [32], "stem_stride": 1}, 10).eval()
    space = net.space
    arch = space.decode(space.largest())

    def genome(key):
        return space.encode(dataclasses.replace(arch, branches=((key,) * 4,) * 5))

    only_mb, every = genome(4), genome(7)
    chs, sizes = [24, 40, 80, 112, 160], [16, 8, 4, 4, 2]  # OFA w1.0 stages; 32 px, strides 2, 2, 2, 1, 2
    params = macs = 0
    prev = 16  # the stem block's width
    for out, hw in zip(chs, sizes):
        params += (prev * out + 2 * out) + (prev * out + out + 2 * out)  # first block: conv, pool branch
        params += 3 * ((out * out + 2 * out) + 2 * out)  # later blocks
        macs += hw * hw * (2 * prev * out + 3 * out * out)
        prev = out
    assert count_params(net.extract(every)) - count_params(net.extract(only_mb)) == params
    assert count_macs(net.extract(every), 32) - count_macs(net.extract(only_mb), 32) == macs
