"""``natv2 search``: fit the surrogate on the archive, search on it, write the K candidates.

    natv2 search --config C --archive iter2/archive.csv --supernet iter2/supernet.pt \\
        --iteration 3 --out iter3/candidates.csv --surrogate-out iter3/surrogate.json

candidates.csv: ``genome, predicted_top1_err, <cost objectives>, params, macs, source, iteration``
(params and MACs exact, from the search's part counts, whether objectives or not: the
candidates' evaluation reuses them).
surrogate.json: the fit's kind, cv tau / RMSE (and every candidate model's for NAT's adaptive
choice) plus the predicted error of every candidate, so ``natv2 update`` can record the
surrogate's tau on them once they are measured.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("search", help="surrogate fit + NSGA search + candidate subset selection")
    add_config_argument(p)
    p.add_argument("--archive", required=True, metavar="CSV", help="the archive of the previous iteration")
    p.add_argument("--supernet", required=True, metavar="PT", help="supernet the costs are computed on (its space)")
    p.add_argument("--part-costs", metavar="JSON", help="its parts' counts (natv2 part-costs): no net built to cost a genome")
    p.add_argument("--iteration", required=True, type=int, metavar="I", help="this iteration (1..N)")
    p.add_argument("--out", required=True, metavar="CSV", help="candidates.csv")
    p.add_argument("--surrogate-out", required=True, metavar="JSON", help="surrogate.json (cv tau, rmse, predictions)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from natv2 import search
    from natv2.archive import read_archive, write_archive
    from natv2.config import settings_from_args
    from natv2.io import write_json
    from natv2.rng import stream

    settings = settings_from_args(args)
    cfg = settings.search
    archive = read_archive(args.archive, cfg.objectives)
    space, cost_fn = search.supernet_costs(settings, args.supernet, args.part_costs)
    rng = stream(settings.seed, "search", args.iteration)
    candidates, summary = search.run_search(archive, space, cost_fn, cfg, rng, args.iteration)
    candidates = search.with_architecture_costs(candidates, cost_fn)
    write_archive(args.out, candidates)
    write_json(args.surrogate_out, summary)
    return 0
