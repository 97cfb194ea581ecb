"""Bench (issue 13): the fair baseline. Train static nets directly, with the workflow's budget.

    python bench/baseline.py --split results/digits/data/split.json --benchmarks benchmarks/digits \
        [--configfile my.yaml] [--nets largest,mid] [--budget-s S] [--out results/digits/baseline.json]

For each net (``largest``: the search space's largest subnet; ``mid``: the median-params genome
of 15 seeded NATv2 samples), built from a freshly initialised supernet of the run's config and
extracted as a static net, train it from scratch on the split's train + val for as many epochs as
fit in the budget (a timed trial epoch, the second of two, sets the count; cosine schedule over them), then report
top-1 on the split's test set, params, MACs and latency. The budget defaults to the summed
Snakemake benchmark times of the whole workflow run (``--benchmarks``), i.e. what natv2 spent to
produce its front; every net gets that whole budget.

NAS is worth running when the front beats or matches this baseline at fewer params. Draw it on
the front: ``natv2 report ... --baseline results/digits/baseline.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import mid_size_genome  # noqa: E402  (bench/train.py)


def train_for(net, data, split_meta: dict, resolution: int, budget_s: float, *, seed: int, lr: float,
              batch_size: int) -> tuple[int, float]:
    """Train ``net`` in place for the epochs that fit ``budget_s``; returns (epochs, seconds)."""
    from natv2.train import TrainConfig, TrainRun, train

    trainval = data.trainval()
    aug = {"pad": int(split_meta.get("pad", 4)), "flip": bool(split_meta.get("flip", True))}
    run = TrainRun(resolution=resolution, mean=data.mean, std=data.std, seed=seed, progress=False, **aug)
    trial = copy.deepcopy(net)
    for _ in range(2):  # time the second epoch: the first one pays oneDNN's first-call setup
        t0 = time.perf_counter()  # (digits: sized from the first, the largest net used 200 of its 343 s)
        train(trial, trainval, TrainConfig(epochs=1, lr=lr, batch_size=batch_size), run)
        epoch_s = time.perf_counter() - t0
    epochs = max(1, int(budget_s // max(epoch_s, 1e-6)))
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=5e-4,
                      warmup_epochs=min(1.0, epochs / 10))
    t0 = time.perf_counter()
    history = train(net, trainval, cfg, run)
    print(f"  {epochs} epochs ({epoch_s:.1f} s each), last loss {history.rows[-1]['loss']:.3f}", flush=True)
    return epochs, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, required=True, help="results/{ds}/data/split.json of the run")
    parser.add_argument("--configfile", type=Path, action="append", default=[],
                        help="the run's extra config files (merged onto config/config.yaml, as snakemake does)")
    parser.add_argument("--benchmarks", type=Path, help="benchmarks/{ds} of the run: its summed times are the budget")
    parser.add_argument("--budget-s", type=float, help="training budget per net in seconds (overrides --benchmarks)")
    parser.add_argument("--dataset", help="the config's dataset key (default: the split folder's parent name)")
    parser.add_argument("--nets", default="largest,mid")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON for natv2 report --baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import pandas as pd
    import yaml

    from natv2.config import load_settings
    from natv2.costs import count_macs, count_params, measure_latency
    from natv2.evaluate import top1
    from natv2.nets import build_supernet
    from natv2.report import benchmark_seconds
    from natv2.splits import load_data

    if args.budget_s is None and args.benchmarks is None:
        parser.error("give --budget-s or --benchmarks")
    budget = args.budget_s if args.budget_s is not None else benchmark_seconds([args.benchmarks])
    overrides: dict = {}
    for path in args.configfile:
        from snakemake.utils import update_config

        update_config(overrides, yaml.safe_load(path.read_text()) or {})
    settings = load_settings(overrides=overrides)
    meta = json.loads(args.split.read_text())
    data = load_data(args.split)
    torch.manual_seed(args.seed)
    ds = args.dataset or args.split.resolve().parent.parent.name
    supernet = build_supernet(settings.supernet_for(ds), data.n_classes)
    space = supernet.space
    resolution = max(space.resolutions)
    genomes = {"largest": space.largest(), "mid": mid_size_genome(supernet, resolution, args.seed)}
    print(f"baseline: {len(data.train) + len(data.val)} train+val images, {len(data.test)} test, "
          f"{resolution} px, budget {budget:.0f} s per net", flush=True)
    runs = []
    for name in args.nets.split(","):
        genome = genomes[name]
        torch.manual_seed(args.seed)
        net = copy.deepcopy(supernet).extract(genome)
        print(f"{name}: {space.to_string(genome)}", flush=True)
        epochs, seconds = train_for(net, data, meta, resolution, budget, seed=args.seed, lr=args.lr,
                                    batch_size=args.batch_size)
        net.eval()
        runs.append({
            "name": f"{name} static", "genome": space.to_string(genome), "params": count_params(net),
            "macs": count_macs(net, resolution), "latency_ms": measure_latency(net, resolution),
            "epochs": epochs, "seconds": round(seconds, 1),
            "test_top1": top1(net, data.test, resolution=resolution, mean=data.mean, std=data.std),
        })
    table = pd.DataFrame(runs)
    with pd.option_context("display.max_colwidth", 40, "display.width", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.out is not None:
        from natv2.io import write_json

        write_json(args.out, {"budget_s": budget, "split": str(args.split), "runs": runs})


if __name__ == "__main__":
    main()
