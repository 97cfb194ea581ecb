"""The archive table (design.md §2): one row per evaluated sub-network, read and written as CSV.

The archive is a pandas DataFrame, saved as CSV:

    genome, top1_err, params, macs, latency_ms, supernet, seed, iteration  (+ any extra columns)

``genome`` is :meth:`natv2.space.SearchSpace.to_string`; every objective is minimised. A run
uses 2–4 of :data:`OBJECTIVES` (config ``search.objectives``), always including ``top1_err``.

The constraints on its columns are in :mod:`natv2.constraints`, survival in
:mod:`natv2.survival`, the NAT / NATv2 initialisation and update policies in
:mod:`natv2.archive_policies`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from natv2.errors import Natv2Error
from natv2.io import read_csv, write_csv

#: every objective a run may use, all minimised (top-1 error in percent); latency_lut is the
#: latency predicted by a device's lookup table (natv2.latency_table, search.latency_table)
OBJECTIVES = ("top1_err", "params", "macs", "latency_ms", "latency_lut")
#: the error objective, predicted by the surrogate during the search
ERROR = "top1_err"
#: columns every archive file carries, in this order (extra columns follow)
COLUMNS = ("genome", *OBJECTIVES[:4], "supernet", "seed", "iteration")  # latency_lut, when present, follows
ALGORITHMS = ("nat", "natv2")


# --------------------------------------------------------------------------------------------
# table I/O


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Validate an objective list: 2–4 distinct names of :data:`OBJECTIVES`, including ``top1_err``."""
    objectives = tuple(objectives)
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        raise Natv2Error(f"config key search.objectives: unknown {unknown}; expected names from {list(OBJECTIVES)}")
    if len(set(objectives)) != len(objectives) or not 2 <= len(objectives) <= 4:
        raise Natv2Error(f"config key search.objectives: expected 2 to 4 distinct objectives, got {list(objectives)}")
    if ERROR not in objectives:
        raise Natv2Error(f"config key search.objectives: must include {ERROR!r} (the surrogate predicts it), got {list(objectives)}")
    return objectives



def check_table(frame: pd.DataFrame, objectives: Sequence[str], where: str) -> pd.DataFrame:
    """Check that ``frame`` has a ``genome`` column and finite numeric ``objectives``."""
    missing = [c for c in ("genome", *objectives) if c not in frame.columns]
    if missing:
        raise Natv2Error(f"{where}: missing column(s) {missing}; has {list(frame.columns)}")
    for col in objectives:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=float))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise Natv2Error(f"{where}: column {col!r} row {row}: expected a finite number, got {frame[col].iloc[row]!r}")
    dup = frame["genome"].duplicated()
    if dup.any():
        raise Natv2Error(f"{where}: genome {frame['genome'][dup].iloc[0]!r} appears more than once")
    return frame


def read_archive(path: str | Path, objectives: Sequence[str] = (ERROR,)) -> pd.DataFrame:
    """Read an archive CSV; a missing column or a non-numeric objective raises Natv2Error naming the file."""
    frame = read_csv(path)
    return check_table(frame, objectives, str(path))


def read_evaluated(paths):
    """Concatenate evaluation shards, in original row order when they carry ``row``."""
    table = pd.concat([read_csv(p) for p in paths], ignore_index=True)
    if "row" in table.columns:
        table = table.sort_values("row", kind="stable").drop(columns="row").reset_index(drop=True)
    return table


def write_archive(path: str | Path, frame: pd.DataFrame) -> None:
    """Write atomically, the :data:`COLUMNS` first (those present), then the rest in their order."""
    first = [c for c in COLUMNS if c in frame.columns]
    rest = [c for c in frame.columns if c not in first]
    write_csv(path, frame[first + rest])


def tag_rows(frame: pd.DataFrame, *, supernet: str, seed: int, iteration: int) -> pd.DataFrame:
    """Set ``supernet``/``seed``/``iteration`` where missing (rows evaluated by ``evaluate_genomes``)."""
    out = frame.copy()
    for col, value in (("supernet", supernet), ("seed", seed), ("iteration", iteration)):
        if col not in out.columns:
            out[col] = value
        else:
            out[col] = out[col].where(out[col].notna(), value)
    return out


def objective_matrix(frame: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    """The (n, m) float matrix of ``objectives`` (all minimised)."""
    return frame[list(objectives)].to_numpy(dtype=float)


def genomes_of(frame: pd.DataFrame, space) -> np.ndarray:
    """The (n, n_var) int genomes of the ``genome`` strings."""
    if len(frame) == 0:
        return np.zeros((0, space.n_var), dtype=np.int64)
    return np.stack([space.from_string(s) for s in frame["genome"]])

