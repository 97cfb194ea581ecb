"""``natv2 pick``: the best fine-tuned network of pareto.csv within a budget, and its path.

    natv2 pick --max-latency-ms 5 --max-params 1e6 results/cifar10/pareto.csv

"Best" = highest ``select_top1_finetuned`` (the fine-tuned net's top-1 on the part of val held
out of fine-tuning: chosen without looking at test), then ``test_top1_finetuned`` when that
column is empty; ties go to the lower latency. Prints one line: id, path, and its figures.
No member within the budget: one line naming the cheapest values on offer, exit 2.
"""
from __future__ import annotations

import argparse

#: option -> pareto.csv column it bounds
BUDGETS = {"max_latency_ms": "latency_ms", "max_latency_lut": "latency_lut", "max_params": "params", "max_macs": "macs"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pick", help="best fine-tuned net of pareto.csv within a latency / size budget")
    p.add_argument("pareto", metavar="CSV", help="results/{ds}/pareto.csv")
    p.add_argument("--max-latency-ms", type=float, metavar="MS", help="measured latency_ms at most")
    p.add_argument("--max-latency-lut", type=float, metavar="MS", help="latency_lut (the target device's table) at most")
    p.add_argument("--max-params", type=float, metavar="N", help="parameters at most")
    p.add_argument("--max-macs", type=float, metavar="N", help="MACs at most")
    p.set_defaults(func=run)


def pick(pareto, budgets: dict[str, float]):
    """The row of ``pareto`` (DataFrame) to deploy within ``budgets`` ({column: max}); Natv2Error if none."""
    import numpy as np

    from natv2.errors import Natv2Error

    missing = [c for c in budgets if c not in pareto.columns]
    if missing:
        raise Natv2Error(f"pareto.csv: no column {missing[0]!r} to bound (has {list(pareto.columns)})")
    if pareto.empty:
        raise Natv2Error("pareto.csv: no fine-tuned network in it")
    ok = np.ones(len(pareto), dtype=bool)
    for col, limit in budgets.items():
        ok &= pareto[col].astype(float).to_numpy() <= limit
    if not ok.any():
        offer = ", ".join(f"smallest {c} {pareto[c].astype(float).min():g}" for c in budgets)
        wanted = ", ".join(f"{c} <= {v:g}" for c, v in budgets.items())
        raise Natv2Error(f"pareto.csv: no network within the budget ({wanted}); {offer}")
    within = pareto[ok]
    score = "select_top1_finetuned"
    if score not in within.columns or within[score].astype(float).isna().all():
        score = "test_top1_finetuned"
    order = within.sort_values([score, "latency_ms"], ascending=[False, True], kind="stable", na_position="last")
    return order.iloc[0], score


def run(args: argparse.Namespace) -> int:
    from natv2.io import read_csv

    budgets = {col: getattr(args, opt) for opt, col in BUDGETS.items() if getattr(args, opt) is not None}
    row, score = pick(read_csv(args.pareto), budgets)
    figures = ", ".join(f"{c} {row[c]:g}" for c in ("params", "macs", "latency_ms", "latency_lut", "test_top1_finetuned")
                        if c in row.index)
    print(f"{row['id']} {row['path']} ({score} {float(row[score]):.2f}; {figures})")
    return 0
