"""Survival: which rows of an objective matrix to keep (design.md §3–4).

Survival is pymoo's: ``RankAndCrowding`` (NSGA-II) for 2 objectives, ``ReferenceDirectionSurvival``
(NSGA-III, energy reference directions) for 3+. Both keep whole fronts in rank order and only
thin the front that does not fit, so the non-dominated set survives whenever it fits.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd

from natv2.archive import objective_matrix
from natv2.constraints import constraint_matrix
from natv2.errors import Natv2Error

# Reference directions are a fixed design, not a random choice: one seed for all runs.
_REF_DIRS_SEED = 1


@lru_cache(maxsize=16)
def _energy_directions(n_obj: int, n_points: int) -> np.ndarray:
    from pymoo.util.ref_dirs import get_reference_directions

    return get_reference_directions("energy", n_obj, max(n_points, n_obj), seed=_REF_DIRS_SEED)


def reference_directions(n_obj: int, n_points: int) -> np.ndarray:
    """NSGA-III energy reference directions (Blank et al. 2020); cached, as they take seconds."""
    return _energy_directions(n_obj, n_points).copy()


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``F`` (minimisation)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(F, dtype=float)
    mask = np.zeros(len(F), dtype=bool)
    if len(F):
        mask[NonDominatedSorting().do(F, only_non_dominated_front=True)] = True
    return mask


def survive(F: np.ndarray, n: int, rng: np.random.Generator, G: np.ndarray | None = None) -> np.ndarray:
    """Indices (ascending) of the ``n`` rows of ``F`` that survive.

    2 objectives: NSGA-II rank and crowding; 3+: NSGA-III reference-direction survival. Fronts
    are kept whole in rank order; only the first front that does not fit is thinned (by
    crowding distance / niche counts), so the non-dominated set survives whenever it fits.
    With constraints ``G`` ((n, c), <= 0 feasible; :func:`constraint_matrix`) pymoo's survival
    keeps feasible rows first and fills up with the least violating infeasible ones.
    """
    from pymoo.algorithms.moo.nsga3 import ReferenceDirectionSurvival
    from pymoo.core.population import Population
    from pymoo.core.problem import Problem
    from pymoo.operators.survival.rank_and_crowding import RankAndCrowding

    F = np.asarray(F, dtype=float)
    if F.ndim != 2 or F.shape[1] < 2:
        raise Natv2Error(f"survival: expected an (n, >=2) objective matrix, got shape {F.shape}")
    if n >= len(F):
        return np.arange(len(F))
    if n <= 0:
        return np.zeros(0, dtype=int)
    m = F.shape[1]
    survival = RankAndCrowding() if m == 2 else ReferenceDirectionSurvival(reference_directions(m, n))
    if G is not None and np.asarray(G).size:
        G = np.asarray(G, dtype=float).reshape(len(F), -1)
        pop = Population.new(X=np.zeros((len(F), 1)), F=F, G=G)  # pymoo derives CV and feas from G
        problem = Problem(n_var=1, n_obj=m, n_ieq_constr=G.shape[1])
    else:
        pop = Population.new(X=np.zeros((len(F), 1)), F=F)
        problem = Problem(n_var=1, n_obj=m)
    idx = survival.do(problem, pop, n_survive=n, random_state=rng, return_indices=True)
    return np.sort(np.asarray(idx, dtype=int))


def top_rows(frame: pd.DataFrame, n: int, objectives: Sequence[str], rng: np.random.Generator,
             constraints=None) -> pd.DataFrame:
    """The best ``n`` rows by survival (e.g. the top-150 for NAT's adaptation distribution);
    with ``constraints`` (``search.constraints``) feasible rows first, as the archive's survival."""
    G = constraint_matrix(frame, constraints) if constraints else None
    return frame.iloc[survive(objective_matrix(frame, objectives), n, rng, G)].reset_index(drop=True)
