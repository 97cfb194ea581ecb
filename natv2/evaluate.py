"""Evaluating subnets: BN recalibration, top-1 accuracy, and whole tables of genomes.

    recalibrate_bn(static, bn_set, resolution=32, mean=m, std=s)     # in place
    acc = top1(static, data.val, resolution=32, mean=m, std=s)       # percent
    table = evaluate_genomes(supernet, genomes, data, settings.evaluation, device=dev)

    # lower level, on prepared batches (what evaluate_genomes does per resolution):
    bn_b, val_b = prepare_stem_cache(supernet.stem, prepare_batches(bn_set, ...), prepare_batches(val, ...))
    recalibrate_on(static, bn_b); acc = top1_on(static, val_b)

NAT re-estimates the BN statistics of every subnet on ~2000 training images before evaluating
it (the supernet's running statistics belong to no subnet in particular). Recalibration resets
the statistics and averages the batch statistics over the images (momentum=None, a cumulative
average). Speed (bench/evaluate.py measures it):

- the data are normalised once per resolution and kept in memory as tensors, channels_last;
- the stem (first conv + first block) is the same in every subnet of a supernet, so
  prepare_stem_cache computes its train-mode outputs on the BN batches, its recalibrated BN
  statistics and its eval-mode outputs on the evaluation batches once per resolution (within a
  memory cap, STEM_CACHE_BYTES, else the whole subnet runs); recalibrate_on / top1_on then run
  only the genome-dependent part, with the same results as the whole subnet (bit for bit);
- recalibration runs in inference mode, stops each pass after the last BN, and normalises each
  conv output in place (the same kernel as nn.BatchNorm2d, bit-identical statistics);
- the accuracy pass folds BN into the convolutions and runs batches in chunks of ~100 images
  at 32 px (EVAL_CHUNK_PIXELS), public ops only (a fused oneDNN conv + activation measured
  0.98x in bench/private_ops.py and was removed);
- the static layers compute squeeze-excite and the head's 1x1 mix on a 1x1 map as matrix
  products, and the skip sum / SE product in place when there is no autograd.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from natv2.errors import Natv2Error
from natv2.nets.layers import ConvBNAct, fold_bn, private_ops_enabled
from natv2.rng import torch_stream

log = logging.getLogger(__name__)

Batches = list[tuple[torch.Tensor, torch.Tensor]]
COLUMNS = ["genome", "resolution", "top1", "top1_err", "params", "macs", "latency_ms"]
COST_COLUMNS = ("params", "macs", "latency_ms")  # the architecture's: what a re-evaluation may reuse


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
    from natv2.splits import batches

    if len(images) == 0:
        raise Natv2Error("evaluation: empty image set")
    out = []
    for x, y in batches(images, batch_size, resolution=resolution, mean=mean, std=std, train=False, device=device):
        out.append((x.contiguous(memory_format=_fmt(channels_last)), y))
    return out


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class _InPlaceBN(nn.Module):
    """Train-mode BN of a ConvBNAct during recalibration, normalising the conv output in place.

    The same kernel as ``nn.BatchNorm2d`` in train mode (aten.native_batch_norm, its out= form
    writing into its input), so the output and the running statistics are bit-identical; it
    saves one activation-sized allocation per layer (the largest maps of a 32 px subnet are
    ~80 MB per 200 images: fresh pages from the OS on every call).
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn
        self._save = (torch.empty(0, device=bn.running_mean.device), torch.empty(0, device=bn.running_mean.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)) or x.requires_grad:
            return bn(x)
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        torch.ops.aten.native_batch_norm.out(
            x, bn.weight, bn.bias, bn.running_mean, bn.running_var, True, factor, bn.eps,
            out=x, save_mean=self._save[0], save_invstd=self._save[1],
        )
        return x


