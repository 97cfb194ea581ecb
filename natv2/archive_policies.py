"""The NAT / NATv2 archive policies (design.md §3–4), ``search.algorithm``:

- initialisation. NAT: ``archive_size - 2`` uniform samples + smallest + largest.
  NATv2: ``preprocess_mult * archive_size - 2`` NATv2 samples (skip 1/3) + smallest + largest are
  evaluated (:func:`init_genomes`), then :func:`select_initial` keeps smallest + largest and the
  best of the rest by survival (pre-processing).
- update (:func:`update_archive`). NAT: the archive grows by the evaluated candidates.
  NATv2: after adding them, survival (:func:`natv2.survival.survive`) cuts it back to ``archive_size``.

Typical use by the init step::

    genomes = init_genomes(space, cfg, rng)             # evaluate these ...
    evaluated = evaluate_genomes(supernet, genomes, ...) # ... (natv2.evaluate)
    archive = tag_rows(select_initial(evaluated, space, cfg, rng), supernet="iter0", seed=s, iteration=0)
    write_archive(path, archive)                         # (natv2.archive)
"""
from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
import pandas as pd

from natv2.archive import check_table, objective_matrix, tag_rows
from natv2.constraints import checked_columns, constraint_matrix
from natv2.errors import Natv2Error
from natv2.survival import survive

log = logging.getLogger(__name__)


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
