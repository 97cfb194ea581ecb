"""Evaluating subnets: BN recalibration, top-1 accuracy, and whole tables of genomes.

    recalibrate_bn(static, bn_set, resolution=32, mean=m, std=s)     # in place
    acc = top1(static, data.val, resolution=32, mean=m, std=s)       # percent
    table = evaluate_genomes(supernet, genomes, data, settings.evaluation, device=dev)

NAT re-estimates the BN statistics of every subnet on ~2000 training images before evaluating
it (the supernet's running statistics belong to no subnet in particular). Recalibration resets
the statistics and averages the batch statistics over the images (momentum=None, a cumulative
average). Speed: the data are normalised once per resolution and kept in memory as tensors,
batches are large, the accuracy pass runs in inference mode, channels_last, BN folded into the
convolutions (bench/evaluate.py measures it).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

from natv2.errors import Natv2Error
from natv2.nets.layers import fold_bn

log = logging.getLogger(__name__)

Batches = list[tuple[torch.Tensor, torch.Tensor]]
COLUMNS = ["genome", "resolution", "top1", "top1_err", "params", "macs", "latency_ms"]


def _fmt(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


def prepare_batches(
    images,
    *,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 200,
    device=None,
    channels_last: bool = True,
) -> Batches:
    """``images`` (an ImageSet) as a list of normalised float batches at ``resolution``, in memory."""
    from natv2.data import batches

    if len(images) == 0:
        raise Natv2Error("evaluation: empty image set")
    out = []
    for x, y in batches(images, batch_size, resolution=resolution, mean=mean, std=std, train=False, device=device):
        out.append((x.contiguous(memory_format=_fmt(channels_last)), y))
    return out


class _AllBNDone(Exception):
    """Raised inside a recalibration forward pass once every BN layer has seen the batch."""


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_on(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], channels_last: bool = True) -> nn.Module:
    """Reset every BN layer's statistics and re-estimate them as the average over ``batches``.

    A supernet (anything with ``extract`` and ``load_bn_stats_from``) is recalibrated through
    its active subnet, so only the active channels' statistics change.
    """
    if hasattr(model, "extract") and hasattr(model, "load_bn_stats_from"):
        static = model.extract()
        recalibrate_on(static, batches, channels_last)
        model.load_bn_stats_from(static)
        return model
    bns = _bn_layers(model)
    if not bns:
        return model
    was_training = model.training
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average of the batch statistics
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # stop each forward pass once every BN layer has run: the rest (head mix, classifier) cannot
    # change the statistics
    ran: set[int] = set()

    def _after_bn(module, args, output):
        ran.add(id(module))
        if len(ran) == len(bns):
            raise _AllBNDone

    hooks = [bn.register_forward_hook(_after_bn) for bn in bns]
    try:
        seen = 0
        for x, _ in batches:
            ran.clear()
            try:
                model(x)
            except _AllBNDone:
                pass
            seen += 1
        if seen == 0:
            raise Natv2Error("BN recalibration: no batches (empty image set)")
    finally:
        for h in hooks:
            h.remove()
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return model


@torch.inference_mode()
def top1_on(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, fold: bool = True, channels_last: bool = True) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) over ``batches``."""
    was_training = model.training
    net = fold_bn(model) if fold else model.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    correct = total = 0
    try:
        for x, y in batches:
            correct += int((net(x).argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise Natv2Error("top-1: no images to evaluate")
    return 100.0 * correct / total


def recalibrate_bn(
    model: nn.Module,
    images,
    *,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 200,
    device=None,
    channels_last: bool = True,
) -> nn.Module:
    """Re-estimate ``model``'s BN statistics on the ImageSet ``images`` (in place; returns it)."""
    device = device if device is not None else next(model.parameters()).device
    data = prepare_batches(images, resolution=resolution, mean=mean, std=std, batch_size=batch_size, device=device, channels_last=channels_last)
    return recalibrate_on(model, data, channels_last)


def top1(
    model: nn.Module,
    images,
    *,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 200,
    device=None,
    channels_last: bool = True,
    fold: bool = True,
) -> float:
    """Top-1 accuracy (percent) of ``model`` in eval mode on the ImageSet ``images``."""
    device = device if device is not None else next(model.parameters()).device
    data = prepare_batches(images, resolution=resolution, mean=mean, std=std, batch_size=batch_size, device=device, channels_last=channels_last)
    return top1_on(model, data, fold=fold, channels_last=channels_last)


def evaluate_genomes(
    supernet: nn.Module,
    genomes: Sequence[Any],
    data,
    cfg,
    *,
    split: str = "val",
    device=None,
    progress: bool = True,
    seed: int = 0,
):
    """Evaluate every genome (int vector or string form) of ``supernet`` on ``data``'s ``split``.

    Per genome: extract the static subnet, recalibrate its BN on ``cfg.bn_images`` training
    images (the same images for every genome, drawn with ``seed``), top-1 on the split, and its
    costs. ``cfg`` is an EvaluationConfig. Returns a DataFrame with columns
    ``genome, resolution, top1, top1_err, params, macs, latency_ms`` in the order of ``genomes``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from natv2.costs import count_macs, count_params, measure_latency

    cfg = getattr(cfg, "evaluation", cfg)  # Settings or its EvaluationConfig
    space = supernet.space
    device = torch.device(device) if device is not None else next(supernet.parameters()).device
    gs = [space.from_string(g) if isinstance(g, str) else space.validate(g) for g in genomes]
    if not gs:
        return pd.DataFrame(columns=COLUMNS)
    supernet = supernet.to(device)
    images = data.split(split) if hasattr(data, "split") else getattr(data, split)
    bn_set = data.train.subset(cfg.bn_images, torch.Generator().manual_seed(seed)) if cfg.bn_images > 0 else None
    common = dict(mean=data.mean, std=data.std, batch_size=cfg.batch_size, device=device, channels_last=cfg.channels_last)
    # group by resolution so each resolution's tensors are prepared once and only one is held
    order = sorted(range(len(gs)), key=lambda i: space.decode(gs[i]).resolution)
    rows: dict[int, dict] = {}
    cached_res, bn_batches, eval_batches = None, None, None
    t0 = time.perf_counter()
    bar = tqdm(order, desc=f"evaluate {split}", unit="net", disable=not progress)
    for i in bar:
        g = gs[i]
        res = space.decode(g).resolution
        if res != cached_res:
            eval_batches = prepare_batches(images, resolution=res, **common)
            bn_batches = prepare_batches(bn_set, resolution=res, **common) if bn_set is not None else None
            cached_res = res
        static = supernet.extract(g).to(device)
        if bn_batches is not None:
            recalibrate_on(static, bn_batches, cfg.channels_last)
        acc = top1_on(static, eval_batches, fold=cfg.fold_bn, channels_last=cfg.channels_last)
        rows[i] = {
            "genome": space.to_string(g),
            "resolution": res,
            "top1": acc,
            "top1_err": 100.0 - acc,
            "params": count_params(static),
            "macs": count_macs(static, res),
            "latency_ms": (
                measure_latency(static, res, batch_size=cfg.latency_batch_size, repeats=cfg.latency_repeats,
                                warmup=cfg.latency_warmup, device=device, channels_last=cfg.channels_last,
                                fold_bn=cfg.fold_bn)
                if cfg.latency else math.nan
            ),
        }
        bar.set_postfix(top1=f"{acc:.2f}")
    dt = time.perf_counter() - t0
    log.info("evaluated %d subnets on %s in %.1f s (%.2f s/net)", len(gs), split, dt, dt / len(gs))
    return pd.DataFrame([rows[i] for i in range(len(gs))], columns=COLUMNS)
