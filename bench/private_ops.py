"""Bench: what the private torch op of the evaluation path saves, against its public reference.

    python bench/private_ops.py [--genomes 5] [--bn-images 2000] [--threads 1] [--repeats 3]

natv2 uses one private op on the CPU (natv2.evaluate, switch in natv2.nets.layers):
  bn     torch.ops.aten.native_batch_norm.out: the recalibration BN normalises the conv output in
         place; public reference: nn.BatchNorm2d (a new activation-sized tensor per layer)
NATV2_PRIVATE_OPS=0 switches it to the public path; this script runs the same work with the
variable set to 1 and to 0 and prints wall and process CPU seconds per subnet of
recalibrate_on on --bn-images, the speed-up, and the largest difference of the recalibrated
subnets' outputs (tests/test_evaluate_fast.py pins that they agree). Random weights and random
uint8 images at 32 px (stem stride 1): the cost does not depend on the data. Keep the private
op only while its speed-up stays clearly above 1 on the machines that run searches.

Measured (--genomes 3 --repeats 2, quiet machine, 1 thread): in-place BN 1.37x. oneDNN's fused
conv + activation (torch.ops.mkldnn._convolution_pointwise, on the top-1 pass) measured 0.98x
in the same run and was removed from natv2.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from natv2.evaluate import prepare_batches, recalibrate_on
from natv2.nets import build_supernet
from natv2.nets.layers import PRIVATE_OPS_ENV
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


def run(net, genomes, bn_b, x, repeats: int, private: bool) -> dict:
    os.environ[PRIVATE_OPS_ENV] = "1" if private else "0"
    out = {"recalibrate": np.zeros(2), "logits": []}
    for g in genomes:
        static = net.extract(g)
        out["recalibrate"] += timed(lambda static=static: recalibrate_on(static, bn_b), repeats)
        with torch.inference_mode():
            out["logits"].append(static.eval()(x))
    out["recalibrate"] /= len(genomes)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genomes", type=int, default=5)
    ap.add_argument("--bn-images", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variant", default="ofa_mbv3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_supernet({"variant": args.variant, "resolutions": [RES], "stem_stride": 1}, 10).eval()
    genomes = net.space.sample(args.genomes, np.random.default_rng(0), "natv2")
    bn_b = prepare_batches(images(args.bn_images, 1), resolution=RES, mean=MEAN, std=STD)
    x = prepare_batches(images(64, 2), resolution=RES, mean=MEAN, std=STD)[0][0]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.variant}, {args.genomes} subnets at {RES} px")
    runs = {private: run(net, genomes, bn_b, x, args.repeats, private) for private in (False, True)}
    print(f"{'phase':<12} {'public wall s':>14} {'private wall s':>15} {'speed-up':>9} {'public cpu s':>13} {'private cpu s':>14}")
    pub, priv = runs[False]["recalibrate"], runs[True]["recalibrate"]
    print(f"{'recalibrate (bn)':<12} {pub[0]:>14.4f} {priv[0]:>15.4f} {pub[0] / priv[0]:>8.2f}x "
          f"{pub[1]:>13.4f} {priv[1]:>14.4f}")
    diff = max(float((a - b).abs().max()) for a, b in zip(runs[False]["logits"], runs[True]["logits"]))
    print(f"largest |private - public| logit difference: {diff:.2e}")


if __name__ == "__main__":
    main()
