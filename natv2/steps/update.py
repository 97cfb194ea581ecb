"""``natv2 update``: the archive after adding the evaluated candidates (NAT grows, NATv2 survival).

    natv2 update --config C --archive iter2/archive.csv --candidates iter3/eval/candidates.*.csv \\
        --surrogate iter3/surrogate.json --iteration 3 --out iter3/archive_pre.csv --report iter3/update.json

update.json records the surrogate's fit (cv tau / RMSE) and its Kendall tau and RMSE on the
newly measured candidates (predicted by the search step, measured by ``natv2 evaluate``).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("update", help="add evaluated candidates to the archive (NAT grows / NATv2 survival)")
    add_config_argument(p)
    p.add_argument("--archive", required=True, metavar="CSV", help="the archive of the previous iteration")
    p.add_argument("--candidates", required=True, nargs="+", metavar="CSV", help="evaluated candidates (shards)")
    p.add_argument("--surrogate", metavar="JSON", help="surrogate.json of the search step (for the tau on candidates)")
    p.add_argument("--iteration", required=True, type=int, metavar="I")
    p.add_argument("--out", required=True, metavar="CSV", help="the updated archive")
    p.add_argument("--report", metavar="JSON", help="update.json (sizes, surrogate tau on the candidates)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natv2.archive import check_table, read_archive, read_evaluated, write_archive
    from natv2.archive_policies import run_update
    from natv2.config import settings_from_args
    from natv2.io import read_json, write_json
    from natv2.rng import stream

    settings = settings_from_args(args)
    cfg = settings.search
    archive = read_archive(args.archive, cfg.objectives)
    evaluated = check_table(read_evaluated(args.candidates), cfg.objectives, "evaluated candidates")
    surrogate = read_json(args.surrogate) if args.surrogate else None
    new_archive, report = run_update(archive, evaluated, cfg, stream(settings.seed, "update", args.iteration),
                                     iteration=args.iteration, seed=settings.seed, surrogate=surrogate)
    write_archive(args.out, new_archive)
    if args.report:
        write_json(args.report, report)
    return 0