def _in_place_bns(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(ConvBNAct, its BN) pairs whose BN may run in place: a plain BatchNorm2d fed only by the conv.

    CPU only: what it saves is the OS's fresh pages (a GPU's caching allocator has none to save).
    None with ``NATV2_PRIVATE_OPS=0`` (natv2.nets.layers.private_ops_enabled).
    """
    if not private_ops_enabled():
        return []
    return [
        (m, m.bn) for m in model.modules()
        if type(m).forward is ConvBNAct.forward and type(m.bn) is nn.BatchNorm2d and m.bn.track_running_stats
        and m.bn.running_mean.device.type == "cpu"
    ]


def _reset_for_recalibration(bns) -> list:
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average of the batch statistics
    return momenta


def _to_last_bn(model: nn.Module, *, after_stem: bool = False) -> Callable[[torch.Tensor], Any]:
    """The pass BN recalibration runs: the net's ``forward_to_last_bn`` where it has one (the
    rest of the forward cannot change the statistics), else its whole forward."""
    if hasattr(model, "forward_to_last_bn"):
        return partial(model.forward_to_last_bn, after_stem=after_stem)
    if after_stem:
        raise Natv2Error(f"BN recalibration after the stem: {type(model).__name__} has no forward_to_last_bn")
    return model


def _recalibrate(model: nn.Module, inputs: Iterable[torch.Tensor], *,
                 forward: Callable[[torch.Tensor], Any] | None = None, keep: list | None = None) -> None:
    """Train-mode passes of ``forward`` (default ``model``) over ``inputs``, every BN of ``model``
    reset to a cumulative average. ``keep``: collect the outputs."""
    forward = model if forward is None else forward
    bns = _bn_layers(model)
    momenta = _reset_for_recalibration(bns)
    swapped = _in_place_bns(model)
    for owner, bn in swapped:
        owner.bn = _InPlaceBN(bn)
    try:
        seen = 0
        with torch.inference_mode():  # the statistics are buffers updated in place: allowed here
            for x in inputs:
                out = forward(x)
                if keep is not None:
                    keep.append(out)
                seen += 1
        if seen == 0:
            raise Natv2Error("BN recalibration: no batches (empty image set)")
    finally:
        for owner, bn in swapped:
            owner.bn = bn
        for bn, m in zip(bns, momenta):
            bn.momentum = m


# ------------------------------------------------------------------------------------ stem cache

#: default cap on the memory of the cached stem outputs (prepare_stem_cache)
STEM_CACHE_BYTES = 1 << 30


@dataclass
class StemCache:
    """``(x, y)`` batches (``batches``) and the stem's output on every one of them (``features``).

    Made by :func:`prepare_stem_cache`. :func:`recalibrate_on` (``kind="train"``: the stem's
    train-mode outputs and its recalibrated BN statistics ``stem_stats``) and :func:`top1_on`
    (``kind="eval"``: its eval-mode outputs, BN folded if ``fold``) run only the genome-dependent
    part of a subnet (``forward_to_last_bn`` / ``forward_after_stem``) on the cached outputs when
    the subnet's stem is the cached one (equal weights; for ``eval`` also equal BN statistics),
    and the whole subnet on ``batches`` otherwise.
    """

    batches: Batches
    features: list[torch.Tensor]
    kind: str
    reference: dict[str, Any]
    channels_last: bool
    fold: bool = True
    stem_stats: dict[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if len(self.features) != len(self.batches):
            raise ValueError(f"{len(self.features)} stem outputs for {len(self.batches)} batches")

    @property
    def nbytes(self) -> int:
        return sum(f.numel() * f.element_size() for f in self.features)


def _stem_state(stem: nn.Module, stats: bool) -> dict[str, Any]:
    """What a stem's outputs depend on: its layers' settings, weights (and BN statistics)."""
    state: dict[str, Any] = {
        k: v for k, v in stem.state_dict().items()
        if not k.endswith("num_batches_tracked") and (stats or not k.endswith(("running_mean", "running_var")))
    }
    state["_layers"] = [
        (name, type(m).__name__, getattr(m, "stride", None), getattr(m, "padding", None), getattr(m, "groups", None),
         getattr(m, "eps", None))
        for name, m in stem.named_modules()
    ]
    return state


def _same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys() or a["_layers"] != b["_layers"]:
        return False
    return all(
        a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and a[k].device == b[k].device and torch.equal(a[k], b[k])
        for k in a if k != "_layers"
    )


def _frozen(state: dict[str, Any]) -> dict[str, Any]:
    """A copy that later changes to the stem (training) do not reach."""
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _stem_first(model: nn.Module) -> bool:
    """Whether ``model``'s forward starts with ``self.stem(x)`` and uses the stem nowhere else."""
    from natv2.nets.mbv3 import StaticNet, Stem
    from natv2.nets.ofav2 import OFAv2StaticNet

    return type(model) in (StaticNet, OFAv2StaticNet) and isinstance(getattr(model, "stem", None), Stem)


