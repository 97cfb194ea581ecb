"""Bench: random sampling vs NAT vs NATv2 at the same number of true evaluations (issue 5).

    python bench/policies.py --synthetic [--budget 150] [--seeds 3]
    python bench/policies.py --supernet results/cifar10/supernet/warmup.pt \\
        --data results/cifar10/data/split.json [--budget 300] [--seeds 3] [--config my.yaml]

One fixed supernet, no adaptation, so the comparison isolates the search policies. Each
policy spends exactly ``--budget`` true evaluations (top-1 on val + costs):

  random  ``budget`` distinct genomes of the uniform (NAT) sampler, plus smallest and largest
  nat     NAT's archive (archive_size), then iterations of K candidates (adaptive surrogate,
          NSGA search, subset selection); the archive grows
  natv2   NATv2's pre-processing (preprocess_mult x archive_size evaluated, survival to
          archive_size), then iterations of K candidates (LightGBM), archive cut by survival

Algorithm settings come from the ``search:`` config (algorithm-dependent ``auto`` keys follow
each policy); the objectives are (top1_err, params). The hypervolume is that of everything a
run evaluated, on objectives min-max normalised over ALL runs of the bench (reference 1.1), so
every number in the table is comparable. Printed: per policy the mean and std over seeds of
the final hypervolume, and the surrogate's Kendall tau per iteration (cv, and on the
candidates once measured).

``--synthetic`` uses the synthetic objectives of tests/synthetic_nas.py (no data, seconds);
the real mode needs a trained supernet and a prepared split.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ("top1_err", "params")
Evaluate = Callable[[np.ndarray], pd.DataFrame]


def synthetic_problem():
    """(space, evaluate, cost_fn) of the synthetic objectives."""
    sys.path.insert(0, str(REPO / "tests"))
    from synthetic_nas import SPACE, costs, evaluate

    noise = np.random.default_rng(12345)  # measurement noise of the synthetic "evaluation"
    return SPACE, lambda X: evaluate(SPACE, X, noise), lambda X: costs(SPACE, X)


def supernet_problem(supernet_path: str, split_json: str, settings):
    """(space, evaluate, cost_fn) of a trained supernet: val top-1 and natv2.costs."""
    import torch

    from natv2.evaluate import evaluate_genomes
    from natv2.nets.checkpoint import load_supernet
    from natv2.search import supernet_costs
    from natv2.splits import load_data

    device = settings.torch_device()
    net, _ = load_supernet(supernet_path, map_location=str(device))
    data = load_data(split_json, device=device)
    torch.set_num_threads(1)
    cfg = dataclasses.replace(settings, search=dataclasses.replace(settings.search, objectives=OBJECTIVES))
    _, cost_fn = supernet_costs(cfg, supernet_path)
    return net.space, lambda X: evaluate_genomes(net, list(X), data, settings.evaluation, device=device,
                                                 progress=False, seed=settings.seed), cost_fn


def run_random(space, evaluate: Evaluate, cost_fn, cfg, budget: int, rng) -> tuple[pd.DataFrame, list[dict]]:
    from natv2.archive_policies import sample_unique

    extremes = np.stack([space.smallest(), space.largest()])
    X = np.concatenate([extremes, sample_unique(space, budget - 2, rng, "nat", exclude=extremes)])
    return evaluate(X), []


def run_search(space, evaluate: Evaluate, cost_fn, cfg, budget: int, rng) -> tuple[pd.DataFrame, list[dict]]:
    """The NAT / NATv2 loop in one process (the workflow runs the same functions across files)."""
    from natv2 import archive as A
    from natv2 import archive_policies as P
    from natv2.search import search_candidates
    from natv2.surrogate import candidate_tau, fit_surrogate

    genomes = P.init_genomes(space, cfg, rng)
    if len(genomes) + cfg.candidates > budget:
        raise SystemExit(f"--budget {budget}: {cfg.algorithm} spends {len(genomes)} on its initial archive; "
                         f"raise the budget or lower search.archive_size / preprocess_mult")
    evaluated = evaluate(genomes)
    archive = P.select_initial(evaluated, space, cfg, rng)
    spent, taus = len(genomes), []
    iteration = 0
    while spent < budget:
        iteration += 1
        k = min(cfg.candidates, budget - spent)
        it_cfg = dataclasses.replace(cfg, candidates=k)
        surrogate = fit_surrogate(A.genomes_of(archive, space), archive["top1_err"].to_numpy(float),
                                  cfg.surrogate_kind, rng, folds=cfg.surrogate_folds)
        cands = search_candidates(archive, space, surrogate, cost_fn, it_cfg, rng)
        if cands.empty:
            break
        measured = evaluate(A.genomes_of(cands, space))
        spent += len(measured)
        evaluated = pd.concat([evaluated, measured], ignore_index=True)
        archive = P.update_archive(archive, measured, cfg, rng)
        tau = candidate_tau(measured, dict(zip(cands["genome"], cands["predicted_top1_err"])))
        taus.append({"iteration": iteration, "cv_tau": surrogate.cv_tau, "tau_candidates": tau["tau"]})
    return evaluated, taus


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="synthetic objectives (no supernet, no data)")
    parser.add_argument("--supernet", help="trained supernet checkpoint")
    parser.add_argument("--data", help="split.json of the dataset (natv2 split)")
    parser.add_argument("--config", action="append", help="config file(s), merged onto config/config.yaml")
    parser.add_argument("--budget", type=int, default=150, help="true evaluations per run (default 150)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--policies", nargs="+", default=["random", "nat", "natv2"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from natv2.config import settings_from_args
    from natv2.hypervolume import HV_MARGIN, hypervolume

    settings = settings_from_args(args)
    if args.synthetic:
        space, evaluate, cost_fn = synthetic_problem()
    elif args.supernet and args.data:
        space, evaluate, cost_fn = supernet_problem(args.supernet, args.data, settings)
    else:
        parser.error("give --synthetic, or --supernet and --data")

    # every search policy must fit its initial archive and one batch of candidates in the budget:
    # check them all before the first (long) run, not when each policy's turn comes
    from natv2.archive_policies import init_genomes

    for policy in (p for p in args.policies if p != "random"):
        cfg = dataclasses.replace(settings.search, algorithm=policy, objectives=OBJECTIVES)
        n_init = len(init_genomes(space, cfg, np.random.default_rng(0)))
        if n_init + cfg.candidates > args.budget:
            parser.error(f"--budget {args.budget}: {policy} spends {n_init} on its initial archive; "
                         f"raise the budget or lower search.archive_size / preprocess_mult")

    runs = []
    for policy in args.policies:
        for seed in range(args.seeds):
            rng = np.random.default_rng([settings.seed, seed])
            start = time.perf_counter()
            if policy == "random":
                evaluated, taus = run_random(space, evaluate, cost_fn, settings.search, args.budget, rng)
            else:
                cfg = dataclasses.replace(settings.search, algorithm=policy, objectives=OBJECTIVES)
                evaluated, taus = run_search(space, evaluate, cost_fn, cfg, args.budget, rng)
            runs.append({"policy": policy, "seed": seed, "evaluated": evaluated, "taus": taus,
                         "seconds": time.perf_counter() - start})
            print(f"{policy:6s} seed {seed}: {len(evaluated)} evaluations in {runs[-1]['seconds']:.1f}s", flush=True)

    union = np.concatenate([r["evaluated"][list(OBJECTIVES)].to_numpy(float) for r in runs])
    ideal, span = union.min(axis=0), np.ptp(union, axis=0)
    span[span == 0] = 1.0
    ref = np.full(len(OBJECTIVES), 1.0 + HV_MARGIN)
    for r in runs:
        r["hv"] = hypervolume((r["evaluated"][list(OBJECTIVES)].to_numpy(float) - ideal) / span, ref)

    table = pd.DataFrame([{k: r[k] for k in ("policy", "seed", "hv")} for r in runs])
    summary = table.groupby("policy", sort=False)["hv"].agg(["mean", "std", "min", "max", "count"])
    mode = "synthetic" if args.synthetic else f"supernet {args.supernet}"
    print(f"\nfinal hypervolume of (top1_err, params), {args.budget} true evaluations per run, {mode}")
    print(f"(min-max normalised over all runs, reference {1 + HV_MARGIN} per objective; higher is better)")
    print(summary.to_string(float_format=lambda v: f"{v:.4f}"))
    print("\nsurrogate Kendall tau per iteration (mean over seeds): cv / on the measured candidates")
    for policy in args.policies:
        taus = pd.DataFrame([t for r in runs if r["policy"] == policy for t in r["taus"]])
        if taus.empty:
            continue
        per_it = taus.groupby("iteration")[["cv_tau", "tau_candidates"]].mean()
        line = " ".join(f"{i}:{row.cv_tau:.2f}/{row.tau_candidates:.2f}" for i, row in per_it.iterrows())
        print(f"  {policy:6s} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
