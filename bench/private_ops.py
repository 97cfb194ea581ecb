"""Bench: what the two private torch ops of the evaluation path save, against their public references.

    python bench/private_ops.py [--genomes 5] [--bn-images 2000] [--val-images 5000] [--threads 1] [--repeats 3]

natv2 uses two private ops on the CPU (natv2.nets.layers, natv2.evaluate):
  fused  torch.ops.mkldnn._convolution_pointwise: conv + bias + ReLU/h-swish in one oneDNN call
         (top-1 pass, after BN folding); public reference: nn.Conv2d then the activation
  bn     torch.ops.aten.native_batch_norm.out: the recalibration BN normalises the conv output in
         place; public reference: nn.BatchNorm2d (a new activation-sized tensor per layer)
NATV2_PRIVATE_OPS=0 switches both to the public path; this script runs the same work with the
variable set to 1 and to 0 and prints wall and process CPU seconds per subnet for each phase
(recalibrate_on on --bn-images, top1_on on --val-images), the speed-up, and the largest
difference of the outputs (tests/test_evaluate_fast.py pins that they agree). Random weights and
random uint8 images at 32 px (stem stride 1): the cost does not depend on the data. Keep the
private ops only while both speed-ups stay clearly above 1 on the machines that run searches.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from natv2.evaluate import prepare_batches, recalibrate_on, top1_on
from natv2.nets import build_supernet
from natv2.nets.layers import PRIVATE_OPS_ENV, fold_bn, fuse_conv_act, pointwise_fusion_available
from natv2.splits import ImageSet

RES, MEAN, STD = 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def images(n: int, seed: int) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, RES, RES), generator=g, dtype=torch.uint8),
                    torch.randint(0, 10, (n,), generator=g))


def timed(fn, repeats: int) -> tuple[float, float]:
    """Best wall and process-CPU seconds of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def run(net, genomes, bn_b, val_b, x, repeats: int, private: bool) -> dict:
    os.environ[PRIVATE_OPS_ENV] = "1" if private else "0"
    out = {"recalibrate": np.zeros(2), "top1": np.zeros(2), "logits": []}
    for g in genomes:
        static = net.extract(g)
        out["recalibrate"] += timed(lambda static=static: recalibrate_on(static, bn_b), repeats)
        out["top1"] += timed(lambda static=static: top1_on(static, val_b), repeats)
        fused = fuse_conv_act(fold_bn(static).to(memory_format=torch.channels_last))
        with torch.inference_mode():
            out["logits"].append(fused(x))
    for phase in ("recalibrate", "top1"):
        out[phase] /= len(genomes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genomes", type=int, default=5)
    ap.add_argument("--bn-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", default="ofa_mbv3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_supernet({"variant": args.variant, "resolutions": [RES], "stem_stride": 1}, 10).eval()
    genomes = net.space.sample(args.genomes, np.random.default_rng(0), "natv2")
    bn_b = prepare_batches(images(args.bn_images, 1), resolution=RES, mean=MEAN, std=STD)
    val_b = prepare_batches(images(args.val_images, 2), resolution=RES, mean=MEAN, std=STD)
    x = val_b[0][0][:64]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.variant}, {args.genomes} subnets at {RES} px; "
          f"oneDNN fused conv available: {pointwise_fusion_available()}")
    runs = {private: run(net, genomes, bn_b, val_b, x, args.repeats, private) for private in (False, True)}
    print(f"{'phase':<12} {'public wall s':>14} {'private wall s':>15} {'speed-up':>9} {'public cpu s':>13} {'private cpu s':>14}")
    for phase, what in (("recalibrate", "bn"), ("top1", "fused")):
        pub, priv = runs[False][phase], runs[True][phase]
        print(f"{phase + ' (' + what + ')':<12} {pub[0]:>14.4f} {priv[0]:>15.4f} {pub[0] / priv[0]:>8.2f}x "
              f"{pub[1]:>13.4f} {priv[1]:>14.4f}")
    diff = max(float((a - b).abs().max()) for a, b in zip(runs[False]["logits"], runs[True]["logits"]))
    print(f"largest |private - public| logit difference: {diff:.2e}")


if __name__ == "__main__":
    main()