def _plain(batches) -> Batches:
    """The ``(x, y)`` batches of a :class:`StemCache` or of a plain list."""
    return batches.batches if isinstance(batches, StemCache) else batches


def _cache_fits(model: nn.Module, batches, kind: str, *, channels_last: bool, fold: bool = True) -> bool:
    if not isinstance(batches, StemCache) or batches.kind != kind or not _stem_first(model):
        return False
    if batches.channels_last != channels_last or (kind == "eval" and batches.fold != fold):
        return False
    return _same_state(_stem_state(model.stem, stats=kind == "eval"), batches.reference)


@torch.no_grad()
def prepare_stem_cache(
    stem: nn.Module,
    bn_batches: Batches | None,
    eval_batches: Batches | None,
    *,
    fold: bool = True,
    channels_last: bool = True,
    max_bytes: int | None = None,
) -> tuple[Any, Any]:
    """The stem's outputs on the BN and the evaluation batches, computed once for every subnet.

    The stem (first conv + first MBConv block) is the same in every subnet of a supernet, so its
    train-mode outputs on the BN batches, its recalibrated BN statistics, and its eval-mode
    outputs on the evaluation batches (with those statistics, BN folded if ``fold``) are too.
    Returns ``(bn, eval)``: :class:`StemCache` objects that ``recalibrate_on`` / ``top1_on``
    accept in place of the batches (results equal to the plain path's), or the given batches
    unchanged when the cached outputs would take more than ``max_bytes`` (default
    ``STEM_CACHE_BYTES``; 0 disables the cache). Without BN batches the eval outputs use the
    stem's own statistics. ``stem`` itself is not changed.
    """
    max_bytes = STEM_CACHE_BYTES if max_bytes is None else int(max_bytes)
    plain = (bn_batches, eval_batches)
    todo = [b for b in plain if b]
    if not todo or max_bytes <= 0:
        return plain
    work = copy.deepcopy(stem)
    if channels_last:
        work = work.to(memory_format=torch.channels_last)
    probe = work.eval()(todo[0][0][0][:1])
    per_image = probe.numel() * probe.element_size()
    need = per_image * sum(len(x) for b in todo for x, _ in b)
    if need > max_bytes:
        log.info("stem cache: %.0f MB > cap %.0f MB; evaluating whole subnets", need / 2**20, max_bytes / 2**20)
        return plain
    reference = _frozen(_stem_state(stem, stats=False))
    bn_out = bn_batches
    if bn_batches:
        feats: list[torch.Tensor] = []
        work.train()
        _recalibrate(work, (x for x, _ in bn_batches), keep=feats)
        stats = {k: v.clone() for k, v in work.state_dict().items()
                 if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
        bn_out = StemCache(bn_batches, feats, kind="train", reference=reference, channels_last=channels_last,
                           stem_stats=stats)
        reference = {**reference, **{k: v for k, v in stats.items() if not k.endswith("num_batches_tracked")}}
    else:
        reference = _frozen(_stem_state(stem, stats=True))
    eval_out = eval_batches
    if eval_batches:
        net = _inference_net(work, fold, channels_last)  # as top1_on's: bit-identical outputs
        with torch.inference_mode():
            feats = [net(x) for x, _ in eval_batches]
        eval_out = StemCache(eval_batches, feats, kind="eval", reference=reference, channels_last=channels_last,
                             fold=fold)
    return bn_out, eval_out


# ------------------------------------------------------------------------------------ passes


@torch.no_grad()
def recalibrate_on(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], channels_last: bool = True) -> nn.Module:
    """Reset every BN layer's statistics and re-estimate them as the average over ``batches``.

    A supernet (anything with ``extract`` and ``load_bn_stats_from``) is recalibrated through
    its active subnet, so only the active channels' statistics change. ``batches`` from
    :func:`prepare_stem_cache` skip the stem's work when ``model``'s stem is the cached one.
    """
    if hasattr(model, "extract") and hasattr(model, "load_bn_stats_from"):
        static = model.extract()
        recalibrate_on(static, batches, channels_last)
        model.load_bn_stats_from(static)
        return model
    if not _bn_layers(model):
        return model
    was_training = model.training
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        if _cache_fits(model, batches, "train", channels_last=channels_last):
            # the stem's BN statistics are the cached ones; its own BNs see no batch here
            _recalibrate(model, batches.features, forward=_to_last_bn(model, after_stem=True))
            own = model.stem.state_dict()
            for k, v in batches.stem_stats.items():
                own[k].copy_(v)
        else:
            _recalibrate(model, (x for x, _ in _plain(batches)), forward=_to_last_bn(model))
    finally:
        model.train(was_training)
    return model


