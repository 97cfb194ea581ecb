"""``natv2 update``: the archive after adding the evaluated candidates (NAT grows, NATv2 survival).

    natv2 update --config C --archive iter2/archive.csv --candidates iter3/eval/candidates.*.csv \\
        --surrogate iter3/surrogate.json --iteration 3 --out iter3/archive_pre.csv --report iter3/update.json

update.json records the surrogate's fit (cv tau / RMSE) and its Kendall tau and RMSE on the
newly measured candidates (predicted by the search step, measured by ``natv2 evaluate``).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("update", help="add evaluated candidates to the archive (NAT grows / NATv2 survival)")
    add_config_argument(p)
    p.add_argument("--archive", required=True, metavar="CSV", help="the archive of the previous iteration")
    p.add_argument("--candidates", required=True, nargs="+", metavar="CSV", help="evaluated candidates (shards)")
    p.add_argument("--surrogate", metavar="JSON", help="surrogate.json of the search step (for the tau on candidates)")
    p.add_argument("--iteration", required=True, type=int, metavar="I")
    p.add_argument("--out", required=True, metavar="CSV", help="the updated archive")
    p.add_argument("--report", metavar="JSON", help="update.json (sizes, surrogate tau on the candidates)")
    p.set_defaults(func=run)


def candidate_tau(evaluated, predicted: dict) -> dict:
    """Kendall tau and RMSE of predicted vs measured top-1 error on the candidates."""
    import numpy as np

    from natv2.surrogate import kendall_tau, rmse

    known = evaluated[evaluated["genome"].isin(predicted)]
    pred = np.array([predicted[g] for g in known["genome"]], dtype=float)
    meas = known["top1_err"].to_numpy(float)
    tau = kendall_tau(pred, meas) if len(known) >= 2 else None
    if tau is not None and not np.isfinite(tau):
        import logging

        logging.getLogger("natv2.update").warning(
            "Kendall tau of the surrogate on the %d candidates is undefined (constant predictions or errors): "
            "recorded as NaN", len(known))
    return {"n": len(known),
            "tau": tau,
            "rmse": rmse(pred, meas) if len(known) else None}


def run_update(archive, evaluated, cfg, rng, *, iteration: int, seed: int, surrogate: dict | None = None):
    """Library form of the step: (new archive, report dict)."""
    from natv2.archive import tag_rows, update_archive

    evaluated = tag_rows(evaluated, supernet=f"iter{iteration}", seed=seed, iteration=iteration)
    new_archive = update_archive(archive, evaluated, cfg, rng)
    report = {"iteration": iteration, "algorithm": cfg.algorithm, "n_before": len(archive),
              "n_candidates": len(evaluated), "n_after": len(new_archive),
              "n_candidates_kept": int(new_archive["genome"].isin(set(evaluated["genome"]) - set(archive["genome"])).sum())}
    if surrogate is not None:
        report["surrogate"] = {k: surrogate.get(k) for k in ("kind", "cv_tau", "cv_rmse", "n_train")}
        report["candidates"] = candidate_tau(evaluated, surrogate.get("predicted", {}))
    return new_archive, report


def run(args: argparse.Namespace) -> int:
    from natv2.archive import check_table, read_archive, read_evaluated, write_archive
    from natv2.config import settings_from_args
    from natv2.io import read_json, write_json
    from natv2.rng import stream

    settings = settings_from_args(args)
    cfg = settings.search
    archive = read_archive(args.archive, cfg.objectives)
    evaluated = check_table(read_evaluated(args.candidates), cfg.objectives, "evaluated candidates")
    surrogate = read_json(args.surrogate) if args.surrogate else None
    new_archive, report = run_update(archive, evaluated, cfg, stream(settings.seed, "update", args.iteration),
                                     iteration=args.iteration, seed=settings.seed, surrogate=surrogate)
    write_archive(args.out, new_archive)
    if args.report:
        write_json(args.report, report)
    return 0
