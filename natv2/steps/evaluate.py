"""``natv2 evaluate``: BN recalibration + val top-1 + costs for a table of genomes (one shard)."""
from __future__ import annotations

import argparse

from natv2.config import add_config_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate genomes of a table with a supernet (rows k, k+n, k+2n, ...)")
    add_config_argument(p)
    p.add_argument("--data", required=True, metavar="JSON", help="split.json of the dataset")
    p.add_argument("--supernet", required=True, metavar="PT", help="supernet checkpoint")
    p.add_argument("--genomes", required=True, metavar="CSV", help="table with a 'genome' column")
    p.add_argument("--shard", type=int, default=0, metavar="K", help="which shard (0-based)")
    p.add_argument("--shards", type=int, default=1, metavar="N", help="number of shards")
    p.add_argument("--split", default="val", choices=["val", "test"], help="images to measure top-1 on")
    p.add_argument("--reuse-costs", action="store_true",
                   help="take params / macs / latency_ms from the table where recorded (NAT's re-evaluation of the archive)")
    p.add_argument("--part-costs", metavar="JSON",
                   help="params / macs from the supernet's parts' counts (natv2 part-costs) instead of counting each net")
    p.add_argument("--tag", help="supernet state tag for the archive (default: from the checkpoint path)")
    p.add_argument("--out", required=True, metavar="CSV")
    p.set_defaults(func=run)


def supernet_tag(path: str) -> str:
    """'warmup' for .../warmup.pt, 'iter3' for .../iter3/supernet.pt."""
    from pathlib import Path

    p = Path(path)
    return p.parent.name if p.stem == "supernet" else p.stem


def recorded_costs(table) -> dict[str, dict[str, float]]:
    """``{genome: {params, macs, latency_ms}}`` of the rows of ``table`` that record them (any subset)."""
    from natv2.evaluate import COST_COLUMNS

    cols = [c for c in COST_COLUMNS if c in table.columns]
    if not cols:
        return {}
    return {str(row["genome"]): {c: row[c] for c in cols} for _, row in table.iterrows()}


def known_costs(genomes, recorded: dict[str, dict[str, float]], supernet, part_costs) -> dict[str, dict[str, float]]:
    """``recorded`` with exact params and MACs added from ``part_costs`` (a natv2.part_costs table)
    for the genomes that lack them."""
    from natv2.evaluate import finite_costs
    from natv2.part_costs import PartCosts

    counts, space = PartCosts(supernet, part_costs), supernet.space
    out = dict(recorded)
    for g in genomes:
        g = space.to_string(space.from_string(g))  # the name natv2.evaluate looks the costs up by
        have = finite_costs(out.get(g))
        if "params" not in have or "macs" not in have:
            params, macs = counts(g)
            out[g] = {"params": int(params), "macs": int(macs), **have}  # a recorded value stands
    return out


def evaluate_table(table, supernet, data, settings, *, shard: int, shards: int, split: str, tag: str, progress: bool,
                   reuse_costs: bool = False, part_costs: dict | None = None):
    """Rows ``shard::shards`` of ``table`` evaluated; input columns other than the measured ones kept.

    ``reuse_costs``: a row's recorded params, MACs and latency stand (natv2.evaluate.evaluate_genomes'
    ``known_costs``); only its accuracy is measured again. ``part_costs``: the supernet's table of
    part counts (natv2.part_costs), which gives the params and MACs of the rows without them.
    """
    import pandas as pd

    from natv2.evaluate import evaluate_genomes

    rows = list(range(shard, len(table), shards))
    part = table.iloc[rows].reset_index(drop=True)
    known = recorded_costs(part) if reuse_costs else {}
    if part_costs is not None:
        known = known_costs([str(g) for g in part["genome"]], known, supernet, part_costs)
    measured = evaluate_genomes(
        supernet, list(part["genome"]), data, settings.evaluation,
        split=split, device=settings.torch_device(), progress=progress, seed=settings.seed,
        known_costs=known or None,
    )
    if settings.search.latency_table:  # the target device's latency, from its lookup table (no net built)
        from natv2.latency_table import load_table

        table = load_table(settings.search.latency_table)
        table.check_space(supernet.space)
        measured["latency_lut"] = table.predict(supernet.space, list(measured["genome"]))
    kept = part.drop(columns=[c for c in part.columns if c in measured.columns or c in ("supernet", "row")])
    out = pd.concat([measured, kept], axis=1)
    out["supernet"] = tag
    out["seed"] = out["seed"] if "seed" in out.columns else settings.seed
    out["row"] = rows
    return out


def run(args: argparse.Namespace) -> int:
    import sys

    from natv2.config import settings_from_args
    from natv2.errors import Natv2Error
    from natv2.io import check_writable, read_csv, write_csv
    from natv2.nets.checkpoint import check_classes, load_supernet
    from natv2.splits import load_data

    check_writable(args.out)  # before the evaluation, not after it
    if not 0 <= args.shard < args.shards:
        raise Natv2Error(f"--shard {args.shard}: expected 0 <= shard < --shards ({args.shards})")
    settings = settings_from_args(args)
    table = read_csv(args.genomes)
    if "genome" not in table.columns:
        raise Natv2Error(f"{args.genomes}: no 'genome' column")
    supernet, _ = load_supernet(args.supernet)
    data = load_data(args.data)
    check_classes(supernet, data.n_classes, args.supernet, args.data)
    part_costs = None
    if args.part_costs:
        from natv2.part_costs import load_part_cost_table

        part_costs = load_part_cost_table(args.part_costs, supernet, args.supernet)
    out = evaluate_table(
        table, supernet, data, settings, shard=args.shard, shards=args.shards, split=args.split,
        tag=args.tag or supernet_tag(args.supernet), progress=sys.stderr.isatty(), reuse_costs=args.reuse_costs,
        part_costs=part_costs,
    )
    write_csv(args.out, out)
    return 0
