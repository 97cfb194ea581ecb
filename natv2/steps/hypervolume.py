"""``natv2 hypervolume``: hypervolume of every iteration's archive (one reference point per run).

    natv2 hypervolume --config C --archives iter0/archive.csv ... iterN/archive.csv \\
        --updates iter1/update.json ... iterN/update.json --out search/hv.csv

hv.csv: ``iteration`` (position in --archives), ``hypervolume``, ``n_archive``, ``n_front``, the
ideal and reference point per objective, and from the update reports ``cv_tau`` (the surrogate fit) and
``tau_candidates`` (its tau on that iteration's candidates; empty for iteration 0).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("hypervolume", help="hypervolume per iteration (+ surrogate tau) -> hv.csv")
    add_config_argument(p)
    p.add_argument("--archives", required=True, nargs="+", metavar="CSV", help="archives of iterations 0..N, in order")
    p.add_argument("--updates", nargs="*", default=[], metavar="JSON", help="update.json of iterations 1..N, in order")
    p.add_argument("--out", required=True, metavar="CSV", help="hv.csv")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natv2.archive import read_archive
    from natv2.config import settings_from_args
    from natv2.hypervolume import add_tau_columns, hypervolume_table
    from natv2.io import read_json, write_csv

    settings = settings_from_args(args)
    cfg = settings.search
    archives = [read_archive(p, cfg.objectives) for p in args.archives]
    table = hypervolume_table(archives, cfg.objectives, cfg.hv_reference)
    write_csv(args.out, add_tau_columns(table, [read_json(p) for p in args.updates]))
    return 0
