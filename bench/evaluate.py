"""Bench: evaluating one subnet (extract + BN recalibration on 2000 + top-1 on 5000 val) on CIFAR-10.

    python bench/evaluate.py [--genomes 10] [--threads 1] [--data ../shared/data/cifar10]

Three ways to do the same work for the same random genomes at 32 px (stem stride 1):
  ours  natv2.evaluate: extract a static net, recalibrate its BN (train-mode forward on 2000
        images, cumulative average), fold BN (and fuse conv + activation on CPU), top-1 on 5000
        val (inference mode, channels_last),
        on batches from prepare_stem_cache: the stem (first conv + first block) is the same in
        every subnet, so its outputs on the 2000 + 5000 images and its recalibrated BN statistics
        are computed once per resolution and each subnet runs only its genome-dependent part.
        That one-off preparation is timed on its own ("prep") and its share (prep / --genomes)
        is included in every ours total below; --no-stem-cache runs whole subnets instead.
  ref   the ``ofa`` package: OFAMobileNetV3 dynamic net, set_active_subnet,
        set_running_statistics on the same 2000 images, eval-mode top-1 on the same 5000
  bare  one inference-mode channels_last forward of the same static subnet over the same 7000
        images (no recalibration): the floor
Both nets hold the same random weights (ours loaded from theirs with natv2.nets.official), so
the two accuracies must agree (they differ only by BN variance bias/unbias, ~1e-3 relative).
bare runs the whole unfolded subnet, so ours (stem cached, BN folded) can be below it.
Data: decoded once with natv2.splits into --cache (reused on later runs), in memory as tensors.
Goal (issue 3): ours >= 3x faster than ref, and <= 1.3x bare.

Timing: the machine is shared, so besides wall time the bench reports the process CPU time
(time.process_time) of each path; with --threads 1 it is the stabler measure of the work done.
"""
from __future__ import annotations

import argparse
import time
import warnings
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


