"""Latency measurement (issue 15): torch.utils.benchmark timing, threads, the table's additivity,
and latency_lut / search.constraints where the ensembles and the adaptation choose."""
from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from natv2.costs import measure_latency, time_forward
from natv2.latency_table import _PartTimer, _prepare, arch_keys, measure_table, static_parts
from natv2.space import SearchSpace


class ThreadsSeen(nn.Module):
    """A tiny net that records torch's thread count at every forward (in a list its copies share)."""

    SEEN: list[int] = []

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        self.SEEN.append(torch.get_num_threads())
        return self.conv(x)


def ticking_clock(step: float = 1.0):
    """A clock that advances ``step`` seconds at every reading: timings become exact counts."""
    counter = itertools.count()
    return lambda: step * next(counter)


def test_time_forward_times_blocks_after_the_warmup_and_at_least_repeats_of_them():
    calls = []
    times = time_forward(lambda: calls.append(1), repeats=4, warmup=2, min_time=0.0, clock=ticking_clock())
    # the ticking clock makes every block 1 s, so the probe (one call, >= min_time / 100) keeps
    # 1 call per block; then blocks of that size until repeats (min_time 0 is already met)
    assert times == [1.0] * 4
    assert len(calls) == 2 + 1 + 4  # warm-up, the untimed block-size probe, the timed blocks


def test_time_forward_sizes_blocks_to_a_hundredth_of_min_time_and_times_min_time_of_them():
    calls = []

    def call_clock():  # 0.2 ms per call made so far: a block of n calls lasts n * 0.2 ms
        return 2e-4 * len(calls)

    times = time_forward(lambda: calls.append(1), repeats=3, warmup=2, min_time=0.1, clock=call_clock)
    # probe: 1 call (0.2 ms) < 1 ms, 10 calls (2 ms) >= 1 ms -> blocks of 10 calls; then blocks
    # until 0.1 s of them: 50 blocks (more than repeats), each 0.2 ms per call
    assert len(times) == 50
    assert times == pytest.approx([2e-4] * 50)
    assert len(calls) == 2 + (1 + 10) + 50 * 10


def test_measure_latency_is_the_median_per_pass_in_ms_and_respects_threads():
    net = ThreadsSeen()
    net.SEEN.clear()
    before = torch.get_num_threads()
    ms = measure_latency(net, 8, repeats=3, warmup=1, min_time=0.0, fold_bn=False, clock=ticking_clock(0.002))
    assert ms == pytest.approx(2.0)  # exact with the ticking clock: one 2 ms tick per block of 1 pass
    assert set(net.SEEN) == {1}  # 1 thread by default, whatever torch had
    assert torch.get_num_threads() == before  # restored
    net.SEEN.clear()
    real = measure_latency(net, 8, repeats=2, warmup=0, min_time=0.0, fold_bn=False, threads=2)
    assert real > 0 and set(net.SEEN) == {2}
    with pytest.raises(Exception, match="threads >= 1"):
        time_forward(lambda: None, threads=0)


def test_part_shares_cover_the_whole_pass_dense_additions_included():
    from natv2.nets import build_supernet
    from natv2.space import Arch

    torch.manual_seed(0)
    supernet = build_supernet({"variant": "EE_D", "resolutions": [16], "widths": [1.0], "stem_stride": 2}, 5).eval()
    space = supernet.space
    arch = Arch(resolution=16, width=1.0, exit=space.n_exits, branches=None,
                stages=tuple(((3, 3),) * space.max_blocks for _ in range(space.n_stages)))
    net, fmt = _prepare(supernet.extract(space.encode(arch)), torch.device("cpu"), True, True)
    x = torch.randn(1, 3, 16, 16).contiguous(memory_format=fmt)
    timer = _PartTimer(net, static_parts(net), torch.device("cpu"), time.thread_time)
    timer.on = True
    outside = []
    with torch.inference_mode():
        for _ in range(5):
            t0 = time.thread_time()
            net(x)
            outside.append(time.thread_time() - t0)
    timer.remove()
    assert len(timer.passes) == 5
    for shares, total in zip(timer.passes, outside):
        assert set(shares) == set(static_parts(net))  # every part, once per pass
        assert all(v >= 0 for v in shares.values())
        # the shares telescope: they add up to the pass (all but the hooks' entry and exit)
        assert 0.8 * total <= sum(shares.values()) <= total
    parts, hooked = timer.shares()
    assert hooked > 0 and sum(parts.values()) <= 1.5 * hooked


