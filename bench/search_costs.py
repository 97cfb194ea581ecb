"""Bench: how fast the search gets the params and MACs of its genomes (natv2.part_costs).

    PYTHONPATH=. python bench/search_costs.py              # ~2 min on 2 cores

For each space (the digits default, the CIFAR-10 default, config/paper.yaml's EE_D at 32..64
px), samples --genomes random genomes, as one surrogate search iteration meets them (the
bench's default 240 = the old laptop search, 30 x 8 generations; NAT's 100 x 20 = 2000, the
search's default since 2026-12-07: --genomes 2000), and costs them twice: whole (extract each
subnet, natv2.costs.count_params / count_macs, what the search did before 2026-12-06), from part
counts cached as genomes come (natv2.part_costs.PartCosts) and from the run's table (the
`part_costs` job's natv2.part_costs.part_cost_table, counted once per run on its covering
subnets, what every search iteration and pool shard starts from since 2026-12-07). Prints
genomes/s of each, the subnets each built, the table's one-off seconds, and that all three gave
the same integers (or exits 1).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

SPACES = {
    "digits default (ofa_mbv3, 16 px, stem stride 1)": {"variant": "ofa_mbv3", "resolutions": [16], "stem_stride": 1},
    "cifar10 default (ofa_mbv3, 32 px)": {"variant": "ofa_mbv3", "resolutions": [32]},
    "paper (EE_D, 32..64 px)": {"variant": "EE_D", "resolutions": list(range(32, 65, 4))},
}


def main(argv: list[str] | None = None) -> int:
    from natv2.costs import count_macs, count_params
    from natv2.nets import build_supernet
    from natv2.part_costs import PartCosts, part_cost_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genomes", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="spaces whose name contains this (e.g. paper)")
    args = p.parse_args(argv)
    print(f"{args.genomes} random genomes per space, {torch.get_num_threads()} threads")
    print(f"{'space':<48} {'whole g/s':>10} {'parts g/s':>10} {'nets built':>11} {'table s':>8} "
          f"{'table g/s':>10} {'nets built':>11}  equal")
    ok = True
    for name, cfg in SPACES.items():
        if args.only not in name:
            continue
        torch.manual_seed(args.seed)
        net = build_supernet(cfg, 10).eval()
        space = net.space
        genomes = space.sample(args.genomes, np.random.default_rng(args.seed), "natv2")
        t = time.perf_counter()
        whole = []
        for g in genomes:
            static = net.extract(g)
            whole.append((count_params(static), count_macs(static, space.decode(g).resolution)))
        t_whole = time.perf_counter() - t
        costs = PartCosts(net)
        t = time.perf_counter()
        parts = [costs(g) for g in genomes]
        t_parts = time.perf_counter() - t
        t = time.perf_counter()
        table = part_cost_table(net)  # once per run, before the first iteration
        t_table = time.perf_counter() - t
        from_table = PartCosts(net, table)
        t = time.perf_counter()
        tabled = [from_table(g) for g in genomes]
        t_tabled = time.perf_counter() - t
        same = parts == whole == tabled
        ok &= same
        print(f"{name:<48} {len(genomes) / t_whole:>10.1f} {len(genomes) / t_parts:>10.1f} {costs.n_counted:>11d} "
              f"{t_table:>8.1f} {len(genomes) / t_tabled:>10.1f} {from_table.n_counted:>11d}  {'yes' if same else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
