"""Bench: OFA3 ensemble selection at the scale of issue 7 (100 members, 10,000 selection images).

    python bench/ensemble.py [--members 100] [--images 10000] [--classes 100] [--k 5] [--agreement 0.9]

Prints seconds for building the sparse scorer, scoring one NSGA-II population, and the whole
search, plus the memory of the sparse tables next to the dense table it avoids.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from natv2.ensemble_selection import EnsembleScorer, select_ensembles, topk_from_probs


def synthetic_members(n_members: int, n_images: int, n_classes: int, k: int, rng: np.random.Generator,
                      agreement: float = 0.0):
    """Members of rising accuracy: logits = noise + a bonus on the true class.

    ``agreement`` mixes a noise shared by all members into each member's own (0 = independent
    members, the worst case for the sparse tables: their top-k sets barely overlap; subnets of
    one supernet agree far more).
    """
    labels = rng.integers(0, n_classes, n_images)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    shared = torch.randn(n_images, n_classes, generator=gen)
    members = {}
    for m in range(n_members):
        own = torch.randn(n_images, n_classes, generator=gen)
        logits = agreement * shared + (1 - agreement**2) ** 0.5 * own
        logits[torch.arange(n_images), torch.as_tensor(labels)] += 2.0 + 2.0 * m / n_members
        members[f"n{m:03d}"] = topk_from_probs(logits.softmax(1), k)
    return members, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--population", type=int, default=40)
    parser.add_argument("--generations", type=int, default=30)
    parser.add_argument("--agreement", type=float, default=0.0, help="0 = independent members (worst case), 0.9 = similar")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    members, labels = synthetic_members(args.members, args.images, args.classes, args.k, rng, args.agreement)
    costs = pd.DataFrame(
        {"params": rng.integers(1e5, 1e6, args.members), "macs": rng.integers(1e6, 1e8, args.members),
         "latency_ms": rng.uniform(1, 10, args.members)},
        index=list(members),
    )
    t = time.perf_counter()
    scorer = EnsembleScorer(list(members.values()), labels)
    t_build = time.perf_counter() - t
    X = np.zeros((args.population, args.members), dtype=bool)
    for row in X:
        row[rng.choice(args.members, 8, replace=False)] = True
    t = time.perf_counter()
    scorer.top1(X)
    t_pop = time.perf_counter() - t
    t = time.perf_counter()
    table = select_ensembles(members, labels, costs, mode="parallel", population=args.population,
                             generations=args.generations, rng=np.random.default_rng(1))
    t_search = time.perf_counter() - t
    sparse_mb = sum(m.indices.nbytes + m.probs.nbytes for m in members.values()) / 2**20
    dense_mb = args.members * args.images * args.classes * 4 / 2**20
    print(f"members={args.members} images={args.images} classes={args.classes} k={args.k} "
          f"agreement={args.agreement} slots={scorer.n_slots} ({scorer.n_slots / args.images:.1f} per image)")
    print(f"top-k tables: {sparse_mb:.1f} MiB (a dense float32 table would be {dense_mb:.0f} MiB)")
    print(f"build scorer: {t_build:.2f} s")
    print(f"score one population of {args.population} ensembles of 8: {t_pop:.3f} s")
    print(f"NSGA-II search ({args.population} x {args.generations} gen): {t_search:.2f} s, {len(table)} non-dominated ensembles")
    print(f"best single val top-1: {max(m.top1(labels) for m in members.values()):.2f} %, best ensemble: {table.val_top1.max():.2f} %")


if __name__ == "__main__":
    main()
