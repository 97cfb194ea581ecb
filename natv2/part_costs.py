"""Exact params and MACs of subnets as sums over their parts, each part counted once.

A subnet's parameters and multiply-accumulates add up over its parts (stem, each block, the
head or the exit it stops at), and a part's counts depend only on its latency-table key
(natv2.latency_table.part_keys, without the exit for the stem and the blocks: width,
resolution, stage, first block of its stage or a later one, kernel, expand, branch set; the
head or exit): a stage's channels and strides are fixed, and dense skips add tensors, which
are no MACs. The search costs hundreds of genomes per iteration (NAT's 100 x 20 generations;
extracting and counting each took 0.1-0.3 s), so
:class:`PartCosts` extracts and counts a subnet (natv2.costs, torch's flop counter) only when
one of its parts is new, remembers every part's counts, and answers later genomes by adding
them up: no net is built once the space's parts are known (measured, bench/search_costs.py:
the laptop spaces' parts after 20 subnets, 11-13x faster over 240 genomes; the paper's EE_D at
nine resolutions after ~270, 4.9x over 2,000).

Every counted subnet checks the sum: its whole count must equal its parts' sum; if it ever
does not (a supernet whose parts are not additive), the cache logs it and counts every later
genome whole, so the figures stay those of natv2.costs.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from natv2.costs import count_params
from natv2.latency_table import part_keys, static_parts

log = logging.getLogger(__name__)


def count_parts(static, resolution: int) -> tuple[dict[str, int], dict[str, int], int, int]:
    """(params per part, FLOPs per part, whole params, whole FLOPs) of a static subnet.

    One forward pass under torch's FlopCounterMode, read per module (its keys are the root's
    class name and the module path); FLOPs, not MACs, so that halving happens once, on the sum.
    """
    from torch.utils.flop_counter import FlopCounterMode

    static = static.eval()
    parts = static_parts(static)
    paths = {id(m): name for name, m in static.named_modules()}
    root = type(static).__name__
    x = torch.zeros(1, 3, resolution, resolution, device=next(static.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        static(x)
    per_module = counter.get_flop_counts()
    flops = {name: int(sum(per_module.get(f"{root}.{paths[id(m)]}", {}).values())) for name, m in parts.items()}
    params = {name: count_params(m) for name, m in parts.items()}
    return params, flops, count_params(static), int(counter.get_total_flops())


class PartCosts:
    """Params and MACs of ``supernet``'s subnets from the counts of their parts (see the module)."""

    def __init__(self, supernet) -> None:
        self.supernet = supernet
        self.space = supernet.space
        self._params: dict[str, int] = {}
        self._flops: dict[str, int] = {}
        self.n_counted = 0  # subnets extracted and counted whole
        self.additive = True

    def _count(self, genome: np.ndarray, resolution: int, keys: dict[str, str]) -> tuple[int, int]:
        static = self.supernet.extract(genome)
        params, flops, whole_params, whole_flops = count_parts(static, resolution)
        self.n_counted += 1
        if set(keys) != set(params) or sum(params.values()) != whole_params or sum(flops.values()) != whole_flops:
            if self.additive:
                log.warning("part costs: subnet %s is not the sum of its parts (%d params, %d FLOPs whole; "
                            "%d, %d summed): counting every subnet whole", self.space.to_string(genome),
                            whole_params, whole_flops, sum(params.values()), sum(flops.values()))
            self.additive = False
        else:
            for name, key in keys.items():
                self._params[key], self._flops[key] = params[name], flops[name]
        return whole_params, whole_flops // 2

    def __call__(self, genome: Any) -> tuple[int, int]:
        """(params, MACs) of the subnet ``genome``: equal to natv2.costs.count_params / count_macs
        of the extracted subnet."""
        genome = self.space.from_string(genome) if isinstance(genome, str) else np.asarray(genome)
        arch = self.space.decode(genome)
        keys = part_keys(arch, exit_suffix=False)
        if not self.additive or any(k not in self._params for k in keys.values()):
            return self._count(genome, arch.resolution, keys)
        return sum(self._params[k] for k in keys.values()), sum(self._flops[k] for k in keys.values()) // 2
