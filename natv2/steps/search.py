"""``natv2 search``: fit the surrogate on the archive, search on it, write the K candidates.

    natv2 search --config C --archive iter2/archive.csv --supernet iter2/supernet.pt \\
        --iteration 3 --out iter3/candidates.csv --surrogate-out iter3/surrogate.json

candidates.csv: ``genome, predicted_top1_err, <cost objectives>, source, iteration``.
surrogate.json: the fit's kind, cv tau / RMSE (and every candidate model's for NAT's adaptive
choice) plus the predicted error of every candidate, so ``natv2 update`` can record the
surrogate's tau on them once they are measured.
"""
from __future__ import annotations

import argparse

def register(sub: argparse._SubParsersAction) -> None:
    from natv2.config import add_config_argument

    p = sub.add_parser("search", help="surrogate fit + NSGA search + candidate subset selection")
    add_config_argument(p)
    p.add_argument("--archive", required=True, metavar="CSV", help="the archive of the previous iteration")
    p.add_argument("--supernet", required=True, metavar="PT", help="supernet the costs are computed on (its space)")
    p.add_argument("--iteration", required=True, type=int, metavar="I", help="this iteration (1..N)")
    p.add_argument("--out", required=True, metavar="CSV", help="candidates.csv")
    p.add_argument("--surrogate-out", required=True, metavar="JSON", help="surrogate.json (cv tau, rmse, predictions)")
    p.set_defaults(func=run)


def supernet_costs(settings, supernet_path):
    """(space, cost_fn) for the search: the supernet's space and exact costs of its subnets.

    The same measurements as ``natv2.evaluate.evaluate_genomes`` (natv2.costs on the extracted
    static subnet, latency with the ``evaluation:`` settings on the configured device), so the
    costs the search sees match the archive's; only the objectives of the run are computed.
    """
    from natv2.costs import count_macs, count_params, measure_latency
    from natv2.nets.checkpoint import load_supernet

    net, _ = load_supernet(supernet_path)
    net.eval()
    space = net.space
    cfg = settings.search
    names = [o for o in cfg.objectives if o != "top1_err"]
    names += [c for c in cfg.constraints if c != "top1_err" and c not in names]  # constrained costs too
    device = settings.torch_device()
    table = None
    if "latency_lut" in names:  # predicted from the target device's table: no net built
        from natv2.latency_table import load_table

        table = load_table(cfg.latency_table)
        table.check_space(space)

    def cost_fn(genomes):
        import numpy as np

        out = {name: np.empty(len(genomes)) for name in names}
        if table is not None:
            out["latency_lut"] = table.predict(space, genomes)
        if not set(names) - {"latency_lut"}:
            return out
        for i, g in enumerate(genomes):
            static = net.extract(g)
            resolution = space.decode(g).resolution
            if "params" in out:
                out["params"][i] = count_params(static)
            if "macs" in out:
                out["macs"][i] = count_macs(static, resolution)
            if "latency_ms" in out:
                ev = settings.evaluation
                out["latency_ms"][i] = measure_latency(
                    static.to(device), resolution, **ev.latency_kwargs, device=device,
                    channels_last=ev.channels_last, fold_bn=ev.fold_bn)
        return out

    return space, cost_fn


def run_search(archive, space, cost_fn, cfg, rng, iteration: int):
    """Library form of the step: (candidates DataFrame, surrogate summary dict)."""
    from natv2.archive import check_table, checked_columns, genomes_of
    from natv2.search import search_candidates
    from natv2.surrogate import fit_surrogate

    check_table(archive, checked_columns(cfg), "archive")
    surrogate = fit_surrogate(genomes_of(archive, space), archive["top1_err"].to_numpy(float),
                              cfg.surrogate_kind, rng, folds=cfg.surrogate_folds,
                              pool=tuple(cfg.surrogate_pool), lgbm_params=cfg.lgbm_params)
    candidates = search_candidates(archive, space, surrogate, cost_fn, cfg, rng)
    candidates["iteration"] = iteration
    summary = {"iteration": iteration, "asked": cfg.surrogate_kind, **surrogate.summary(),
               "predicted": dict(zip(candidates["genome"], candidates["predicted_top1_err"].astype(float)))}
    return candidates, summary


def run(args: argparse.Namespace) -> int:
    from natv2.archive import read_archive, write_archive
    from natv2.config import settings_from_args
    from natv2.io import write_json

    from natv2.rng import stream

    settings = settings_from_args(args)
    cfg = settings.search
    archive = read_archive(args.archive, cfg.objectives)
    space, cost_fn = supernet_costs(settings, args.supernet)
    candidates, summary = run_search(archive, space, cost_fn, cfg, stream(settings.seed, "search", args.iteration),
                                     args.iteration)
    write_archive(args.out, candidates)
    write_json(args.surrogate_out, summary)
    return 0
