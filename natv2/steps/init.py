"""``natv2 init`` / ``natv2 init-select``: the initial archive (iteration 0).

``init`` draws the genomes to evaluate (NAT: archive_size, uniform; NATv2: preprocess_mult x
archive_size, NATv2 skip-1/3 depths; both with the smallest and largest); ``init-select`` keeps them
all (NAT) or the best archive_size by survival (NATv2 pre-processing) once evaluated.
"""
from __future__ import annotations

import argparse

from natv2.config import add_config_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="draw the genomes of the initial archive (to be evaluated)")
    add_config_argument(p)
    p.add_argument("--supernet", required=True, metavar="PT", help="supernet checkpoint (for its search space)")
    p.add_argument("--out", required=True, metavar="CSV", help="pool.csv: genome, iteration")
    p.set_defaults(func=run_init)

    q = sub.add_parser("init-select", help="the initial archive from the evaluated pool")
    add_config_argument(q)
    q.add_argument("--supernet", required=True, metavar="PT", help="supernet checkpoint (for its search space)")
    q.add_argument("--evaluated", required=True, nargs="+", metavar="CSV", help="evaluated pool (shards)")
    q.add_argument("--out", required=True, metavar="CSV", help="archive.csv of iteration 0")
    q.set_defaults(func=run_select)


def run_init(args: argparse.Namespace) -> int:
    import pandas as pd

    from natv2.archive_policies import init_genomes
    from natv2.config import settings_from_args
    from natv2.io import write_csv
    from natv2.nets.checkpoint import load_supernet
    from natv2.rng import stream

    settings = settings_from_args(args)
    supernet, _ = load_supernet(args.supernet)
    space = supernet.space
    genomes = init_genomes(space, settings.search, stream(settings.seed, "init"))
    pool = pd.DataFrame({"genome": [space.to_string(g) for g in genomes], "iteration": 0, "seed": settings.seed})
    write_csv(args.out, pool)
    return 0


def run_select(args: argparse.Namespace) -> int:
    from natv2.archive import check_table, read_evaluated, write_archive
    from natv2.archive_policies import select_initial
    from natv2.config import settings_from_args
    from natv2.nets.checkpoint import load_supernet
    from natv2.rng import stream

    settings = settings_from_args(args)
    space = load_supernet(args.supernet)[0].space
    evaluated = check_table(read_evaluated(args.evaluated), settings.search.objectives, "evaluated pool")
    archive = select_initial(evaluated, space, settings.search, stream(settings.seed, "init-select"))
    write_archive(args.out, archive)
    return 0
