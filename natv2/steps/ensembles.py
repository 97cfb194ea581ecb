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


def cost_objective(settings, columns) -> str:
    """ensemble.objective, except latency_ms means latency_lut when the run has a latency table
    (search.latency_table: the target device's latency) and the front carries it."""
    objective = settings.ensemble.objective
    if objective == "latency_ms" and settings.search.latency_table and "latency_lut" in set(columns):
        return "latency_lut"
    return objective


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import pandas as pd

    from natv2.config import settings_from_args
    from natv2.data import load_data
    from natv2.ensemble import CSV_COLUMNS, dominance_lines, ensembles_table, member_tables
    from natv2.errors import Natv2Error
    from natv2.export import export_ensemble
    from natv2.io import read_csv, write_csv
    from natv2.rng import stream

    settings = settings_from_args(args)
    cfg = settings.ensemble
    pareto = read_csv(args.pareto)
    if cost_objective(settings, pareto.columns) != cfg.objective:
        import dataclasses

        cfg = dataclasses.replace(cfg, objective=cost_objective(settings, pareto.columns))
    if len(pareto) == 0:
        raise Natv2Error(f"{args.pareto}: the front is empty; no ensembles to build")
    for column in ("id", "path"):
        if column not in pareto.columns:
            raise Natv2Error(f"{args.pareto}: column {column!r} missing")
    data = load_data(Path(args.data))
    device = settings.torch_device()
    paths = {str(r["id"]): str(r["path"]) for _, r in pareto.iterrows()}
    # ensembles are chosen on the part of val that no member's fine-tune trained on (its "val_top1")
    _fit, select = data.holdout(settings.finetune.selection_holdout, settings.seed)
    tables, labels, failed = member_tables(paths, {"val": select, "test": data.test}, mean=data.mean, std=data.std,
                                           k=cfg.top_k, batch_size=cfg.batch_size, device=device)
    usable = pareto[pareto["id"].astype(str).isin(tables["val"].keys())]
    if len(usable) == 0:
        raise Natv2Error(f"{args.pareto}: no usable front member (every member failed to load)")
    if len(usable) < max(2, cfg.min_members):
        # a one-member front is a valid result: there is simply no ensemble of it
        import logging

        logging.getLogger("natv2.ensembles").warning(
            "the front has %d usable member(s); an ensemble needs at least %d: no ensembles", len(usable),
            max(2, cfg.min_members))
        table = pd.DataFrame(columns=CSV_COLUMNS)
    else:
        table = ensembles_table(usable, tables["val"], labels["val"], tables["test"], labels["test"], cfg,
                                rng=stream(settings.seed, "ensembles"))
    write_csv(args.out, table)
    print(table.to_string(index=False))
    singles = usable.assign(select_top1=[tables["val"][str(i)].top1(labels["val"]) for i in usable["id"].astype(str)])
    if len(table):
        for line in dominance_lines(singles, table, cost=cfg.objective if cfg.objective in singles.columns else "latency_ms"):
            print(line)
    if args.export_dir:
        Path(args.export_dir).mkdir(parents=True, exist_ok=True)
        for _, row in table.iterrows():
            export_ensemble([paths[m] for m in row["members"].split(";")], Path(args.export_dir) / row["id"],
                            mode=row["mode"], extra={"id": row["id"], "val_top1": float(row["val_top1"]),
                                                     "test_top1": float(row["test_top1"])})
    import sys

    for mid, message in failed.items():
        print(f"natv2: error: member {mid} left out of the ensembles: {message}", file=sys.stderr)
    # the other members' ensembles are written either way; strict (the default) makes a left-out member fail the step
    return 2 if failed and args.strict else 0
