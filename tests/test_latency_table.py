"""Latency lookup tables (issue 15): keys of a genome, predictions, the table file, `natv2 latency-table`."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from natv2.cli import main
from natv2.config import load_settings
from natv2.errors import Natv2Error
from natv2.latency_table import LatencyTable, arch_keys, load_table, measure_table
from natv2.space import SearchSpace


def keyed_table(space: SearchSpace) -> LatencyTable:
    """A table whose every entry is a distinct known number (no timing); early-exit spaces: the
    stem and blocks per exit (suffix /x<exit>), 10000 x exit more."""
    entries = {}
    for w in space.widths:
        for r in space.resolutions:
            entries[f"head/w{w:g}/r{r}"] = 2000.0
            entries[f"overhead/w{w:g}/r{r}"] = 0.5
            for x in range(1, space.n_exits + 1):
                entries[f"exit/w{w:g}/r{r}/x{x}"] = 3000.0 + x
            for x in (range(1, space.n_exits + 1) if space.n_exits else [None]):
                sx, more = ("", 0.0) if x is None else (f"/x{x}", 10000.0 * x)
                entries[f"stem/w{w:g}/r{r}{sx}"] = 1000.0 + more
                for s in range(space.n_stages):
                    for first in ("first", "later"):
                        for k in space.kernels:
                            for e in space.expands:
                                entries[f"block/w{w:g}/r{r}/s{s}/{first}/k{k}/e{e}{sx}"] = (
                                    100.0 * s + (10.0 if first == "first" else 0.0) + k + e / 10 + more)
    return LatencyTable(entries, {}, {"resolutions": list(space.resolutions), "widths": list(space.widths)}, {})


def test_prediction_is_the_sum_of_the_genome_parts():
    space = SearchSpace(resolutions=(32,))
    table = keyed_table(space)
    genome = space.from_string("r32-w1.0-k3e4.k5e6-k7e3.k3e3.k3e3-k3e6.k3e6-k5e4.k5e4.k7e6.k3e3-k3e3.k3e3")
    expected = (1000 + 2000 + 0.5
                + (10 + 3 + 0.4) + (5 + 0.6)
                + (110 + 7 + 0.3) + (100 + 3 + 0.3) * 2
                + (210 + 3 + 0.6) + (200 + 3 + 0.6)
                + (310 + 5 + 0.4) + (300 + 5 + 0.4) + (300 + 7 + 0.6) + (300 + 3 + 0.3)
                + (410 + 3 + 0.3) + (400 + 3 + 0.3))
    assert table.predict(space, [genome])[0] == pytest.approx(expected)
    assert table.predict(space, [space.to_string(genome)])[0] == pytest.approx(expected)  # string form too


def test_an_early_exit_skips_the_later_stages():
    space = SearchSpace(resolutions=(32,), n_exits=5)
    table = keyed_table(space)
    full = table.predict(space, [space.largest()])[0]
    g = space.encode(dataclasses.replace(space.decode(space.largest()), exit=2))  # exit after stage 2
    arch = space.decode(g)
    keys = arch_keys(arch)
    assert keys[-2] == "exit/w1/r32/x2" and not any("/s2/" in k for k in keys)
    assert keys[0] == "stem/w1/r32/x2" and all(k.endswith("/x2") for k in keys if k.startswith("block/"))
    assert table.predict(space, [g])[0] < full


def test_missing_entries_and_wrong_files_are_one_line_errors(tmp_path):
    space = SearchSpace(resolutions=(32, 40))
    table = keyed_table(SearchSpace(resolutions=(32,)))
    with pytest.raises(Natv2Error, match=r"no entries for resolutions \[40\]"):
        table.check_space(space)
    g = space.smallest()
    g[0] = 1  # resolution 40
    with pytest.raises(Natv2Error, match=r"no entry 'stem/w1/r40'"):
        table.predict(space, [g])
    with pytest.raises(Natv2Error, match="latency table not found"):
        load_table(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"entries": {}}))
    with pytest.raises(Natv2Error, match="not a natv2 latency table"):
        load_table(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"format": "natv2-latency-table", "version": 1, "entries": {}}))
    with pytest.raises(Natv2Error, match="version 1, this natv2 reads version 2"):
        load_table(tmp_path / "old.json")


@pytest.mark.parametrize("variant", ["ofa_mbv3", "EE_B", "SE_P"])
def test_measured_table_covers_every_genome(variant):
    from natv2.nets import build_supernet

    torch.manual_seed(0)
    supernet = build_supernet({"variant": variant, "resolutions": [16], "widths": [1.0], "stem_stride": 2}, 5)
    table = measure_table(supernet, repeats=1, warmup=0, min_time=0.0)
    space = supernet.space
    n_combos = len(space.kernels) * len(space.expands) * max(len(space.branch_keys), 1)
    stage_runs = sum(range(1, space.n_exits + 1)) if space.n_exits else space.n_stages  # per exit, its stages
    assert sum(k.startswith("block/") for k in table.entries) == 2 * stage_runs * n_combos
    assert sum(k.startswith("stem/") for k in table.entries) == max(space.n_exits, 1)
    assert sum(k.startswith(("head/", "exit/")) for k in table.entries) == max(space.n_exits, 1)
    genomes = space.sample(20, np.random.default_rng(1), policy="nat")
    predicted = table.predict(space, genomes)
    assert predicted.shape == (20,) and (predicted > 0).all()
    assert table.entries["overhead/w1/r16"] >= 0  # never a credit that could cancel a whole subnet
    # more blocks cost more: the largest subnet is predicted slower than the smallest
    assert table.predict(space, [space.largest()])[0] > table.predict(space, [space.smallest()])[0]
    assert table.space["n_exits"] == space.n_exits and table.settings["n_classes"] == 5


def test_latency_table_command_writes_the_device_and_the_entries(tmp_path):
    out = tmp_path / "table.json"
    config = tmp_path / "c.yaml"
    config.write_text("supernet: {resolutions: [16], stem_stride: 2}\nevaluation: {latency_min_time: 0.0}\n"
                      "datasets: {digits: {kind: digits, resolutions: [16]}}\n")
    assert main(["--threads", "1", "latency-table", "--config", str(config), "--out", str(out),
                 "--repeats", "1", "--warmup", "0"]) == 0
    data = json.loads(out.read_text())
    assert data["format"] == "natv2-latency-table"
    assert {"torch", "threads", "cpu", "gpu"} <= set(data["device"]) and data["device"]["threads"] == 1
    assert data["space"]["resolutions"] == [16] and data["settings"]["repeats"] == 1
    assert "stem/w1/r16" in data["entries"] and "overhead/w1/r16" in data["entries"]
    table = load_table(out)
    settings = load_settings(config, overrides={"search": {"latency_table": str(out),
                                                           "objectives": ["top1_err", "latency_lut"]}})
    space = settings.supernet.space()
    table.check_space(space)
    assert table.predict(space, [space.smallest()])[0] < table.predict(space, [space.largest()])[0] * 10
