"""Bench: latency-table predictions vs measured latency of random subnets (issue 15).

    python bench/latency_table.py [--subnets 50] [--threads 1] [--config config/config.yaml ...]

Builds the latency table of the config's search space on this machine (natv2.latency_table,
what `natv2 latency-table` writes), samples --subnets random genomes (uniform genes, so depths,
kernels, expands and resolutions all vary), measures each with natv2.costs.measure_latency (the
``latency_ms`` of the archive: BN folded, channels_last, median of --repeats passes) and
compares: Kendall tau of predicted vs measured, and the median relative error
|predicted - measured| / measured. Goal: tau >= 0.9, median relative error <= 15 %.

Timing needs a quiet machine: on a shared one the load changes between the table and the
subnets, so figures from there are indicative only. --rounds R measures every subnet R times,
interleaved, and keeps the fastest (the least disturbed) median; --clock cpu times both the
table and the subnets in thread CPU time (with --threads 1), which waiting for a busy core does
not inflate.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="YAML", help="config file(s) (default config/config.yaml)")
    parser.add_argument("--variant", help="supernet variant instead of the config's (e.g. EE_D)")
    parser.add_argument("--subnets", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default) or thread CPU time (steadier on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", type=Path, help="also write the table here")
    args = parser.parse_args()

    import dataclasses

    from natv2.config import load_settings
    from natv2.costs import measure_latency
    from natv2.io import write_json
    from natv2.latency_table import _prepare, _time_ms, measure_table
    from natv2.nets import build_supernet
    from natv2.steps.latency_table import table_supernet_config
    from natv2.surrogate import kendall_tau

    torch.set_num_threads(args.threads)
    settings = load_settings(args.config or [REPO / "config" / "config.yaml"])
    cfg = table_supernet_config(settings)
    if args.variant:
        cfg = dataclasses.replace(cfg, variant=args.variant)
    ev = settings.evaluation
    torch.manual_seed(args.seed)
    supernet = build_supernet(cfg, 10).eval()
    space = supernet.space
    t0 = time.perf_counter()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    table = measure_table(supernet, batch_size=ev.latency_batch_size, repeats=args.repeats, warmup=args.warmup,
                          channels_last=ev.channels_last, fold=ev.fold_bn, clock=clock)
    table_s = time.perf_counter() - t0
    if args.table:
        write_json(args.table, table.to_dict())
    genomes = space.sample(args.subnets, np.random.default_rng(args.seed), policy="nat")
    predicted = table.predict(space, genomes)
    statics = [supernet.extract(g) for g in genomes]
    rounds = np.empty((args.rounds, len(genomes)))
    for r in range(args.rounds):
        for i, (g, static) in enumerate(zip(genomes, statics)):
            res = space.decode(g).resolution
            if args.clock == "wall":  # exactly the archive's latency_ms
                rounds[r, i] = measure_latency(static, res, batch_size=ev.latency_batch_size, repeats=args.repeats,
                                               warmup=args.warmup, channels_last=ev.channels_last, fold_bn=ev.fold_bn)
            else:  # the same measurement on the CPU clock
                net, fmt = _prepare(static, torch.device("cpu"), ev.channels_last, ev.fold_bn)
                x = torch.randn(ev.latency_batch_size, 3, res, res).contiguous(memory_format=fmt)
                rounds[r, i] = _time_ms(net, x, repeats=args.repeats, warmup=args.warmup, device=torch.device("cpu"),
                                        clock=clock)
    measured = rounds.min(axis=0)
    rel = np.abs(predicted - measured) / measured
    print(f"device: {table.device['cpu']} ({table.device['threads']} threads), torch {table.device['torch']}, "
          f"clock {args.clock}")
    print(f"space: {cfg.variant}, resolutions {list(space.resolutions)}, widths {list(space.widths)}; "
          f"table: {len(table.entries)} entries in {table_s:.0f} s")
    print(f"subnets: {len(genomes)}, measured {measured.min():.2f}..{measured.max():.2f} ms, "
          f"predicted {predicted.min():.2f}..{predicted.max():.2f} ms")
    print(f"kendall_tau: {kendall_tau(predicted, measured):.3f}  (goal >= 0.9)")
    print(f"median_relative_error: {100 * np.median(rel):.1f} %  (goal <= 15 %)")
    if args.rounds > 1:  # the noise ceiling: how well the measurement ranks against itself
        print(f"repeatability: kendall_tau {kendall_tau(rounds[0], rounds[1]):.3f} between rounds 1 and 2, "
              f"median relative difference {100 * np.median(np.abs(rounds[0] - rounds[1]) / rounds[1]):.1f} %")


if __name__ == "__main__":
    main()
