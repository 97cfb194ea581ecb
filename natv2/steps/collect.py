"""``natv2 collect``: join the shards of a scattered evaluation back into one table, in order."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="join evaluation shards into one table (original row order)")
    p.add_argument("--inputs", nargs="+", required=True, metavar="CSV", help="shard tables of `natv2 evaluate`")
    p.add_argument("--out", required=True, metavar="CSV")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natv2.archive import read_evaluated, write_archive

    write_archive(args.out, read_evaluated(args.inputs))
    return 0
