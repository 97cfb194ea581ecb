"""The final front and its knee points (design.md §2; hypervolume per iteration: natv2.hypervolume).

- :func:`pareto_front`: the non-dominated rows of the final archive, sorted by top-1 error, with
  an ``id`` (0 = most accurate) and a ``knee`` flag: pymoo's high trade-off points (Deb & Gupta's
  trade-off measure, on objectives min-max normalised over the front; see :func:`knee_points`).
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from natv2.archive import ERROR, check_table, objective_matrix
from natv2.constraints import describe_constraints, feasible_mask
from natv2.errors import Natv2Error
from natv2.survival import non_dominated


def knee_points(F: np.ndarray, epsilon: float = 0.125) -> np.ndarray:
    """Boolean mask of the high trade-off (knee) points of a non-dominated set ``F``.

    pymoo's ``HighTradeoffPoints`` measure, assembled from its parts: for every point, the least
    sacrifice per unit gain towards its neighbours within ``epsilon`` (at least 2m neighbours)
    on ``F`` min-max normalised to [0, 1]; the upper-tail outliers of that measure are knees.
    Unlike ``HighTradeoffPoints.do`` the measure is rounded to 9 digits first: on a straight
    front all trade-offs are equal, and pymoo would otherwise flag float noise as knees.
    Fronts of fewer than 3 points have no knee.
    """
    with warnings.catch_warnings():  # pymoo 0.6.2 imports scipy.spatial.ckdtree (deprecated)
        warnings.simplefilter("ignore", DeprecationWarning)
        from pymoo.core.decision_making import NeighborFinder, find_outliers_upper_tail

    F = np.asarray(F, dtype=float)
    mask = np.zeros(len(F), dtype=bool)
    if len(F) < 3:
        return mask
    span = np.ptp(F, axis=0)
    span[span == 0] = 1.0
    N = (F - F.min(axis=0)) / span
    finder = NeighborFinder(N, epsilon=epsilon, n_min_neigbors="auto", consider_2d=False)
    mu = np.full(len(N), -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(N)):
            diff = N[finder.find(i)] - N[i]
            tradeoff = np.maximum(0, diff).sum(axis=1) / np.maximum(0, -diff).sum(axis=1)
            # only tied neighbours (0/0 everywhere): NaN, as nanmin would give, without its warning
            mu[i] = np.nan if np.isnan(tradeoff).all() else np.nanmin(tradeoff)
        if not np.isfinite(mu).any():  # every point equal to its neighbours (ties): no trade-off, no knee
            return mask
        idx = find_outliers_upper_tail(np.round(mu, 9))  # all equal: std 0, no outlier
    if idx is not None:
        mask[np.asarray(idx, dtype=int)] = True
    return mask


def pareto_front(archive: pd.DataFrame, objectives: Sequence[str],
                 constraints: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Non-dominated rows of ``archive`` sorted by top-1 error, with ``id`` and ``knee`` columns.

    Rows with identical objective values are all kept (neither dominates the other). With
    ``constraints`` ({column: upper bound}, ``search.constraints``) only the feasible rows count;
    an archive without any is a one-line Natv2Error saying how close it came.
    """
    objectives = tuple(objectives)
    constraints = dict(constraints or {})
    check_table(archive, (*objectives, *[c for c in constraints if c not in objectives]), "archive")
    if len(archive) == 0:
        raise Natv2Error("archive: empty, no front to extract")
    if constraints:
        feasible = feasible_mask(archive, constraints)
        if not feasible.any():
            best = ", ".join(f"min {c} {archive[c].astype(float).min():g}" for c in constraints)
            raise Natv2Error(f"archive: no genome satisfies search.constraints ({describe_constraints(constraints)}); "
                             f"of {len(archive)} genomes: {best}")
        archive = archive[feasible]
    front = archive[non_dominated(objective_matrix(archive, objectives))]
    sort_by = [ERROR] + [o for o in objectives if o != ERROR] if ERROR in objectives else list(objectives)
    front = front.sort_values(sort_by, kind="stable").reset_index(drop=True)
    front.insert(0, "id", np.arange(len(front)))
    front["knee"] = knee_points(objective_matrix(front, objectives))
    return front


def spread_members(front: pd.DataFrame, objectives: Sequence[str], k: int) -> np.ndarray:
    """Boolean mask of at most ``k`` front members spread along the front (``k`` <= 0: all).

    The most accurate and the cheapest member come first, then the knee points, then members
    evenly spaced in the order of the first cost objective, so a small fine-tuning budget
    still covers the whole range of costs.
    """
    n = len(front)
    mask = np.zeros(n, dtype=bool)
    if k <= 0 or k >= n:
        mask[:] = True
        return mask
    costs = [o for o in objectives if o != ERROR] or list(objectives)
    by_cost = np.argsort(front[costs[0]].to_numpy(float), kind="stable")
    order = [int(np.argmin(front[ERROR].to_numpy(float))) if ERROR in front else 0, int(by_cost[0])]
    order += [int(i) for i in np.flatnonzero(front["knee"].to_numpy(bool))] if "knee" in front else []
    order += [int(by_cost[int(round(q))]) for q in np.linspace(0, n - 1, k)]  # evenly spaced
    order += [int(i) for i in by_cost]  # then any member, should rounding have merged positions
    for i in order:
        if mask.sum() >= k:
            break
        mask[i] = True
    return mask


def finetune_priority(front_csv: str, member_id: str | int) -> float:
    """Snakemake priority of a member's fine-tune job: its MACs in millions (0 when unknown).

    Fine-tune time grows with a net's MACs (CIFAR-10 default, 1 thread each: 3.9 / 6.0 / 6.2 /
    9.1 M MACs took 113 / 171 / 209 / 283 s). Starting the costliest first (longest processing
    time first) keeps the last job from running alone on one core while the others idle: with
    2 cores the default order took 464 s (the 6.0 M net's last 145 s alone), this one 396 s.
    """
    try:
        front = pd.read_csv(front_csv, usecols=["id", "macs"])
    except (OSError, ValueError):  # not written yet (a target named before the checkpoint) or no macs
        return 0.0
    macs = front.loc[front["id"].astype(str) == str(member_id), "macs"].to_numpy(float)
    return float(macs[0]) / 1e6 if len(macs) and np.isfinite(macs[0]) else 0.0
