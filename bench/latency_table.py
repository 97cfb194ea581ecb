"""Bench: latency-table predictions vs measured latency of random subnets (issue 15).

    python bench/latency_table.py --out bench-out/latency.json     # paper-like space, ~1.5 min on 1 thread

Builds the latency table of a search space on this machine (natv2.latency_table, what
`natv2 latency-table` writes), samples --subnets random genomes (uniform genes, so depths,
kernels, expands, exits and resolutions all vary), measures each with natv2.costs.measure_latency
(the archive's ``latency_ms``: BN folded, channels_last, torch.utils.benchmark Timer
median, --threads threads) and compares: Kendall tau of predicted vs measured, and the median
relative error |predicted - measured| / measured. Goal: tau >= 0.9, median relative error <= 15 %.

Default space: config/paper.yaml's supernet (EE_D, stem stride 2, width 1.0) at resolutions
32..64, where subnets differ by several times (the laptop default, 16/32 px, spans less than the
measurement noise). --rounds R (default 2) measures every subnet R times, interleaved: the
repeatability line is the noise ceiling (how well the measurement ranks against itself); the
comparison uses the fastest (least disturbed) of the rounds. --out writes the figures as JSON
and, next to it, the table (<out>.table.json) and the scatter plot (<out>.png: predicted vs
measured, y = x). Timing needs a quiet machine; --clock cpu times in thread CPU time instead
(with --threads 1), which waiting for a busy core does not inflate; --paired measures the table
and the subnets resolution by resolution, so a slow change of the machine's speed (the "table
drift" line: the table's own uniform subnets measured again) matters less.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def scatter(path: Path, predicted, measured, title: str) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(measured, predicted, s=14)
    lo, hi = min(predicted.min(), measured.min()) * 0.9, max(predicted.max(), measured.max()) * 1.1
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xscale="log", yscale="log", xlabel="measured latency_ms",
           ylabel="table prediction (ms)")  # log: the subnets span about 10x
    ax.set_title(title, fontsize=9)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", metavar="YAML", help="config file(s) (default config/paper.yaml)")
    parser.add_argument("--variant", help="supernet variant instead of the config's (e.g. ofa_mbv3)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 40, 48, 56, 64],
                        help="resolutions of the space (default 32 40 48 56 64; 0 = the config's)")
    parser.add_argument("--widths", type=float, nargs="+", default=[1.0], help="widths (default 1.0)")
    parser.add_argument("--subnets", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=10, help="timed blocks at least (evaluation.latency_repeats)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes (evaluation.latency_warmup)")
    parser.add_argument("--min-time", type=float, default=0.1, help="seconds of timed blocks at least (evaluation.latency_min_time)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time (default) or thread CPU time (steadier on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--paired", action="store_true",
                        help="table and subnets resolution by resolution (a busy machine's drift matters less)")
    parser.add_argument("--out", type=Path, help="figures (JSON); <out>.table.json and <out>.png next to it")
    args = parser.parse_args()

    import dataclasses

    from natv2.config import load_settings
    from natv2.costs import measure_latency
    from natv2.io import write_json
    from natv2.latency_table import measure_table
    from natv2.nets import build_supernet
    from natv2.space import Arch
    from natv2.surrogate import kendall_tau

    torch.set_num_threads(args.threads)
    settings = load_settings(args.config or [REPO / "config" / "paper.yaml"])
    cfg = settings.supernet
    if args.resolutions != [0]:
        cfg = dataclasses.replace(cfg, resolutions=tuple(args.resolutions))
    cfg = dataclasses.replace(cfg, widths=tuple(args.widths))
    if args.variant:
        cfg = dataclasses.replace(cfg, variant=args.variant)
    ev = settings.evaluation
    torch.manual_seed(args.seed)
    supernet = build_supernet(cfg, 10).eval()
    space = supernet.space
    clock = time.thread_time if args.clock == "cpu" else None
    timing = dict(batch_size=ev.latency_batch_size, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                  threads=args.threads, clock=clock)
    genomes = space.sample(args.subnets, np.random.default_rng(args.seed), policy="nat")
    res_of = np.array([space.decode(g).resolution for g in genomes])
    # --paired: the table of one resolution, then that resolution's subnets, and so on (what a slow
    # change of the machine's speed does to the figures shrinks to one resolution's minutes)
    phases = [(r,) for r in space.resolutions] if args.paired else [tuple(space.resolutions)]
    entries, table_s, subnets_s = {}, 0.0, 0.0
    rounds = np.empty((args.rounds, len(genomes)))
    ratios = []  # controls: predicted / measured
    for phase in phases:
        t0 = time.perf_counter()
        torch.manual_seed(args.seed)
        part = measure_table(build_supernet(dataclasses.replace(cfg, resolutions=phase), 10),
                             channels_last=ev.channels_last, fold=ev.fold_bn, **timing)
        entries.update(part.entries)
        table_s += time.perf_counter() - t0
        # controls: uniform subnets the table was made from (their prediction is their measurement
        # of then): measured again among the random ones, they show how far the machine drifted since
        controls = [space.encode(Arch(resolution=r, width=space.widths[0], exit=space.n_exits or None,
                                      branches=None if not space.branch_keys else
                                      tuple((space.branch_keys[-1],) * space.max_blocks for _ in range(space.n_stages)),
                                      stages=tuple(((k, e),) * space.max_blocks for _ in range(space.n_stages))))
                    for r in sorted({min(phase), max(phase)})
                    for k, e in ((space.kernels[0], space.expands[0]), (space.kernels[-1], space.expands[-1]))]
        idx = np.flatnonzero(np.isin(res_of, phase))
        everything = [genomes[i] for i in idx] + controls
        statics = [supernet.extract(g) for g in everything]
        t0 = time.perf_counter()
        measured_here = np.empty((args.rounds, len(everything)))
        for r in range(args.rounds):
            for i, (g, static) in enumerate(zip(everything, statics)):  # exactly the archive's latency_ms
                measured_here[r, i] = measure_latency(static, space.decode(g).resolution,
                                                      channels_last=ev.channels_last, fold_bn=ev.fold_bn, **timing)
        subnets_s += time.perf_counter() - t0
        rounds[:, idx] = measured_here[:, : len(idx)]
        ratios += list(part.predict(space, controls) / measured_here[:, len(idx):].min(axis=0))
    table = type(part)(entries, part.device, {**part.space, "resolutions": list(space.resolutions)}, part.settings)
    predicted = table.predict(space, genomes)
    drift = float(np.median(ratios))
    measured = rounds.min(axis=0)
    rel = np.abs(predicted - measured) / measured
    signed = (predicted - measured) / measured
    figures = {
        "device": table.device, "clock": args.clock, "variant": cfg.variant, "stem_stride": cfg.stem_stride, "paired": args.paired,
        "resolutions": list(space.resolutions), "widths": list(space.widths), "subnets": len(genomes),
        "table_entries": len(table.entries), "table_seconds": round(table_s, 1), "subnets_seconds": round(subnets_s, 1),
        "measured_ms": [round(float(measured.min()), 3), round(float(measured.max()), 3)],
        "predicted_ms": [round(float(predicted.min()), 3), round(float(predicted.max()), 3)],
        "kendall_tau": round(float(kendall_tau(predicted, measured)), 3),
        "median_relative_error": round(float(np.median(rel)), 4),
        "median_signed_error": round(float(np.median(signed)), 4),
        "table_drift": round(drift, 3),
        "overheads_ms": {k: round(v, 3) for k, v in table.entries.items() if k.startswith("overhead/")},
    }
    if args.rounds > 1:
        figures["repeatability_tau"] = round(float(kendall_tau(rounds[0], rounds[1])), 3)
        figures["repeatability_median_relative_difference"] = round(
            float(np.median(np.abs(rounds[0] - rounds[1]) / rounds[1])), 4)
    print(f"device: {table.device['cpu']} ({table.device['threads']} threads), torch {table.device['torch']}, "
          f"clock {args.clock}")
    print(f"space: {cfg.variant}, stem stride {cfg.stem_stride}, resolutions {list(space.resolutions)}, "
          f"widths {list(space.widths)}; table: {len(table.entries)} entries in {table_s:.0f} s; "
          f"subnets x rounds in {subnets_s:.0f} s")
    print(f"subnets: {len(genomes)}, measured {measured.min():.2f}..{measured.max():.2f} ms "
          f"({measured.max() / measured.min():.1f}x), predicted {predicted.min():.2f}..{predicted.max():.2f} ms")
    if args.rounds > 1:
        print(f"repeatability: kendall_tau {figures['repeatability_tau']:.3f} between rounds 1 and 2, median relative "
              f"difference {100 * figures['repeatability_median_relative_difference']:.1f} %")
    print(f"table drift: the uniform subnets the table was made from, measured again now: predicted / measured "
          f"{drift:.2f} (median of {len(ratios)}; far from 1 = the machine changed speed, figures not comparable)")
    print(f"kendall_tau: {figures['kendall_tau']:.3f}  (goal >= 0.9)")
    print(f"median_relative_error: {100 * figures['median_relative_error']:.1f} %  (goal <= 15 %); "
          f"median signed error {100 * figures['median_signed_error']:+.1f} %")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out.with_suffix(".table.json"), table.to_dict())
        png = args.out.with_suffix(".png")
        scatter(png, predicted, measured, f"{cfg.variant} r{min(space.resolutions)}-{max(space.resolutions)}: "
                f"tau {figures['kendall_tau']:.2f}, med. err {100 * figures['median_relative_error']:.1f} %")
        figures["points"] = {"genomes": [space.to_string(g) for g in genomes], "predicted": predicted.round(4).tolist(),
                             "measured": rounds.round(4).tolist()}
        args.out.write_text(json.dumps(figures, indent=1) + "\n")
        print(f"wrote {args.out}, {args.out.with_suffix('.table.json')}, {png}")


if __name__ == "__main__":
    main()
