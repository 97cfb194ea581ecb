"""Synthetic objectives over the real genome encoding, for the search-engine tests.

The "error" falls with resolution, depth, kernel and expand ratio; the "costs" grow with them,
so the two conflict as they do for real networks, and every value is known exactly.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from natv2.space import SearchSpace

SPACE = SearchSpace(resolutions=(32, 40, 48))


def _blocks(space: SearchSpace, X: np.ndarray):
    """Per block slot: active mask, kernel index, expand index (arrays (n, n_blocks))."""
    codes = X[:, space.block_offset: space.block_offset + space.n_blocks]
    e, k = np.divmod(np.maximum(codes - 1, 0), len(space.kernels))
    return codes > 0, k, e


def error(space: SearchSpace, X: np.ndarray, rng: np.random.Generator | None = None, noise: float = 0.5) -> np.ndarray:
    """Top-1 error in percent: 40 minus gains from resolution and every active block."""
    X = np.atleast_2d(X)
    active, k, e = _blocks(space, X)
    err = 40.0 - 3.0 * X[:, 0] - (active * (1.0 + 0.4 * k + 0.6 * e)).sum(axis=1)
    if rng is not None:
        err = err + rng.normal(0.0, noise, len(X))
    return err


def costs(space: SearchSpace, X: np.ndarray) -> dict[str, np.ndarray]:
    """Exact synthetic params, MACs and latency (a cost_fn for natv2.search)."""
    X = np.atleast_2d(np.asarray(X, dtype=np.int64))
    active, k, e = _blocks(space, X)
    kernel = np.asarray(space.kernels)[k]
    expand = np.asarray(space.expands)[e]
    per_block = active * (1000.0 * expand + 50.0 * kernel**2)
    params = 20000.0 + per_block.sum(axis=1)
    res = np.asarray(space.resolutions)[X[:, 0]]
    macs = params * (res / 32.0) ** 2 * 40.0
    latency = 1.0 + active.sum(axis=1) * 0.2 + macs * 1e-7
    return {"params": params, "macs": macs, "latency_ms": latency}


def evaluate(space: SearchSpace, X: np.ndarray, rng: np.random.Generator | None = None) -> pd.DataFrame:
    """A stand-in for natv2.evaluate.evaluate_genomes with the synthetic objectives."""
    X = np.atleast_2d(X)
    err = error(space, X, rng)
    frame = pd.DataFrame({"genome": [space.to_string(g) for g in X], "top1_err": err, "top1": 100 - err})
    for name, values in costs(space, X).items():
        frame[name] = values
    return frame