def test_measured_table_is_additive_with_the_overhead_once_per_subnet():
    from natv2.nets import build_supernet

    torch.manual_seed(0)
    supernet = build_supernet({"variant": "ofa_mbv3", "resolutions": [16], "widths": [1.0], "stem_stride": 2,
                               "kernels": [3], "expands": [3, 4]}, 5)
    table = measure_table(supernet, repeats=1, warmup=0, min_time=0.0, clock=time.thread_time)
    space = supernet.space
    assert table.settings["threads"] == 1 and table.device["threads"] == 1 and table.settings["clock"] == "thread_time"
    assert table.entries["overhead/w1/r16"] >= 0
    for g in space.sample(10, np.random.default_rng(0), policy="nat"):
        keys = arch_keys(space.decode(g))
        assert sum(k.startswith("overhead/") for k in keys) == 1 and keys[0].startswith("stem/")
        parts = sum(table.entries[k] for k in keys if not k.startswith("overhead/"))
        assert table.predict(space, [g])[0] == pytest.approx(parts + table.entries["overhead/w1/r16"])


# --------------------------------------------------------------------------------------------
# latency_lut where the ensembles and the adaptation choose


def test_ensembles_use_latency_lut_when_the_run_has_a_table():
    from natv2.config import load_settings
    from natv2.ensemble_selection import cost_objective, ensemble_costs, select_ensembles, topk_from_probs

    plain = load_settings()
    lut = load_settings(overrides={"search": {"latency_table": "table.json"}})
    columns = ["id", "params", "latency_ms", "latency_lut"]
    assert cost_objective(plain, columns) == "latency_ms"
    assert cost_objective(lut, columns) == "latency_lut"
    assert cost_objective(lut, ["id", "latency_ms"]) == "latency_ms"  # a front without the column
    assert cost_objective(load_settings(overrides={"search": {"latency_table": "t.json"}, "ensemble": {"objective": "params"}}),
                          columns) == "params"

    # the members' table latencies rank opposite to the measured ones: the search follows latency_lut
    costs = pd.DataFrame({"params": [1, 1, 1], "macs": [1, 1, 1], "latency_ms": [1.0, 2.0, 3.0],
                          "latency_lut": [30.0, 20.0, 10.0]}, index=["a", "b", "c"])
    X = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)
    par = ensemble_costs(costs, X, "parallel")
    assert par["latency_lut"].tolist() == [30.0, 20.0] and par["latency_ms"].tolist() == [2.0, 3.0]
    assert ensemble_costs(costs, X, "sequential")["latency_lut"].tolist() == [50.0, 30.0]
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (60,), generator=gen)
    members = {}
    for m in "abc":
        logits = torch.randn(60, 4, generator=gen)
        logits[torch.arange(60), labels] += 3.0
        members[m] = topk_from_probs(logits.softmax(1), 4)
    out = select_ensembles(members, labels.numpy(), costs, mode="parallel", objective="latency_lut",
                           population=8, generations=4, rng=np.random.default_rng(0))
    assert "latency_lut" in out.columns
    assert out["latency_lut"].is_monotonic_increasing  # sorted by the objective: the table's latency


def test_adaptation_prefers_feasible_genomes_as_the_archive_survival_does():
    from natv2.adapt import adaptation_distribution

    space = SearchSpace(resolutions=(16, 32))
    genomes = space.sample(6, np.random.default_rng(0), policy="nat")
    genomes[:3, 0], genomes[3:, 0] = 0, 1  # resolution 16 for the first three, 32 for the others
    archive = pd.DataFrame({"genome": [space.to_string(g) for g in genomes],
                            "top1_err": [1.0, 2.0, 3.0, 50.0, 60.0, 70.0],  # the r16 rows dominate ...
                            "params": [10, 20, 30, 100, 110, 120],
                            "macs": [1] * 6,
                            "latency_ms": [9.0, 9.0, 9.0, 1.0, 1.0, 1.0]})  # ... but break the latency budget
    cfg = SimpleNamespace(top_n=3, pseudo_count=0.0)
    free = SimpleNamespace(objectives=("top1_err", "params"), constraints={})
    bound = SimpleNamespace(objectives=("top1_err", "params"), constraints={"latency_ms": 5.0})
    rng = np.random.default_rng(0)
    assert adaptation_distribution(archive, space, free, cfg, rng)[0].tolist() == [1.0, 0.0]
    assert adaptation_distribution(archive, space, bound, cfg, rng)[0].tolist() == [0.0, 1.0]
