"""Bench: images/s of the augmented training batch pipeline (natv2.splits.batches) on CIFAR-10.

    python bench/data.py [--data ../shared/data/cifar10] [--resolutions 32 64] [--threads 1 2]

Decodes the CIFAR-10 image folder once into --cache with natv2.splits.prepare_split (reused on
later runs; the same split bench/evaluate.py uses), loads it as the steps do (load_data), then
times full training batches of 256 (shuffle, random crop with 4 px zero padding, flip, resize,
normalise) at each resolution and torch thread count. Also prints the one-off decode and the
cache load. Goal (issue 2): >= 20,000 images/s at 32 px on 2 cores, so data is never the
bottleneck of training. Exits cleanly with a message when the CIFAR-10 folder is absent.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GOAL = 20_000


def prepare(data_root: Path, cache: Path) -> Path:
    from natv2.config import load_settings
    from natv2.splits import prepare_split

    split = cache / "split.json"
    if not split.is_file():
        settings = load_settings(
            overrides={"datasets": {"cifar10": {"kind": "imagefolder", "root": str(data_root), "val_size": 5000}}}
        )
        print(f"decoding {data_root} into {cache} (once)")
        t0 = time.perf_counter()
        prepare_split(settings, "cifar10", cache)
        seconds = time.perf_counter() - t0
        print(f"  decode + split + cache write: {seconds:.1f} s ({60_000 / seconds:,.0f} images/s)")
    return split


def time_pipeline(images, *, resolution: int, batch_size: int, n_batches: int, repeats: int, mean, std, device) -> float:
    """Median images/s over ``repeats`` runs of ``n_batches`` training batches."""
    from natv2.splits import batches

    rates = []
    for repeat in range(repeats + 1):
        gen = torch.Generator().manual_seed(repeat)
        t0, seen = time.perf_counter(), 0
        for i, (_x, y) in enumerate(batches(images, batch_size, resolution=resolution, mean=mean, std=std, train=True, generator=gen, device=device)):
            seen += len(y)
            if i + 1 == n_batches:
                break
        if device.type == "cuda":
            torch.cuda.synchronize()
        if repeat:  # the first run warms up allocator and caches
            rates.append(seen / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/natv2-bench-cifar10"))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=100, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if not (args.data / "train").is_dir():
        print(f"bench/data.py: CIFAR-10 folder not found at {args.data} (expected train/<class>/*.jpg); nothing to measure")
        return 0
    from natv2.splits import load_data

    split = prepare(args.data, args.cache)
    t0 = time.perf_counter()
    data = load_data(split)
    print(f"load_data (cache of {len(data.train) + len(data.val) + len(data.test):,} images): {time.perf_counter() - t0:.2f} s")
    device = torch.device(args.device)
    train = data.train.to(device)

    print(f"\naugmented training batches of {args.batch_size} on {device} (median of {args.repeats} x {args.batches} batches)")
    print(f"{'resolution':>10} {'threads':>8} {'images/s':>10}")
    rows = []
    for resolution in args.resolutions:
        for threads in args.threads:
            torch.set_num_threads(threads)
            rate = time_pipeline(train, resolution=resolution, batch_size=args.batch_size, n_batches=args.batches,
                                 repeats=args.repeats, mean=data.mean, std=data.std, device=device)
            rows.append((resolution, threads, rate))
            print(f"{resolution:>10} {threads:>8} {rate:>10,.0f}")
    best32 = max((rate for res, _, rate in rows if res == 32), default=None)
    if best32 is not None:
        verdict = "meets" if best32 >= GOAL else "MISSES"
        print(f"\nat 32 px: {best32:,.0f} images/s, {verdict} the goal of {GOAL:,} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
