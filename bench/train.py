"""Bench (issue 13): supernet training throughput, images/s, for one mid-size subnet.

    python bench/train.py [--variant EE_D] [--resolution 32] [--batch-sizes 64,128] [--threads 2] \
        [--device cpu|cuda] [--images 1024] [--repeats 2]

Trains the supernet with the workflow's engine (``natv2.train.train``, one fixed mid-size subnet
per step, KD off) on random uint8 images (throughput does not depend on what the pixels show)
and prints one row per setting: batch size x memory format (contiguous / channels_last) x mixed
precision (CUDA only). Each setting runs ``--repeats`` one-epoch trials over ``--images`` images,
interleaved so that a busy spell of a shared machine hits every setting, and keeps the best.

The mid-size subnet is the median-params genome of 15 NATv2-policy samples (seeded), at the
given resolution, through the last exit for early-exit variants. Measure on a quiet machine: never while tests or another run share the cores.
"""
from __future__ import annotations

import argparse
import copy
import itertools

import numpy as np
import torch


def mid_size_genome(net, resolution: int, seed: int) -> np.ndarray:
    """The median-params genome of 15 seeded NATv2 samples, with its resolution gene set to ``resolution``."""
    from natv2.costs import count_params

    space = net.space
    rng = np.random.default_rng(seed)
    genomes = space.sample(15, rng, policy="natv2")
    if resolution not in space.resolutions:
        raise SystemExit(f"--resolution {resolution}: the space has {list(space.resolutions)}")
    genomes[:, 0] = list(space.resolutions).index(resolution)
    if space.n_exits:
        genomes[:, space.exit_position] = space.n_exits  # the whole body: an early exit is a different net
    sizes = []
    for g in genomes:
        net.set_active(g)
        sizes.append(count_params(net))
    return genomes[int(np.argsort(sizes)[len(sizes) // 2])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="EE_D")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-sizes", default="64,128")
    parser.add_argument("--images", type=int, default=1024, help="images per one-epoch trial")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import pandas as pd

    from natv2.config import load_settings
    from natv2.nets import build_supernet
    from natv2.splits import ImageSet
    from natv2.train import TrainConfig, TrainRun, train

    device = torch.device(args.device)
    overrides = {"supernet": {"variant": args.variant, "resolutions": [args.resolution], "stem_stride": 1}}
    if args.variant.upper().startswith("EE"):
        overrides["supernet"]["n_exits"] = 5
    settings = load_settings(overrides=overrides)
    torch.manual_seed(args.seed)
    net = build_supernet(settings.supernet, args.classes)
    genome = mid_size_genome(net, args.resolution, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (args.images, 3, args.resolution, args.resolution), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, args.classes, (args.images,), generator=gen)
    data = ImageSet(images, labels)
    print(f"{args.variant}, genome {net.space.to_string(genome)}, {args.resolution} px, {args.images} images per trial, "
          f"{args.threads} threads, {device}")

    amps = (False, True) if device.type == "cuda" else (False,)
    settings_grid = list(itertools.product([int(b) for b in args.batch_sizes.split(",")], (False, True), amps))
    best: dict[tuple, float] = {}
    for _ in range(args.repeats):
        for batch, channels_last, amp in settings_grid:
            trial = copy.deepcopy(net).to(device)
            cfg = TrainConfig(epochs=1, lr=0.01, batch_size=batch, channels_last=channels_last, amp=amp,
                              label_smoothing=0.0)
            history = train(trial, data, cfg, TrainRun(subnet_sampler=lambda rng: genome, device=device,
                                                       seed=args.seed, progress=False))
            key = (batch, channels_last, amp)
            best[key] = max(best.get(key, 0.0), history.rows[-1]["images_per_s"])
    rows = [{"batch": b, "format": "channels_last" if cl else "contiguous", "amp": amp, "images/s": round(v)}
            for (b, cl, amp), v in best.items()]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
