"""Bench (issue 4, Must show): a quick-config supernet trained by progressive shrinking on a
CIFAR-10 subset for a few CPU-minutes; top-1 on the test split of its largest, smallest and 10
random subnets; training images/s (per phase, and channels_last vs the default format).

    python bench/supernet.py [--train-images 2500] [--full-epochs 4] [--phase-epochs 1] [--threads 1]

About 15-20 minutes on a busy 2-core machine with the defaults.

Variant: EE_D when the OFAv2 variants are registered (natv2.nets.SUPERNETS), else the plain
OFA MobileNetV3 (``ofa_mbv3``); the table says which. Early-exit variants also list the largest
subnet stopped at each earlier exit (``largest-exit{e}``). Every phase that applies runs (full ->
kernel -> [exit1..exit4] -> depth1 -> depth2 -> expand1 -> expand2), with KD from the re-extracted
largest subnet, through the same code as ``natv2 supernet``. Data: decoded once with
natv2.splits into --cache (shared with bench/evaluate.py), in memory as tensors.

Expect the largest subnet well above chance (10 %) and accuracy rising with size.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def load_cifar(data_root: Path, cache: Path):
    from natv2.config import load_settings
    from natv2.splits import load_data, prepare_split

    split = cache / "split.json"
    if not split.is_file():
        settings = load_settings(
            overrides={"datasets": {"cifar10": {"kind": "imagefolder", "root": str(data_root), "val_size": 5000}}}
        )
        print(f"decoding {data_root} into {cache} (once)")
        prepare_split(settings, "cifar10", cache)
    return load_data(split)


def pick_variant(requested: str) -> str:
    from natv2.nets import SUPERNETS

    if requested != "auto":
        return requested
    for name in ("EE_D", "ee_d"):
        if name in SUPERNETS:
            return name
    return "ofa_mbv3"


def probe_subnets(space, n_random: int, rng: np.random.Generator) -> tuple[list[str], list[np.ndarray]]:
    """Largest, smallest, ``n_random`` NATv2 samples and, for early-exit spaces, the largest
    subnet stopped at each earlier exit: (names, genomes)."""
    genomes = [space.largest(), space.smallest()] + list(space.sample(n_random, rng, policy="natv2"))
    names = ["largest", "smallest"] + [f"random{i + 1}" for i in range(n_random)]
    for e in range(space.n_exits - 1, 0, -1):
        g = space.largest().copy()
        g[space.exit_position] = e
        genomes.append(g)
        names.append(f"largest-exit{e}")
    return names, genomes


def channels_last_speed(net, data, settings, *, images: int, seed: int) -> dict[str, float]:
    """Training images/s of the largest subnet at its top resolution, NHWC vs NCHW."""
    from natv2.train import TrainConfig, TrainRun, train

    subset = data.train.subset(images, torch.Generator().manual_seed(seed))
    largest = net.space.largest()
    out = {}
    for fmt in (False, True, False, True):  # interleaved, so a busy spell hits both
        trial = copy.deepcopy(net)
        cfg = TrainConfig(epochs=1, lr=0.01, batch_size=settings.supernet_train.batch_size, channels_last=fmt)
        h = train(trial, subset, cfg, TrainRun(subnet_sampler=lambda rng: largest, mean=data.mean, std=data.std,
                                               seed=seed, progress=False))
        key = "channels_last" if fmt else "contiguous"
        out[key] = max(out.get(key, 0.0), h.rows[-1]["images_per_s"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/natv2-bench-cifar10"))
    parser.add_argument("--variant", default="auto", help="supernet variant (auto = EE_D if registered, else ofa_mbv3)")
    parser.add_argument("--train-images", type=int, default=2500)
    parser.add_argument("--full-epochs", type=int, default=4)
    parser.add_argument("--phase-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--resolutions", default="24,32")
    parser.add_argument("--bn-images", type=int, default=500)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--random", type=int, default=10)
    parser.add_argument("--speed-images", type=int, default=256, help="images per channels_last speed trial (0 = skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is kinder to a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import logging

    from natv2.config import load_settings
    from natv2.evaluate import evaluate_genomes
    from natv2.nets import build_supernet
    from natv2.shrinking import PHASE_NAMES, run_phase

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    variant = pick_variant(args.variant)
    phase_epochs = {name: args.phase_epochs for name in PHASE_NAMES}
    phase_epochs["full"] = args.full_epochs
    settings = load_settings(overrides={
        "seed": args.seed,
        "device": "cpu",
        "supernet": {"variant": variant, "resolutions": [int(r) for r in args.resolutions.split(",")],
                     "stem_stride": 1, **({"n_exits": 5} if variant.upper().startswith("EE") else {})},
        "evaluation": {"bn_images": args.bn_images, "latency": False},
        "supernet_train": {"batch_size": args.batch_size, "teacher_bn_images": args.bn_images,
                           "phases": {n: {"epochs": e} for n, e in phase_epochs.items()}},
    })

    data = load_cifar(args.data, args.cache)
    gen = torch.Generator().manual_seed(args.seed)
    test = data.test.subset(args.test_images, gen)
    data = dataclasses.replace(data, train=data.train.subset(args.train_images, gen), test=test)
    print(f"variant {variant}: {len(data.train)} training images, {len(data.test)} test images, "
          f"resolutions {list(settings.supernet.resolutions)}, {args.threads} threads")

    torch.manual_seed(args.seed)
    net = build_supernet(settings.supernet, data.n_classes)
    phase_rows = []
    t_train = time.perf_counter()
    for name in PHASE_NAMES:
        t0 = time.perf_counter()
        summary = run_phase(net, name, data, settings.supernet_train, device=torch.device("cpu"), seed=args.seed,
                            progress=False)
        if summary["skipped"]:
            continue
        hist = summary["history"]
        phase_rows.append({
            "phase": name,
            "epochs": len(hist),
            "subnets/step": getattr(settings.supernet_train.phases, name).subnets_per_step,
            "loss": hist[-1]["loss"],
            "images/s": float(np.mean([r["images_per_s"] for r in hist])),
            "seconds": time.perf_counter() - t0,
        })
    train_seconds = time.perf_counter() - t_train

    import pandas as pd

    print("\ntraining (images/s = batches per second x batch size; a step trains subnets/step subnets)")
    print(pd.DataFrame(phase_rows).to_string(index=False, float_format=lambda v: f"{v:.3f}" if v < 10 else f"{v:.0f}"))
    print(f"total training time {train_seconds / 60:.1f} min")

    space = net.space
    rng = np.random.default_rng(args.seed)
    names, genomes = probe_subnets(space, args.random, rng)
    table = evaluate_genomes(net, genomes, data, settings.evaluation, split="test", device="cpu", progress=False,
                             seed=args.seed)
    table.insert(0, "subnet", names)
    table = table[["subnet", "genome", "params", "macs", "top1"]].sort_values("params", ascending=False)
    print(f"\ntop-1 on {len(data.test)} CIFAR-10 test images (BN recalibrated on {args.bn_images} training images)")
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    from scipy.stats import spearmanr

    rho = spearmanr(table["params"], table["top1"]).statistic
    print(f"Spearman rank correlation of params and top-1 over the {len(table)} subnets: {rho:.2f}")

    if args.speed_images > 0:
        speed = channels_last_speed(net, data, settings, images=args.speed_images, seed=args.seed)
        print(f"\nlargest subnet at {max(space.resolutions)} px, training images/s: "
              f"contiguous {speed['contiguous']:.0f}, channels_last {speed['channels_last']:.0f} "
              f"({speed['channels_last'] / speed['contiguous']:.2f}x)")


if __name__ == "__main__":
    main()