def their_net(n_classes: int, seed: int):
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = OFAMobileNetV3(n_classes=n_classes, width_mult=1.0, ks_list=[3, 5, 7],
                             expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
    net.first_conv.conv.stride = (1, 1)  # stem stride 1 at 32 px, as ours (no weight changes)
    return net


def their_setting(space, genome):
    arch = space.decode(genome)
    ks, es = [], []
    for blocks in arch.stages:
        padded = list(blocks) + [(3, 3)] * (space.max_blocks - len(blocks))
        ks += [k for k, _ in padded]
        es += [e for _, e in padded]
    return {"ks": ks, "e": es, "d": list(arch.depths)}


@torch.inference_mode()
def their_top1(net, batches) -> float:
    net.eval()
    correct = total = 0
    for x, y in batches:
        correct += int((net(x).argmax(1) == y).sum())
        total += len(y)
    return 100.0 * correct / total


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/natv2-bench-cifar10"))
    parser.add_argument("--genomes", type=int, default=10)
    parser.add_argument("--bn-images", type=int, default=2000)
    parser.add_argument("--val-images", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-ref", action="store_true", help="skip the (slow) ofa reference path")
    parser.add_argument("--no-stem-cache", action="store_true", help="ours without prepare_stem_cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from natv2.evaluate import prepare_batches, prepare_stem_cache, recalibrate_on, top1_on
    from natv2.nets import build_supernet
    from natv2.nets.official import load_ofa_state_dict

    data = load_cifar(args.data, args.cache)
    gen = torch.Generator().manual_seed(args.seed)
    bn_set = data.train.subset(args.bn_images, gen)
    val_set = data.val.subset(args.val_images, gen)
    res = 32
    common = dict(resolution=res, mean=data.mean, std=data.std, batch_size=args.batch_size)
    t0 = time.perf_counter()
    bn_cl = prepare_batches(bn_set, **common, channels_last=True)
    val_cl = prepare_batches(val_set, **common, channels_last=True)
    bn_plain = prepare_batches(bn_set, **common, channels_last=False)
    val_plain = prepare_batches(val_set, **common, channels_last=False)
    print(f"data: {len(bn_set)} BN + {len(val_set)} val images at {res} px, prepared in "
          f"{time.perf_counter() - t0:.2f} s (once per resolution); {args.threads} thread(s)")

    theirs = their_net(data.n_classes, args.seed)
    ours = build_supernet({"variant": "ofa_mbv3", "resolutions": [res], "stem_stride": 1}, data.n_classes)
    load_ofa_state_dict(ours, theirs.state_dict(), new_head=False)
    ours.eval()
    space = ours.space
    genomes = space.sample(args.genomes, np.random.default_rng(args.seed), "natv2")

    # ours, once per resolution: the stem's outputs on the BN and val images
    with Clock() as prep_t:
        bn_ours, val_ours = (bn_cl, val_cl) if args.no_stem_cache else prepare_stem_cache(ours.stem, bn_cl, val_cl)
    cached = hasattr(val_ours, "features")
    print(f"ours prep (stem cache, once per resolution): wall {prep_t.wall:.2f} s, cpu {prep_t.cpu:.2f} s, "
          + (f"{(bn_ours.nbytes + val_ours.nbytes) / 2**20:.0f} MB" if cached else "off"))
    n = len(genomes)

    rows, agree = [], []
    for g in genomes:
        # ours: extract + recalibrate + top-1
        with Clock() as ours_t:
            static = ours.extract(g)
            recalibrate_on(static, bn_ours)
            acc_ours = top1_on(static, val_ours)

        # bare: one inference-mode channels_last forward of the same static subnet over 7000 images
        bare = ours.extract(g).eval().to(memory_format=torch.channels_last)
        with torch.inference_mode(), Clock() as bare_t:
            for x, _ in bn_cl + val_cl:
                bare(x)

        # ref: the ofa package's dynamic net + set_running_statistics
        acc_ref = float("nan")
        with Clock() as ref_t:
            if not args.skip_ref:
                from ofa.imagenet_classification.elastic_nn.utils import set_running_statistics

                theirs.set_active_subnet(**their_setting(space, g))
                set_running_statistics(theirs, bn_plain)
                acc_ref = their_top1(theirs, val_plain)
        # ours with its share of the one-off preparation
        ours_wall, ours_cpu = ours_t.wall + prep_t.wall / n, ours_t.cpu + prep_t.cpu / n
        rows.append((ours_wall, ref_t.wall, bare_t.wall, ours_cpu, ref_t.cpu, bare_t.cpu))
        agree.append((acc_ours, acc_ref))
        print(f"{space.to_string(g)}: wall ours {ours_wall:5.2f} ref {ref_t.wall:5.2f} bare {bare_t.wall:5.2f} s | "
              f"cpu ours {ours_cpu:5.2f} ref {ref_t.cpu:5.2f} bare {bare_t.cpu:5.2f} s | "
              f"top-1 ours {acc_ours:5.2f} ref {acc_ref:5.2f}", flush=True)

    cols = np.array(rows)
    if not args.skip_ref:
        diffs = [abs(a - b) for a, b in agree]
        print(f"\ntop-1 ours vs ref: max |difference| {max(diffs):.2f} points, mean {np.mean(diffs):.3f}")
    for name, off, prep in (("wall", 0, prep_t.wall), ("cpu", 3, prep_t.cpu)):
        o, r, b = cols[:, off].sum(), cols[:, off + 1].sum(), cols[:, off + 2].sum()
        print(f"\n{name} time over {n} subnets: ours {o:.1f} s ({o / n:.2f} s/subnet, of which "
              f"{prep / n:.2f} s its share of the {prep:.2f} s prep), ref {r:.1f} s, bare {b:.1f} s")
        print(f"  ref / ours  = {r / o:.2f}x   (goal >= 3)")
        print(f"  ours / bare = {o / b:.2f}x   (goal <= 1.3)")


if __name__ == "__main__":
    main()
