"""``natv2 front``: the non-dominated set of the final archive with knee flags -> front.csv.

    natv2 front --config C --archive iterN/archive.csv --out front.csv

front.csv: ``id`` (0 = most accurate), the archive's columns, ``knee`` (pymoo high trade-off point).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("front", help="non-dominated set of the final archive, with knee points")
    add_config_argument(p)
    p.add_argument("--archive", required=True, metavar="CSV", help="the final archive")
    p.add_argument("--out", required=True, metavar="CSV", help="front.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from natv2.archive import read_archive
    from natv2.config import settings_from_args
    from natv2.front import pareto_front, spread_members
    from natv2.io import write_csv

    settings = settings_from_args(args)
    objectives = settings.search.objectives
    # feasible members only (search.constraints): so the fine-tuning and pareto.csv are within budget
    front = pareto_front(read_archive(args.archive, objectives), objectives, settings.search.constraints)
    # members the post-processing fine-tunes (finetune.max_members, spread along the front)
    front["finetune"] = spread_members(front, objectives, settings.finetune.max_members)
    logging.getLogger(__name__).info("front: %d members, %d knee point(s)", len(front), int(front["knee"].sum()))
    write_csv(args.out, front)
    return 0
