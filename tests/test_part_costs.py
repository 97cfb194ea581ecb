"""Params and MACs as sums of cached part counts (natv2.part_costs) equal the whole-net counts."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from natv2.costs import count_macs, count_params
from natv2.latency_table import part_keys
from natv2.nets import build_supernet
from natv2.part_costs import PartCosts, count_parts


def exact(net, genome) -> tuple[int, int]:
    static = net.extract(genome)
    return count_params(static), count_macs(static, net.space.decode(genome).resolution)


@pytest.mark.parametrize("cfg", [
    {"variant": "ofa_mbv3", "resolutions": [16, 32], "stem_stride": 1},  # the digits default's space
    {"variant": "EE_D", "resolutions": [32, 48]},                         # NATv2's: exits, dense skips
    {"variant": "SE_DP", "resolutions": [32]},                            # parallel blocks' branch sets
    {"variant": "EE_B", "widths": [1.0, 1.2], "resolutions": [32]},       # two widths side by side
], ids=lambda c: c["variant"] + ("-w2" if len(c.get("widths", [])) > 1 else ""))
def test_summed_parts_equal_the_whole_net_counts(cfg):
    torch.manual_seed(0)
    net = build_supernet(cfg, 10).eval()
    space = net.space
    costs = PartCosts(net)
    learn = space.sample(40, np.random.default_rng(1), "natv2")
    for g in learn:
        assert costs(g) == exact(net, g)
    counted = costs.n_counted
    assert costs.additive and 0 < counted <= len(learn)
    # later genomes: mostly answered from the parts, every answer still the exact count
    later = space.sample(12, np.random.default_rng(2), "natv2")
    assert [costs(g) for g in later] == [exact(net, g) for g in later]
    assert costs(space.to_string(later[0])) == exact(net, later[0])  # the string form too
    if "P" not in cfg["variant"]:  # parallel blocks' branch sets multiply the parts: more genomes to know them
        assert costs.n_counted - counted < len(later)


def test_known_parts_answer_without_building_a_net(monkeypatch):
    torch.manual_seed(0)
    net = build_supernet({"resolutions": [32], "stem_stride": 2}, 10).eval()
    space = net.space
    costs = PartCosts(net)
    small, large = space.smallest(), space.largest()
    assert costs(small) == exact(net, small) and costs(large) == exact(net, large)
    assert costs.n_counted == 2
    # the largest net with the smallest's first stage: every part seen in those two
    arch = space.decode(large)
    mixed = space.encode(dataclasses.replace(arch, stages=(space.decode(small).stages[0],) + arch.stages[1:]))
    expected = exact(net, mixed)
    assert expected not in (exact(net, small), exact(net, large))
    monkeypatch.setattr(net, "extract", lambda *a, **k: pytest.fail("a subnet of known parts was built"))
    assert costs(mixed) == expected
    assert costs.n_counted == 2


def test_a_part_sum_that_disagrees_falls_back_to_whole_counts(monkeypatch, caplog):
    import natv2.part_costs as pc

    torch.manual_seed(0)
    net = build_supernet({"resolutions": [32]}, 10).eval()
    space = net.space
    real = pc.count_parts

    def off_by_one(static, resolution):
        params, flops, whole_p, whole_f = real(static, resolution)
        return params, flops, whole_p + 1, whole_f  # a part the sum misses

    monkeypatch.setattr(pc, "count_parts", off_by_one)
    costs = PartCosts(net)
    g = space.smallest()
    with caplog.at_level(logging.WARNING, logger="natv2.part_costs"):
        assert costs(g) == (exact(net, g)[0] + 1, exact(net, g)[1])  # the whole count, as counted
    assert not costs.additive and "not the sum of its parts" in caplog.text
    costs(g)
    assert costs.n_counted == 2  # never answered from parts again


def test_part_keys_name_every_part_of_the_extracted_net():
    torch.manual_seed(0)
    net = build_supernet({"variant": "EE_D", "resolutions": [32]}, 10).eval()
    space = net.space
    for g in space.sample(5, np.random.default_rng(3), "natv2"):
        arch = space.decode(g)
        params, flops, whole_params, whole_flops = count_parts(net.extract(g), arch.resolution)
        keys = part_keys(arch, exit_suffix=False)
        assert set(keys) == set(params) == set(flops)
        assert keys[f"x/{arch.exit}"].endswith(f"/x{arch.exit}")  # the exit it stops at, by number
        assert sum(flops.values()) == whole_flops > 0 and sum(params.values()) == whole_params
        assert all(v > 0 for v in params.values())


@pytest.mark.parametrize("cfg", [
    {"variant": "ofa_mbv3", "resolutions": [16, 32], "stem_stride": 1},
    {"variant": "EE_D", "resolutions": [32]},
    {"variant": "SE_DP", "resolutions": [32]},
    {"variant": "EE_B", "widths": [1.0, 1.2], "resolutions": [32]},
], ids=lambda c: c["variant"] + ("-w2" if len(c.get("widths", [])) > 1 else ""))
def test_the_runs_table_answers_every_genome_without_building_a_net(cfg, monkeypatch):
    from natv2.part_costs import covering_genomes, part_cost_table

    torch.manual_seed(0)
    net = build_supernet(cfg, 10).eval()
    space = net.space
    table = part_cost_table(net)
    n_sets = max(1, len(space.branch_keys))
    per_grid = len(space.kernels) * len(space.expands) * n_sets + max(0, space.n_exits - 1)
    assert len(covering_genomes(space)) == len(space.widths) * len(space.resolutions) * per_grid
    assert table["additive"] and 0 < table["subnets_counted"] <= len(covering_genomes(space))
    genomes = list(space.sample(10, np.random.default_rng(4), "natv2")) + [space.smallest(), space.largest()]
    expected = [exact(net, g) for g in genomes]
    monkeypatch.setattr(net, "extract", lambda *a, **k: pytest.fail("a genome of the table's parts built a net"))
    costs = PartCosts(net, table)
    assert [costs(g) for g in genomes] == expected
    assert costs.n_counted == 0


def test_a_table_is_refused_for_another_supernet(tmp_path):
    from natv2.errors import Natv2Error
    from natv2.io import write_json
    from natv2.part_costs import load_part_cost_table, part_cost_table

    torch.manual_seed(0)
    cfg = {"variant": "ofa_mbv3", "resolutions": [16], "stem_stride": 1}
    net = build_supernet(cfg, 10).eval()
    write_json(tmp_path / "t.json", part_cost_table(net))
    assert load_part_cost_table(tmp_path / "t.json", build_supernet(cfg, 10))["params"]  # same architecture, other weights
    with pytest.raises(Natv2Error, match=r"t\.json: counted on another supernet than b\.pt \(n_classes and tensors differ\)"):
        load_part_cost_table(tmp_path / "t.json", build_supernet(cfg, 7), "b.pt")  # the head's classes
    with pytest.raises(Natv2Error, match=r"\(space differs\)"):
        load_part_cost_table(tmp_path / "t.json", build_supernet({**cfg, "resolutions": [16, 24]}, 10))
    write_json(tmp_path / "x.json", {"params": {}})
    with pytest.raises(Natv2Error, match=r"x\.json: not a natv2 part-costs table"):
        load_part_cost_table(tmp_path / "x.json", net)


def test_the_part_costs_step_writes_the_table_the_workflow_reads(tmp_path):
    from natv2.cli import main
    from natv2.io import read_json
    from natv2.nets.checkpoint import save_supernet

    torch.manual_seed(0)
    net = build_supernet({"variant": "ofa_mbv3", "resolutions": [16], "stem_stride": 1}, 10)
    save_supernet(tmp_path / "s.pt", net)
    assert main(["part-costs", "--supernet", str(tmp_path / "s.pt"), "--out", str(tmp_path / "pc.json")]) == 0
    table = read_json(tmp_path / "pc.json")
    assert table["subnets_counted"] == 9 and len(table["params"]) == len(table["flops"]) > 9
    g = net.space.sample(1, np.random.default_rng(0), "natv2")[0]
    keys = part_keys(net.space.decode(g), exit_suffix=False).values()
    assert (sum(table["params"][k] for k in keys), sum(table["flops"][k] for k in keys) // 2) == exact(net, g)
