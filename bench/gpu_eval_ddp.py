"""Helpers of bench/gpu_check.sh: one-subnet evaluation time, the carried images as an ImageFolder,
and one DDP training step.

    python bench/gpu_eval_ddp.py evaluate [--device cuda] [--resolution 64]
    python bench/gpu_eval_ddp.py imagefolder .gpu/cifar10_u8.pt /tmp/cifar10-gpu
    torchrun --standalone --nproc-per-node 1 bench/gpu_eval_ddp.py ddp
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch


def _supernet(variant: str, resolution: int, classes: int = 10):
    from natv2.config import load_settings
    from natv2.nets import build_supernet

    sup = {"variant": variant, "resolutions": [resolution], "stem_stride": 1}
    if variant.upper().startswith("EE"):
        sup["n_exits"] = 5
    settings = load_settings(overrides={"supernet": sup})
    torch.manual_seed(0)
    return settings, build_supernet(settings.supernet, classes)


def _random_bundle(n_train: int, n_val: int, resolution: int, classes: int = 10):
    from natv2.splits import DataBundle, ImageSet

    g = torch.Generator().manual_seed(0)

    def part(n):
        return ImageSet(torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8, generator=g),
                        torch.randint(0, classes, (n,), generator=g))

    return DataBundle(classes=[str(c) for c in range(classes)], image_size=resolution, mean=(0.5,) * 3,
                      std=(0.25,) * 3, train=part(n_train), val=part(n_val), test=part(16))


def evaluate(args) -> None:
    """Seconds per subnet: extract + BN recalibration on 2000 + top-1 on 5000, at --resolution."""
    from natv2.evaluate import evaluate_genomes

    settings, net = _supernet(args.variant, args.resolution)
    data = _random_bundle(2000, 5000, args.resolution)
    genomes = net.space.sample(4, np.random.default_rng(0), policy="natv2")
    cfg = settings.evaluation
    evaluate_genomes(net, genomes[:1], data, cfg, split="val", device=args.device, progress=False, seed=0)  # warm-up
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    evaluate_genomes(net, genomes[1:], data, cfg, split="val", device=args.device, progress=False, seed=0)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / (len(genomes) - 1)
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else float("nan")
    print(f"evaluate: {per:.2f} s per subnet at {args.resolution} px (BN 2000 + top-1 5000), peak CUDA memory {peak:.0f} MiB")


def imagefolder(args) -> None:
    """Write the carried uint8 tensors as train/<class>/*.png and test/<class>/*.png."""
    from PIL import Image

    from natv2.io import load_torch

    blob = load_torch(args.tensors)
    out = Path(args.out)
    for split in ("train", "test"):
        images, labels = blob[split], blob[f"{split}_labels"]
        for i, (img, label) in enumerate(zip(images, labels)):
            folder = out / split / blob["classes"][int(label)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
        print(f"imagefolder: {split}: {len(images)} images into {out / split}")


def ddp(args) -> None:
    """One epoch of a few DDP steps (nccl on CUDA) through natv2.train under torchrun, WORLD_SIZE >= 1."""
    import torch.distributed as dist

    from natv2.train import TrainConfig, TrainRun, train

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    # natv2.train wraps in DDP only when WORLD_SIZE > 1; on one GPU initialise the group here so the
    # nccl path (init, all-reduce, barrier) is exercised all the same
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    _, net = _supernet(args.variant, args.resolution)
    data = _random_bundle(512, 16, args.resolution)
    import copy

    wrapped = copy.deepcopy(net).to(device)  # DDP hooks stay on the copy, off the net trained below
    model = torch.nn.parallel.DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=128)
    genome = net.space.largest()
    x = torch.randn(8, 3, args.resolution, args.resolution, device=device)
    wrapped.set_active(genome)
    model(x).float().sum().backward()  # one DDP step: gradients all-reduced over the group
    dist.barrier()
    history = train(net, data.train, cfg, TrainRun(subnet_sampler=lambda rng: genome, device=device, seed=0,
                                                     progress=False))
    print(f"ddp: world {dist.get_world_size()}, backend {dist.get_backend()}, "
          f"loss {history.rows[-1]['loss']:.3f}, {history.rows[-1]['images_per_s']:.0f} images/s")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("evaluate", "ddp"):
        p = sub.add_parser(name)
        p.add_argument("--variant", default="EE_D")
        p.add_argument("--resolution", type=int, default=64)
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p = sub.add_parser("imagefolder")
    p.add_argument("tensors")
    p.add_argument("out")
    args = parser.parse_args()
    {"evaluate": evaluate, "imagefolder": imagefolder, "ddp": ddp}[args.cmd](args)


if __name__ == "__main__":
    main()
