"""natv2.rng: named random streams, independent by name and keys, reproducible; no global RNG use."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from natv2.rng import STREAMS, seed_sequence, stream, stream_seed, torch_stream


def draws(seed, name, *keys):
    return stream(seed, name, *keys).integers(0, 2**62, 8)


def test_same_seed_name_and_keys_give_the_same_numbers():
    assert np.array_equal(draws(0, "search", 3), draws(0, "search", 3))
    assert stream_seed(5, "adapt", 2) == stream_seed(5, "adapt", 2)
    a, b = torch_stream(1, "bn-images"), torch_stream(1, "bn-images")
    assert torch.equal(torch.randperm(100, generator=a), torch.randperm(100, generator=b))


def test_streams_of_other_names_keys_or_seeds_differ():
    # every registered name, and each name at iterations 0..3: all distinct streams
    seen = {tuple(draws(0, name, i)) for name in STREAMS for i in range(4)}
    assert len(seen) == 4 * len(STREAMS)
    assert not np.array_equal(draws(0, "search", 1), draws(1, "search", 1))
    # the keys are not folded into the seed: (seed 1, key 0) is not (seed 0, key 1)
    assert not np.array_equal(draws(1, "update", 0), draws(0, "update", 1))
    assert stream_seed(0, "adapt", 1) != stream_seed(0, "adapt", 2) and 0 <= stream_seed(0, "adapt", 1) < 2**63
    a, b = torch_stream(0, "head"), torch_stream(0, "teacher-bn")
    assert not torch.equal(torch.randperm(100, generator=a), torch.randperm(100, generator=b))
    assert seed_sequence(7, "split").entropy[0] == seed_sequence(7, "holdout").entropy[0] == 7  # the seed is the root


def test_an_unknown_stream_name_is_an_error():
    with pytest.raises(ValueError, match="random stream 'serach': not one of natv2.rng.STREAMS"):
        stream(0, "serach", 1)


def test_measure_latency_leaves_the_global_torch_rng_alone():
    from natv2.costs import measure_latency

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert measure_latency(net, 8, repeats=1, warmup=0) > 0
    assert torch.equal(torch.get_rng_state(), before)
