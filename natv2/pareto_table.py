"""The deliverable table pareto.csv: one row per fine-tuned front member (design.md §2 contract).

Every contract column describes one network, the exported one (genome, costs, accuracies); the
``search_*`` columns after them describe the net the search chose, which AEP changes for
early-exit members (exits 1..nd attached, maybe pruned).
"""
from __future__ import annotations

import pandas as pd

from natv2.errors import Natv2Error

COLUMNS = [
    "id",
    "genome",
    "resolution",
    "params",
    "macs",
    "latency_ms",
    "val_top1",
    "test_top1",
    "test_top1_finetuned",
    "path",
    "select_top1_finetuned",  # beyond the design.md contract, after its columns
    # the single-exit net the search chose (differs from the row's net for AEP members)
    "search_genome",
    "search_params",
    "search_macs",
    "search_val_top1",
    "search_test_top1",
]
#: columns of front.csv carried into pareto.csv when the run has them (latency_lut: the target
#: device's latency from search.latency_table, the one the search used)
FRONT_EXTRAS = ["latency_lut"]


def assemble(front: pd.DataFrame, metrics: dict[str, dict], paths: dict[str, str]) -> pd.DataFrame:
    """Join the front with each member's metrics.json; a member without metrics is an error.

    ``metrics``/``paths``: by member id, its metrics.json and its exported directory. Rows are
    sorted by ``params`` (stable); :data:`FRONT_EXTRAS` present in ``front`` follow the columns.
    """
    if front.empty:
        raise Natv2Error("front.csv is empty: the search produced no front member")
    if "finetune" in front.columns:  # only the members chosen for fine-tuning (finetune.max_members)
        front = front[front["finetune"].astype(bool)]
    extras = [c for c in FRONT_EXTRAS if c in front.columns]
    rows = []
    for _, member in front.iterrows():
        mid = str(member["id"])
        if mid not in metrics:
            raise Natv2Error(f"front member {mid}: no fine-tuned network (nets/{mid}/metrics.json missing)")
        m = metrics[mid]
        try:
            rows.append(
                {
                    "id": mid,
                    # the exported net's genome (AEP: its exit gene is the deepest exit it kept)
                    "genome": m.get("genome", member["genome"]),
                    "resolution": int(m.get("resolution", member.get("resolution"))),
                    "params": int(m["params"]),
                    "macs": int(m["macs"]),
                    "latency_ms": float(m["latency_ms"]),
                    # the fine-tune's own val measurement; never the search's estimate in its place
                    "val_top1": float(m["val_top1"]),
                    "test_top1": float(m["test_top1"]),
                    "test_top1_finetuned": float(m["test_top1_finetuned"]),
                    # on the part of val held out of fine-tuning, where ensembles are chosen
                    "select_top1_finetuned": float(m.get("select_top1_finetuned", "nan")),
                    "path": paths[mid],
                    "search_genome": m.get("search_genome", member["genome"]),
                    "search_params": m.get("search_params", member.get("params")),
                    "search_macs": m.get("search_macs", member.get("macs")),
                    "search_val_top1": m.get("search_val_top1", 100.0 - float(member["top1_err"])
                                             if "top1_err" in member else float("nan")),
                    "search_test_top1": m.get("search_test_top1", float("nan")),
                    **{c: float(member[c]) for c in extras},
                }
            )
        except KeyError as e:
            raise Natv2Error(f"nets/{mid}/metrics.json: key {e.args[0]!r} missing") from None
    return pd.DataFrame(rows, columns=COLUMNS + extras).sort_values("params", kind="stable").reset_index(drop=True)
