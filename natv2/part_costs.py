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

A workflow run counts the parts once (:func:`part_cost_table`, ``natv2 part-costs``: the
uniform subnets that hold every part, 9 for the digits space) and the jobs that cost genomes
(the pool's evaluation, each iteration's search) start from that table: none of them then
builds a net, nor pays the first use of torch's flop counter (its import of torch._dynamo,
~1 s). The table records the supernet it was counted on (:func:`supernet_signature`) and is
refused for any other.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from natv2.costs import count_params
from natv2.errors import Natv2Error
from natv2.latency_table import part_keys, space_description, static_parts

TABLE_FORMAT = "natv2-part-costs"
TABLE_VERSION = 1

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

    def __init__(self, supernet, table: dict[str, Any] | None = None) -> None:
        """``table``: a :func:`part_cost_table` of this supernet (:func:`load_part_cost_table`), whose
        parts are then known from the start."""
        self.supernet = supernet
        self.space = supernet.space
        self._params: dict[str, int] = {}
        self._flops: dict[str, int] = {}
        self.n_counted = 0  # subnets extracted and counted whole
        self.additive = True
        if table is not None:
            self._params.update({k: int(v) for k, v in table["params"].items()})
            self._flops.update({k: int(v) for k, v in table["flops"].items()})
            self.additive = bool(table["additive"])

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


# --------------------------------------------------------------------------------------------
# the table: every part counted once per run


def supernet_signature(supernet) -> dict[str, Any]:
    """What a part's counts depend on: the variant, classes, search space, and every parameter's
    and buffer's name and shape (a hash), so a table is never read for another architecture."""
    import hashlib

    shapes = "\n".join(f"{name} {tuple(t.shape)}" for name, t in supernet.state_dict().items())
    return {"variant": getattr(supernet, "variant", type(supernet).__name__),
            "n_classes": int(getattr(supernet, "n_classes", 0)),
            "space": space_description(supernet.space),
            "tensors": hashlib.sha256(shapes.encode()).hexdigest()}


def covering_genomes(space) -> list[np.ndarray]:
    """Subnets that hold every part of ``space`` between them (the latency table's uniform subnets).

    Per width and resolution: every kernel x expand (x branch set) in every block of the whole
    body, so every block is met as the first of its stage and as a later one; then, in
    early-exit spaces, one subnet stopping at each earlier exit, for that exit's head.
    """
    import itertools

    sets = list(space.branch_keys) or [None]
    last = space.n_exits or None  # the whole body
    out = []
    for width, res in itertools.product(space.widths, space.resolutions):
        out += [space.encode(space.uniform(res, width, k, e, last, b))
                for k, e, b in itertools.product(space.kernels, space.expands, sets)]
        out += [space.encode(space.uniform(res, width, space.kernels[0], space.expands[0], x, sets[0]))
                for x in range(1, space.n_exits)]  # empty without early exits
    return out


def part_cost_table(supernet, progress: bool = False) -> dict[str, Any]:
    """Every part's params and FLOPs, counted once on the subnets of :func:`covering_genomes`."""
    import time

    costs = PartCosts(supernet.eval())
    genomes = covering_genomes(supernet.space)
    t0 = time.perf_counter()
    for i, g in enumerate(genomes, 1):
        costs(g)
        if progress and (i % 10 == 0 or i == len(genomes)):
            log.info("part costs: %d/%d covering subnets, %d parts (%.1f s)", i, len(genomes), len(costs._params),
                     time.perf_counter() - t0)
    return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "supernet": supernet_signature(supernet),
            "additive": costs.additive, "subnets_counted": costs.n_counted,
            "params": dict(sorted(costs._params.items())), "flops": dict(sorted(costs._flops.items()))}


def load_part_cost_table(path, supernet, supernet_path=None) -> dict[str, Any]:
    """The table at ``path``, refused (one line) unless it was counted on ``supernet``'s architecture."""
    from natv2.io import read_json

    table = read_json(path)
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT or table.get("version") != TABLE_VERSION:
        raise Natv2Error(f"{path}: not a natv2 part-costs table (format {TABLE_FORMAT!r}, version {TABLE_VERSION}; "
                         "write one with: natv2 part-costs)")
    have, want = table.get("supernet") or {}, supernet_signature(supernet)
    differ = [k for k in want if have.get(k) != want[k]]
    if differ:
        raise Natv2Error(f"{path}: counted on another supernet than {supernet_path or 'this one'} "
                         f"({' and '.join(differ)} {'differ' if len(differ) > 1 else 'differs'}); count it again with: natv2 part-costs")
    return table
