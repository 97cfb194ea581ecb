"""The archive table and the NAT / NATv2 archive policies (design.md §2–4).

The archive is a pandas DataFrame, one row per evaluated sub-network, saved as CSV:

    genome, top1_err, params, macs, latency_ms, supernet, seed, iteration  (+ any extra columns)

``genome`` is :meth:`natv2.space.SearchSpace.to_string`; every objective is minimised. A run
uses 2–4 of :data:`OBJECTIVES` (config ``search.objectives``), always including ``top1_err``.

Policies (``search.algorithm``):

- initialisation. NAT: ``archive_size - 2`` uniform samples + smallest + largest.
  NATv2: ``preprocess_mult * archive_size - 2`` NATv2 samples (skip 1/3) + smallest + largest are
  evaluated (:func:`init_genomes`), then :func:`select_initial` keeps smallest + largest and the
  best of the rest by survival (pre-processing).
- update (:func:`update_archive`). NAT: the archive grows by the evaluated candidates.
  NATv2: after adding them, survival cuts it back to ``archive_size``.

Survival is pymoo's: ``RankAndCrowding`` (NSGA-II) for 2 objectives, ``ReferenceDirectionSurvival``
(NSGA-III, energy reference directions) for 3+. Both keep whole fronts in rank order and only
thin the front that does not fit, so the non-dominated set survives whenever it fits.

Typical use by the init step::

    genomes = init_genomes(space, cfg, rng)             # evaluate these ...
    evaluated = evaluate_genomes(supernet, genomes, ...) # ... (natv2.evaluate)
    archive = tag_rows(select_initial(evaluated, space, cfg, rng), supernet="iter0", seed=s, iteration=0)
    write_archive(path, archive)
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from natv2.errors import Natv2Error
from natv2.io import read_csv, write_csv

log = logging.getLogger(__name__)

#: every objective a run may use, all minimised (top-1 error in percent); latency_lut is the
#: latency predicted by a device's lookup table (natv2.latency_table, search.latency_table)
OBJECTIVES = ("top1_err", "params", "macs", "latency_ms", "latency_lut")
#: the error objective, predicted by the surrogate during the search
ERROR = "top1_err"
#: columns every archive file carries, in this order (extra columns follow)
COLUMNS = ("genome", *OBJECTIVES[:4], "supernet", "seed", "iteration")  # latency_lut, when present, follows
ALGORITHMS = ("nat", "natv2")

# Reference directions are a fixed design, not a random choice: one seed for all runs.
_REF_DIRS_SEED = 1


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


# --------------------------------------------------------------------------------------------
# survival


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


# --------------------------------------------------------------------------------------------
# policies


def _unique_rows(X: np.ndarray) -> np.ndarray:
    """``X`` without repeated rows, first occurrences kept in order."""
    _, first = np.unique(X, axis=0, return_index=True)
    return X[np.sort(first)]


def sample_unique(space, n: int, rng: np.random.Generator, policy: str, exclude: Iterable[np.ndarray] = ()) -> np.ndarray:
    """``n`` distinct valid genomes from ``space.sample`` that are not in ``exclude``."""
    seen = {np.asarray(g, dtype=np.int64).tobytes() for g in exclude}
    rows: list[np.ndarray] = []
    for _ in range(100):
        if len(rows) >= n:
            break
        for g in space.sample(max(2 * (n - len(rows)), 8), rng, policy=policy):
            key = g.tobytes()
            if key not in seen:
                seen.add(key)
                rows.append(g)
                if len(rows) == n:
                    break
    if len(rows) < n:
        raise Natv2Error(f"search space: could not draw {n} distinct genomes (only {len(rows)}); is the space that small?")
    return np.stack(rows) if rows else np.zeros((0, space.n_var), dtype=np.int64)


def init_genomes(space, cfg, rng: np.random.Generator) -> np.ndarray:
    """Genomes to evaluate for the initial archive: smallest, largest, then distinct samples.

    NAT: ``archive_size`` in all, uniform sampling. NATv2: ``preprocess_mult * archive_size``
    in all, NATv2 sampling (optional slots skipped w.p. 1/3) (the pre-processing pool :func:`select_initial` cuts down).
    """
    extremes = _unique_rows(np.stack([space.smallest(), space.largest()]))
    total = cfg.archive_size * (cfg.preprocess_mult if cfg.algorithm == "natv2" else 1)
    samples = sample_unique(space, max(total - len(extremes), 0), rng, cfg.sampling_policy, exclude=extremes)
    return np.concatenate([extremes, samples])


def select_initial(evaluated: pd.DataFrame, space, cfg, rng: np.random.Generator) -> pd.DataFrame:
    """The initial archive from the evaluated :func:`init_genomes`.

    NAT keeps every row. NATv2 keeps the smallest and largest genomes and fills the rest of
    ``archive_size`` by survival among the other rows (its pre-processing).
    """
    check_table(evaluated, checked_columns(cfg), "evaluated initial genomes")
    frame = evaluated.reset_index(drop=True)
    if cfg.algorithm == "nat" or len(frame) <= cfg.archive_size:
        return frame
    forced = {space.to_string(space.smallest()), space.to_string(space.largest())}
    is_forced = frame["genome"].isin(forced).to_numpy()
    rest = np.flatnonzero(~is_forced)
    constraints = getattr(cfg, "constraints", {})
    keep = rest[survive(objective_matrix(frame.iloc[rest], cfg.objectives), cfg.archive_size - int(is_forced.sum()), rng,
                        constraint_matrix(frame.iloc[rest], constraints))]
    chosen = np.sort(np.concatenate([np.flatnonzero(is_forced), keep]))
    log.info("pre-processing: kept %d of %d evaluated genomes by survival", len(chosen), len(frame))
    return frame.iloc[chosen].reset_index(drop=True)


def update_archive(archive: pd.DataFrame, candidates: pd.DataFrame, cfg, rng: np.random.Generator) -> pd.DataFrame:
    """The archive after adding the evaluated ``candidates``.

    Candidates already in the archive are ignored (the archive's row is kept). NAT: the archive
    grows. NATv2: survival cuts it back to ``archive_size`` (row order otherwise preserved).
    """
    check_table(archive, checked_columns(cfg), "archive")
    check_table(candidates, checked_columns(cfg), "evaluated candidates")
    new = candidates[~candidates["genome"].isin(set(archive["genome"]))]
    if len(new) < len(candidates):
        log.warning("%d candidate(s) were already in the archive; keeping the archive's rows", len(candidates) - len(new))
    merged = pd.concat([archive, new], ignore_index=True)
    if cfg.algorithm == "nat" or len(merged) <= cfg.archive_size:
        return merged
    keep = survive(objective_matrix(merged, cfg.objectives), cfg.archive_size, rng,
                   constraint_matrix(merged, getattr(cfg, "constraints", {})))
    return merged.iloc[keep].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# NAT's sampling distribution for supernet adaptation


def gene_distribution(genomes: np.ndarray, space, pseudo_count: float = 0.0) -> list[np.ndarray]:
    """Per gene, the categorical distribution over ``xl..xu`` of ``genomes`` (NAT §3.3).

    ``pseudo_count`` is added to every value's count, so values absent from the top genomes
    keep a small chance of being trained.
    """
    genomes = np.asarray(genomes, dtype=np.int64)
    if genomes.ndim != 2 or genomes.shape[1] != space.n_var or len(genomes) == 0:
        raise Natv2Error(f"gene distribution: expected genomes of shape (n>0, {space.n_var}), got {genomes.shape}")
    probs = []
    for pos in range(space.n_var):
        lo, hi = int(space.xl[pos]), int(space.xu[pos])
        counts = np.bincount(genomes[:, pos] - lo, minlength=hi - lo + 1).astype(float) + pseudo_count
        probs.append(counts / counts.sum())
    return probs


def sample_distribution(probs: Sequence[np.ndarray], space, n: int, rng: np.random.Generator, repair: str) -> np.ndarray:
    """``n`` genomes drawn gene by gene from :func:`gene_distribution`, then repaired."""
    X = np.stack([int(space.xl[pos]) + rng.choice(len(p), size=n, p=p) for pos, p in enumerate(probs)], axis=1)
    return space.repair(X, mode=repair)


def run_update(archive, evaluated, cfg, rng, *, iteration: int, seed: int, surrogate: dict | None = None):
    """The update step of one iteration: (the archive after ``evaluated`` joined it, update.json's report).

    ``surrogate``: the search step's surrogate.json, for the surrogate's tau on the candidates.
    """
    from natv2.surrogate import candidate_tau

    evaluated = tag_rows(evaluated, supernet=f"iter{iteration}", seed=seed, iteration=iteration)
    new_archive = update_archive(archive, evaluated, cfg, rng)
    report = {"iteration": iteration, "algorithm": cfg.algorithm, "n_before": len(archive),
              "n_candidates": len(evaluated), "n_after": len(new_archive),
              "n_candidates_kept": int(new_archive["genome"].isin(set(evaluated["genome"]) - set(archive["genome"])).sum())}
    if surrogate is not None:
        report["surrogate"] = {k: surrogate.get(k) for k in ("kind", "cv_tau", "cv_rmse", "n_train")}
        report["candidates"] = candidate_tau(evaluated, surrogate.get("predicted", {}))
    return new_archive, report
