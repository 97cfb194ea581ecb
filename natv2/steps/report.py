"""``natv2 report``: plots (PNG) and metrics.json of a finished run."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="plots of the front, ensembles, hypervolume and surrogate tau; metrics.json")
    p.add_argument("--pareto", required=True, metavar="CSV", help="pareto.csv")
    p.add_argument("--ensembles", metavar="CSV", help="ensembles.csv (optional)")
    p.add_argument("--hv", metavar="CSV", help="search/hv.csv: iteration, hypervolume [, cv_tau, tau_candidates]")
    p.add_argument("--tau", metavar="CSV", help="table with iteration, cv_tau, tau_candidates (default: from --hv)")
    p.add_argument("--benchmarks", nargs="*", default=[], metavar="PATH",
                   help="Snakemake benchmark files or folders (e.g. benchmarks/{ds}); summed as the workflow wall-clock, "
                        "their search/ subfolders as the search wall-clock")
    p.add_argument("--archives", nargs="*", default=[], metavar="CSV",
                   help="archive tables (search/iter*/archive.csv): every evaluated genome, drawn in grey behind the front")
    p.add_argument("--baseline", metavar="JSON", help="bench/baseline.py's output: static nets drawn as stars")
    p.add_argument("--search-seconds", type=float, metavar="S", help="search wall-clock, when known otherwise")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (PNGs, metrics.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from natv2.report import benchmark_seconds, make_report

    seconds, total = args.search_seconds, None
    if args.benchmarks:
        total = benchmark_seconds(args.benchmarks)
        # a folder such as benchmarks/{ds}: the search is its search/ subtree (the workflow's layout)
        search_parts = [Path(p) / "search" for p in args.benchmarks if (Path(p) / "search").is_dir()]
        if seconds is None:
            seconds = benchmark_seconds(search_parts) if search_parts else total
    result = make_report(args.pareto, args.out, ensembles_csv=args.ensembles, hv_csv=args.hv, tau_csv=args.tau,
                         search_seconds=seconds, workflow_seconds=total, archive_csvs=args.archives,
                         baseline_json=args.baseline)
    print(json.dumps({k: v for k, v in result.items() if k != "plots"}, indent=1))
    return 0
