"""Bench (issue 11, "Paper claim (c)"): an EE_D supernet and the plain OFA MobileNetV3 one
(``ofa_mbv3``) trained by progressive shrinking with the same CPU budget on a CIFAR-10 subset;
both fronts (test top-1 vs params) side by side.

    python bench/claim_c.py [--out DIR] [--budget-min 30] [--train-images 2500] [--test-images 2000] [--threads 1]

Same CPU budget: each variant's throughput is calibrated first (CPU seconds per image of one
epoch of its largest subnet, ``time.process_time``, so other processes on a busy machine do not
count); the budget is then split into epochs — half for the ``full`` phase, the other half shared
equally by the later phases that apply to the variant (EE_D also has the exit phase) — each
phase at least one epoch. The CPU seconds each variant really used are printed next to its
front. Every phase runs through the same code as ``natv2 supernet`` (natv2.shrinking), KD from
the re-extracted largest subnet. Data: CIFAR-10 decoded once into --cache (bench/supernet.py's).

Subnets evaluated per variant: largest, smallest, ``--random`` NATv2-sampled genomes (for
EE_D every exit of the largest subnet too), BN recalibrated; the front is their non-dominated
set on (test top-1 up, params down).

Smoke test (a few minutes): a small ImageFolder copy, ``--data DIR --cache DIR2 --val-size 100
--budget-min 0.2 --train-images 200 --test-images 100 --random 2 --bn-images 100``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from supernet import probe_subnets  # noqa: E402  (bench/supernet.py)

REPO = Path(__file__).resolve().parents[1]

VARIANTS = ("EE_D", "ofa_mbv3")


def load_cifar(data_root: Path, cache: Path, val_size: int):
    """The CIFAR-10 ImageFolder decoded once into ``cache`` (as bench/supernet.py, same cache)."""
    from natv2.config import load_settings
    from natv2.splits import load_data, prepare_split

    split = cache / "split.json"
    if not split.is_file():
        settings = load_settings(
            overrides={"datasets": {"cifar10": {"kind": "imagefolder", "root": str(data_root), "val_size": val_size}}}
        )
        print(f"decoding {data_root} into {cache} (once)")
        prepare_split(settings, "cifar10", cache)
    return load_data(split)


def settings_for(variant: str, args):
    from natv2.config import load_settings

    return load_settings(overrides={
        "seed": args.seed,
        "device": "cpu",
        "supernet": {"variant": variant, "resolutions": [int(r) for r in args.resolutions.split(",")],
                     "stem_stride": 1},
        "evaluation": {"bn_images": args.bn_images, "latency": False},
        "supernet_train": {"batch_size": args.batch_size, "teacher_bn_images": args.bn_images},
    })


def cpu_seconds_per_image(net, data, settings, *, images: int, seed: int) -> float:
    """CPU seconds per training image of the largest subnet (one epoch on ``images`` images)."""
    import copy

    from natv2.train import TrainConfig, TrainRun, train

    subset = data.train.subset(min(images, len(data.train)), torch.Generator().manual_seed(seed))
    largest = net.space.largest()
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=min(settings.supernet_train.batch_size, len(subset)))
    t0 = time.process_time()
    train(copy.deepcopy(net), subset, cfg, TrainRun(subnet_sampler=lambda rng: largest, mean=data.mean,
                                                    std=data.std, seed=seed, progress=False))
    return (time.process_time() - t0) / len(subset)


def phase_epochs(net, settings, budget_s: float, per_image_s: float, n_images: int) -> dict[str, int]:
    """Epochs per applicable phase that spend about ``budget_s`` CPU seconds (each >= 1)."""
    from natv2.shrinking import PHASES, phase_applies

    applicable = [p for p in PHASES if phase_applies(p, net.space)]
    later = [p for p in applicable if p.name != "full"]
    epochs = {}
    for p in applicable:
        share = 0.5 if p.name == "full" else 0.5 / max(len(later), 1)
        if not later:
            share = 1.0
        per_epoch = per_image_s * n_images * getattr(settings.supernet_train.phases, p.name).subnets_per_step
        epochs[p.name] = max(1, int(share * budget_s / max(per_epoch, 1e-9)))
    return epochs


def front_of(table):
    """Rows of ``table`` that no other row dominates on (top1 up, params down), by params."""
    from natv2.survival import non_dominated

    F = np.column_stack([-table["top1"].to_numpy(float), table["params"].to_numpy(float)])
    return table[non_dominated(F)].sort_values("params")


def run_variant(variant: str, data, args) -> tuple:
    from natv2.evaluate import evaluate_genomes
    from natv2.nets import build_supernet
    from natv2.shrinking import PHASE_NAMES, run_phase

    settings = settings_for(variant, args)
    torch.manual_seed(args.seed)
    net = build_supernet(settings.supernet, data.n_classes)
    per_image = cpu_seconds_per_image(net, data, settings, images=args.calib_images, seed=args.seed)
    epochs = phase_epochs(net, settings, args.budget_min * 60, per_image, len(data.train))
    settings = dataclasses.replace(settings, supernet_train=dataclasses.replace(
        settings.supernet_train, phases=dataclasses.replace(
            settings.supernet_train.phases,
            **{n: dataclasses.replace(getattr(settings.supernet_train.phases, n), epochs=epochs.get(n, 0))
               for n in PHASE_NAMES})))
    print(f"{variant}: {per_image * 1e3:.2f} CPU ms per training image (largest subnet); epochs per phase {epochs}",
          flush=True)
    t0 = time.process_time()
    for name in PHASE_NAMES:
        run_phase(net, name, data, settings.supernet_train, device=torch.device("cpu"), seed=args.seed, progress=False)
    cpu_s = time.process_time() - t0

    space = net.space
    rng = np.random.default_rng(args.seed)
    names, genomes = probe_subnets(space, args.random, rng)  # bench/supernet.py's probe set
    table = evaluate_genomes(net, genomes, data, settings.evaluation, split="test", device="cpu", progress=False,
                             seed=args.seed)
    table.insert(0, "subnet", names)
    return table[["subnet", "params", "top1"]], cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/natv2-bench-cifar10"))
    parser.add_argument("--budget-min", type=float, default=30.0, help="CPU minutes of training per variant")
    parser.add_argument("--train-images", type=int, default=2500)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--val-size", type=int, default=5000, help="validation images held out when decoding")
    parser.add_argument("--calib-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--resolutions", default="24,32")
    parser.add_argument("--bn-images", type=int, default=500)
    parser.add_argument("--random", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for subnets.csv and fronts.png (both variants' subnets and fronts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import logging

    import pandas as pd


    logging.basicConfig(level=logging.WARNING)
    data = load_cifar(args.data, args.cache, args.val_size)
    gen = torch.Generator().manual_seed(args.seed)
    test = data.test.subset(args.test_images, gen)
    data = dataclasses.replace(data, train=data.train.subset(args.train_images, gen), test=test)
    print(f"CIFAR-10 subset: {len(data.train)} training, {len(data.test)} test images; "
          f"budget {args.budget_min:g} CPU min per variant, {args.threads} thread(s)", flush=True)

    fronts, used, tables = {}, {}, {}
    for variant in VARIANTS:
        table, cpu_s = run_variant(variant, data, args)
        used[variant] = cpu_s
        tables[variant] = table
        print(f"\n{variant}: every evaluated subnet ({cpu_s / 60:.1f} CPU min of training)")
        print(table.sort_values("params").to_string(index=False, float_format=lambda v: f"{v:.2f}"), flush=True)
        fronts[variant] = front_of(table)

    print("\nfronts (test top-1 % vs params), side by side")
    # as text, so a shorter front's empty rows do not turn the other's integer params into floats
    side = pd.concat({v: pd.DataFrame({"params": f["params"].map(lambda p: f"{int(p)}"),
                                       "top1": f["top1"].map(lambda t: f"{t:.2f}"),
                                       "subnet": f["subnet"]}).reset_index(drop=True)
                      for v, f in fronts.items()}, axis=1)
    print(side.fillna("").to_string(index=False))
    for v, f in fronts.items():
        print(f"{v}: best top-1 {f['top1'].max():.2f} % at {int(f.loc[f['top1'].idxmax(), 'params'])} params; "
              f"training {used[v] / 60:.1f} CPU min")
    if args.out is not None:
        write_outputs(args.out, tables, fronts, used)


def write_outputs(out: Path, tables: dict, fronts: dict, used: dict) -> None:
    """``subnets.csv`` (every evaluated subnet of both variants) and ``fronts.png`` (the fronts, step lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    pd.concat({v: t for v, t in tables.items()}, names=["variant", "row"]).reset_index(level=0).to_csv(
        out / "subnets.csv", index=False, float_format="%.4f")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for (variant, table), colour in zip(tables.items(), ("tab:blue", "tab:orange")):
        ax.plot(table["params"] / 1e6, table["top1"], "o", color=colour, alpha=0.35, markersize=4)
        front = fronts[variant]
        ax.plot(front["params"] / 1e6, front["top1"], "o-", drawstyle="steps-post", color=colour,
                label=f"{variant} front ({used[variant] / 60:.1f} CPU min of training)")
    ax.set_xscale("log")  # the EE_D front sits far left of the plain one
    ax.set_xlabel("parameters (M, log scale)")
    ax.set_ylabel("CIFAR-10 test top-1 (%)")
    ax.set_title("Paper claim (c): EE_D vs ofa_mbv3, same CPU budget")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)  # clear of both fronts
    fig.tight_layout()
    fig.savefig(out / "fronts.png")
    plt.close(fig)
    print(f"wrote {out / 'subnets.csv'} and {out / 'fronts.png'}")


if __name__ == "__main__":
    main()
