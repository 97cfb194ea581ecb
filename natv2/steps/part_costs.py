"""``natv2 part-costs``: every part's params and FLOPs of a supernet, counted once -> part_costs.json.

    natv2 part-costs --supernet warmup.pt --out iter0/part_costs.json

The pool's evaluation and each iteration's search (``--part-costs``) then add a genome's costs
up from this table (natv2.part_costs): they build no net to count it, and never use torch's
flop counter, whose first use in a job imports torch._dynamo. The table records the supernet's
architecture and is refused for any other.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("part-costs", help="count every part of a supernet's space once (params, FLOPs)")
    p.add_argument("--supernet", required=True, metavar="PT", help="supernet checkpoint (its architecture)")
    p.add_argument("--out", required=True, metavar="JSON", help="part_costs.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from natv2.io import check_writable, write_json
    from natv2.nets.checkpoint import load_supernet
    from natv2.part_costs import part_cost_table

    check_writable(args.out)
    supernet, _ = load_supernet(args.supernet)
    table = part_cost_table(supernet, progress=True)
    logging.getLogger(__name__).info("part costs: %d parts from %d subnets", len(table["params"]),
                                     table["subnets_counted"])
    write_json(args.out, table)
    return 0
