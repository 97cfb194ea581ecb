"""Hypervolume of every iteration's archive, and the surrogate's tau beside it (hv.csv).

- :func:`hypervolume_table`: pymoo's ``HV`` of every iteration's archive against ONE reference
  point per run, so the values of a run are comparable. With ``reference`` given (one value per
  objective, in its units) objectives are divided by it and the reference point is 1; otherwise
  objectives are min-max normalised over all the run's archives and the reference is 1.1.
- :func:`add_tau_columns`: the surrogate's cross-validation tau and its tau on the candidates
  (from each iteration's update.json), by iteration.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from natv2.archive import check_table, objective_matrix
from natv2.errors import Natv2Error
from natv2.survival import non_dominated

#: margin of the derived reference point beyond the worst value (normalised units)
HV_MARGIN = 0.1


def hypervolume(F: np.ndarray, ref_point: np.ndarray) -> float:
    """pymoo's exact hypervolume of ``F`` (minimisation) w.r.t. ``ref_point``; 0 when empty."""
    from pymoo.indicators.hv import HV

    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return 0.0
    return float(HV(ref_point=np.asarray(ref_point, dtype=float))(F))


def hypervolume_table(archives: Sequence[pd.DataFrame], objectives: Sequence[str],
                      reference: Sequence[float] | None = None) -> pd.DataFrame:
    """Hypervolume of each archive (index = iteration) against one reference point for the run.

    Columns: ``iteration, hypervolume, n_archive, n_front``, then ``ideal_<obj>`` and
    ``reference_<obj>`` (in the objective's units) so the table says what it was measured against.
    """
    objectives = tuple(objectives)
    if not archives:
        raise Natv2Error("hypervolume: no archives given")
    Fs = [objective_matrix(check_table(a, objectives, f"archive of iteration {i}"), objectives)
          for i, a in enumerate(archives)]
    if reference is not None:
        reference = np.asarray(reference, dtype=float)
        if reference.shape != (len(objectives),) or (reference <= 0).any():
            raise Natv2Error(f"search.hv_reference: expected {len(objectives)} positive values, got {reference.tolist()}")
        ideal, scale, ref_point = np.zeros(len(objectives)), reference, np.ones(len(objectives))
    else:
        union = np.concatenate(Fs)
        ideal = union.min(axis=0)
        scale = np.ptp(union, axis=0)
        scale[scale == 0] = 1.0
        ref_point = np.full(len(objectives), 1.0 + HV_MARGIN)
    rows = []
    for i, F in enumerate(Fs):
        nd = F[non_dominated(F)] if len(F) else F
        rows.append({"iteration": i, "hypervolume": hypervolume((nd - ideal) / scale, ref_point),
                     "n_archive": len(F), "n_front": len(nd)})
    table = pd.DataFrame(rows)
    reference_units = ideal + ref_point * scale
    for j, name in enumerate(objectives):
        table[f"ideal_{name}"] = ideal[j]
        table[f"reference_{name}"] = reference_units[j]
    return table


#: hv.csv column -> where update.json reports it; each tau comes with the number of rows it ranks
#: (a tau over 4 candidates has 6 pairs and means little: the report draws the chance band of each n)
TAU_COLUMNS = {
    "cv_tau": ("surrogate", "cv_tau"),
    "cv_n": ("surrogate", "n_train"),
    "tau_candidates": ("candidates", "tau"),
    "n_candidates": ("candidates", "n"),
}
#: the counts among them: integers in the CSV (24, not 24.0)
COUNT_COLUMNS = frozenset({"cv_n", "n_candidates"})


def add_tau_columns(table: pd.DataFrame, updates: list[dict]) -> pd.DataFrame:
    """Surrogate cv tau and tau on the candidates, with their row counts (update.json reports),
    by the ``iteration`` they name."""
    by_iteration = {int(u["iteration"]): u for u in updates}
    for col, path in TAU_COLUMNS.items():
        values = []
        for i in table["iteration"]:
            value = by_iteration.get(int(i), {}).get(path[0], {}).get(path[1])
            values.append(np.nan if value is None else float(value))
        # a missing count is an empty cell, like a missing tau
        table[col] = pd.array(values, dtype="Int64") if col in COUNT_COLUMNS else values
    return table
