"""Exact params and MACs of subnets as sums over their parts, each part counted once.

A subnet's parameters and multiply-accumulates add up over its parts (stem, each block, the
head or the exit it stops at), and a part's counts depend only on what names it in the latency
table (natv2.latency_table: width, resolution, stage, first block of its stage or a later one,
kernel, expand, branch set; the head or exit): a stage's channels and strides are fixed, and
dense skips add tensors, which are no MACs. The search costs hundreds of genomes per iteration
(NAT's 100 x 20 generations, ~0.3 s each to extract and count: about 10 min an iteration), so
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
from natv2.latency_table import block_key, head_key, static_parts, stem_key

log = logging.getLogger(__name__)


def part_keys(arch) -> dict[str, str]:
    """Part name (natv2.latency_table.static_parts) -> cost key, for the subnet ``arch``.

    The latency table's keys without the exit for the stem and the blocks: where a subnet stops
    changes their latency (caches), not their counts.
    """
    w, r = arch.width, arch.resolution
    keys = {"stem": stem_key(w, r)}
    n_run = arch.exit if arch.exit is not None else len(arch.stages)
    for s, blocks in enumerate(arch.stages[:n_run]):
        sets = arch.branches[s] if arch.branches is not None else (None,) * len(blocks)
        for b, (k, e) in enumerate(blocks):
            keys[f"{s}/{b}"] = block_key(w, r, s, b == 0, k, e, sets[b])
    keys["head" if arch.exit is None or arch.exit == 0 else f"x/{arch.exit}"] = head_key(w, r, arch.exit or None)
    return keys


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

    def _count(self, genome: np.ndarray, arch) -> tuple[int, int]:
        static = self.supernet.extract(genome)
        params, flops, whole_params, whole_flops = count_parts(static, arch.resolution)
        self.n_counted += 1
        keys = part_keys(arch)
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
        keys = part_keys(arch).values()
        if not self.additive or any(k not in self._params for k in keys):
            return self._count(genome, arch)
        return sum(self._params[k] for k in keys), sum(self._flops[k] for k in keys) // 2
