"""Constraints on archive columns (config ``search.constraints``: {column: upper bound}).

A constraint is an upper bound on a column of :data:`natv2.archive.OBJECTIVES`; as in pymoo,
``G = value - bound`` and a row is feasible when every ``G <= 0``. Survival
(:func:`natv2.survival.survive`) keeps feasible rows first and fills up with the least violating
infeasible ones.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from natv2.archive import OBJECTIVES
from natv2.errors import Natv2Error


def check_constraints(constraints) -> dict[str, float]:
    """Validate ``search.constraints``: {column of :data:`OBJECTIVES`: finite upper bound}."""
    out = {}
    for name, bound in dict(constraints or {}).items():
        if name not in OBJECTIVES:
            raise Natv2Error(f"config key search.constraints.{name}: unknown column; expected names from {list(OBJECTIVES)}")
        try:
            value = float(bound)
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            raise Natv2Error(f"config key search.constraints.{name}: expected a finite number, got {bound!r}")
        out[name] = value
    return out


def constraint_matrix(frame: pd.DataFrame, constraints) -> np.ndarray:
    """(n, c) values minus bounds of the constrained columns: <= 0 is feasible (pymoo's G)."""
    names = list(constraints)
    if not names:
        return np.zeros((len(frame), 0))
    return frame[names].to_numpy(dtype=float) - np.array([constraints[n] for n in names], dtype=float)


def violation(G: np.ndarray) -> np.ndarray:
    """Total constraint violation per row (pymoo's CV: the sum of positive parts); 0 = feasible."""
    G = np.asarray(G, dtype=float)
    return np.maximum(G, 0.0).sum(axis=1) if G.size else np.zeros(len(G))


def feasible_mask(frame: pd.DataFrame, constraints) -> np.ndarray:
    """Boolean mask of the rows that satisfy every constraint."""
    return violation(constraint_matrix(frame, constraints)) <= 0


def checked_columns(cfg) -> tuple[str, ...]:
    """The objectives of a run, then its constrained columns that are not objectives."""
    extra = [c for c in getattr(cfg, "constraints", {}) if c not in cfg.objectives]
    return (*cfg.objectives, *extra)


def describe_constraints(constraints) -> str:
    return ", ".join(f"{k} <= {v:g}" for k, v in dict(constraints).items())