def _inference_net(model: nn.Module, fold: bool, channels_last: bool) -> nn.Module:
    """``model`` in eval mode; with ``fold`` a copy with BN folded into the convolutions."""
    net = fold_bn(model) if fold else model.eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


#: CPU inference runs batches in chunks of about this many pixels per channel (100 images at
#: 32 x 32): the largest maps then stay below ~40 MB, which the C allocator reuses instead of
#: asking the OS for fresh zeroed pages on every call (measured ~6 % faster than 200 images)
EVAL_CHUNK_PIXELS = 100 * 32 * 32


def _chunks(x: torch.Tensor, y: torch.Tensor):
    if x.device.type != "cpu" or x.dim() != 4:
        return ((x, y),)
    n = max(1, EVAL_CHUNK_PIXELS // (x.shape[-1] * x.shape[-2]))
    return zip(x.split(n), y.split(n)) if len(x) > n else ((x, y),)


@torch.inference_mode()
def top1_on(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, fold: bool = True, channels_last: bool = True) -> float:
    """Top-1 accuracy in percent of ``model`` (eval mode) over ``batches``.

    ``batches`` from :func:`prepare_stem_cache` skip the stem's work when ``model``'s stem is
    the cached one (the same weights and BN statistics).
    """
    was_training = model.training
    cached = _cache_fits(model, batches, "eval", channels_last=channels_last, fold=fold)
    try:
        net = _inference_net(model, fold, channels_last)
        forward = net.forward_after_stem if cached else net
        pairs = zip(batches.features, (y for _, y in batches.batches)) if cached else _plain(batches)
        correct = total = 0
        for x, y in pairs:
            for xs, ys in _chunks(x, y):
                correct += int((forward(xs).argmax(1) == ys).sum())
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


def finite_costs(costs: Mapping[str, float] | None) -> dict[str, float]:
    """The finite entries among ``params``, ``macs`` and ``latency_ms`` of a recorded row."""
    out: dict[str, float] = {}
    for key in COST_COLUMNS:
        value = None if costs is None else costs.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            out[key] = int(value) if key in ("params", "macs") else value
    return out


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
    stem_cache_bytes: int | None = None,
    known_costs: Mapping[str, Mapping[str, float]] | None = None,
):
    """Evaluate every genome (int vector or string form) of ``supernet`` on ``data``'s ``split``.

    Per genome: extract the static subnet, recalibrate its BN on ``cfg.bn_images`` training
    images (the same images for every genome, drawn with ``seed``), top-1 on the split, and its
    costs. ``cfg`` is an EvaluationConfig. Returns a DataFrame with columns
    ``genome, resolution, top1, top1_err, params, macs, latency_ms`` in the order of ``genomes``.

    Genomes are grouped by resolution; per resolution the images are prepared once, and so are
    the stem's outputs on them (:func:`prepare_stem_cache`, up to ``stem_cache_bytes``, default
    ``STEM_CACHE_BYTES``, 0 = off), so each subnet runs only its genome-dependent part.

    ``known_costs``: ``{genome string: {"params", "macs", "latency_ms"}}`` measured before, in
    this run, with this ``cfg``. A subnet's costs depend on its architecture alone, not on the
    supernet's weights, so NAT's re-evaluation of the archive after each adaptation takes a
    genome's finite recorded costs instead of counting and timing it again (the latency
    measurement was ~0.6 s and the MAC count ~0.2 s of a digits subnet's ~1.2 s); a missing or
    NaN cost is measured.
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
    bn_set = data.train.subset(cfg.bn_images, torch_stream(seed, "bn-images")) if cfg.bn_images > 0 else None
    common = dict(mean=data.mean, std=data.std, batch_size=cfg.batch_size, device=device, channels_last=cfg.channels_last)
    # group by resolution so each resolution's tensors are prepared once and only one is held;
    # with several widths (natv2.nets.multiwidth) by width too: each width's supernet has its own stem
    order = sorted(range(len(gs)), key=lambda i: (space.decode(gs[i]).resolution, int(gs[i][1])))
    engines = getattr(supernet, "engines", None)
    rows: dict[int, dict] = {}
    cached_res, cached_width, bn_batches, eval_batches = None, None, None, None
    reused = 0
    t0 = time.perf_counter()
    bar = tqdm(order, desc=f"evaluate {split}", unit="net", disable=not progress)
    for i in bar:
        g = gs[i]
        res = space.decode(g).resolution
        if res != cached_res or (engines is not None and int(g[1]) != cached_width):
            eval_batches = bn_batches = None  # the previous resolution's tensors go first
            eval_batches = prepare_batches(images, resolution=res, **common)
            bn_batches = prepare_batches(bn_set, resolution=res, **common) if bn_set is not None else None
            stem = getattr(engines[int(g[1])] if engines is not None else supernet, "stem", None)
            if isinstance(stem, nn.Module):
                bn_batches, eval_batches = prepare_stem_cache(
                    stem, bn_batches, eval_batches, fold=cfg.fold_bn, channels_last=cfg.channels_last,
                    max_bytes=stem_cache_bytes,
                )
            cached_res, cached_width = res, int(g[1])
        static = supernet.extract(g).to(device)
        if bn_batches is not None:
            recalibrate_on(static, bn_batches, cfg.channels_last)
        acc = top1_on(static, eval_batches, fold=cfg.fold_bn, channels_last=cfg.channels_last)
        name = space.to_string(g)
        known = finite_costs((known_costs or {}).get(name))
        rows[i] = {
            "genome": name,
            "resolution": res,
            "top1": acc,
            "top1_err": 100.0 - acc,
            "params": known["params"] if "params" in known else count_params(static),
            "macs": known["macs"] if "macs" in known else count_macs(static, res),
            "latency_ms": (
                known["latency_ms"] if "latency_ms" in known else
                measure_latency(static, res, batch_size=cfg.latency_batch_size, repeats=cfg.latency_repeats,
                                warmup=cfg.latency_warmup, device=device, channels_last=cfg.channels_last,
                                fold_bn=cfg.fold_bn, min_time=getattr(cfg, "latency_min_time", 0.1),
                                threads=getattr(cfg, "latency_threads", 1))
            ) if cfg.latency else math.nan,
        }
        reused += bool(known)
        bar.set_postfix(top1=f"{acc:.2f}")
    dt = time.perf_counter() - t0
    log.info("evaluated %d subnets on %s in %.1f s (%.2f s/net; known costs taken for %d)", len(gs), split, dt,
             dt / len(gs), reused)
    return pd.DataFrame([rows[i] for i in range(len(gs))], columns=COLUMNS)
