"""``natv2 ensembles``: OFA3 ensembles of the fine-tuned front -> ensembles.csv (optionally exported)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("ensembles", help="search ensembles of the fine-tuned front (NSGA-II, val error vs cost)")
    add_config_argument(p)
    p.add_argument("--data", required=True, metavar="JSON", help="split.json of the dataset")
    p.add_argument("--pareto", required=True, metavar="CSV", help="pareto.csv (id, params, macs, latency_ms, path)")
    p.add_argument("--out", required=True, metavar="CSV", help="ensembles.csv")
    p.add_argument("--export-dir", metavar="DIR", help="also export every ensemble as DIR/<id>/ (config.json, model.ts, members)")
    # strict by default: a broken front member must not silently leave the ensembles (issue 12.7)
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                   help="exit 2 when a member was left out (default; --no-strict: warn and keep the rest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from natv2.config import settings_from_args
    from natv2.ensemble_selection import cost_objective, dominance_lines, front_ensembles
    from natv2.export import export_ensemble
    from natv2.io import read_csv, write_csv
    from natv2.splits import load_data

    settings = settings_from_args(args)
    pareto = read_csv(args.pareto)
    found = front_ensembles(pareto, load_data(Path(args.data)), settings, source=args.pareto)
    table = found.table
    write_csv(args.out, table)
    print(table.to_string(index=False))
    if len(table):
        objective = cost_objective(settings, pareto.columns)
        for line in dominance_lines(found.singles, table,
                                    cost=objective if objective in found.singles.columns else "latency_ms"):
            print(line)
    if args.export_dir:
        paths = {str(r["id"]): str(r["path"]) for _, r in pareto.iterrows()}
        Path(args.export_dir).mkdir(parents=True, exist_ok=True)
        for _, row in table.iterrows():
            export_ensemble([paths[m] for m in row["members"].split(";")], Path(args.export_dir) / row["id"],
                            mode=row["mode"], extra={"id": row["id"], "val_top1": float(row["val_top1"]),
                                                     "test_top1": float(row["test_top1"])})
    for mid, message in found.failed.items():
        print(f"natv2: error: member {mid} left out of the ensembles: {message}", file=sys.stderr)
    # the other members' ensembles are written either way; strict (the default) makes a left-out member fail the step
    return 2 if found.failed and args.strict else 0
