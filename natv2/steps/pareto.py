"""``natv2 pareto``: the deliverable table, one row per front member (design.md §2 contract).

Reads front.csv and each net's metrics.json; the table's columns and rows are natv2.pareto_table's.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pareto", help="assemble pareto.csv from the front and the fine-tuned nets")
    p.add_argument("--front", required=True, metavar="CSV", help="front.csv of the search")
    p.add_argument("--nets", nargs="*", default=[], metavar="PATH",
                   help="exported nets: their directories or their metrics.json files")
    p.add_argument("--out", required=True, metavar="CSV")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from natv2.io import read_csv, read_json, write_csv
    from natv2.pareto_table import assemble

    front = read_csv(args.front)
    metrics, paths = {}, {}
    for net in args.nets:
        net = Path(net).parent if Path(net).name == "metrics.json" else Path(net)
        m = read_json(net / "metrics.json")
        mid = str(m.get("id", Path(net).name))
        metrics[mid], paths[mid] = m, str(net)
    write_csv(args.out, assemble(front, metrics, paths))
    return 0
