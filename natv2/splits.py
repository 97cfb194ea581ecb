"""Images as every step sees them: one split written once, a uint8 tensor cache, and batches.

The split step decodes a dataset once (sources in :mod:`natv2.sources`) and writes

    results/{ds}/data/split.json   classes, image_size, train mean/std, pad/flip, seed, counts, indices
    results/{ds}/data/images.pt    {"images": uint8 N x 3 x S x S, "labels": int64 N}

    natv2 split --config config/config.yaml --dataset digits --out results/digits/data

Later steps only load them (:func:`load_data`, ``weights_only=True``) and draw batches, so the
search, the fine-tuning and the test evaluation all see the same images::

    data = load_data("results/digits/data/split.json", device)
    g = torch.Generator().manual_seed(0)
    for x, y in batches(data.train, 256, resolution=40, mean=data.mean, std=data.std,
                        train=True, generator=g):
        ...

Training batches are augmented on tensors on the training device, vectorised over the batch
(random crop with zero padding, horizontal flip), resized to the subnet's resolution and
normalised; evaluation batches are only resized and normalised.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from natv2.config import DatasetConfig, Settings
from natv2.errors import Natv2Error
from natv2.io import atomic_path, fill, load_torch, read_json, torch_bytes
from natv2.rng import stream

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
CACHE_FILE = "images.pt"
SPLIT_FORMAT = 1
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# image sets


@dataclass(frozen=True)
class ImageSet:
    """Images and labels of one split: uint8 ``N x 3 x S x S`` and int64 ``N``, on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"ImageSet.images: expected uint8 N x 3 x S x S, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"ImageSet.labels: expected int64 of length {len(self.images)}, got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device) -> ImageSet:
        return ImageSet(self.images.to(device), self.labels.to(device))

    def select(self, index: torch.Tensor) -> ImageSet:
        index = index.to(self.device)
        return ImageSet(self.images.index_select(0, index), self.labels.index_select(0, index))

    def subset(self, n: int, generator: torch.Generator) -> ImageSet:
        """``n`` images drawn at random without replacement (all of them when ``n >= len``), in random order.

        A uniform draw: class shares match the set's up to sampling noise, which is what BN
        recalibration on ~2000 images needs. The order stays random because recalibration
        averages per-batch statistics: an ImageFolder split is stored class by class, and
        sorted indices made every BN batch hold one or two classes (CIFAR-10, 2000 images in
        4 batches: subnets 1-1.5 points worse than with the same images in one batch).
        """
        return self.select(torch.randperm(len(self), generator=generator)[:n])


@dataclass(frozen=True)
class DataBundle:
    """A dataset's train / val / test sets and the facts every step needs about them."""

    classes: list[str]
    image_size: int
    mean: tuple[float, float, float]  # of the train split, per RGB channel, in [0, 1] units
    std: tuple[float, float, float]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    # the dataset's training augmentation (datasets.<key>.pad / flip), recorded in split.json
    pad: int = 4
    flip: bool = True

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> ImageSet:
        """The set called ``name`` (train, val, test or trainval)."""
        if name == "trainval":
            return self.trainval()
        if name not in SPLITS:
            raise Natv2Error(f"split {name!r}: expected one of train, val, test, trainval")
        return getattr(self, name)

    def trainval(self, val: ImageSet | None = None) -> ImageSet:
        """Train and val (or the part ``val`` of it) together: what the final fine-tuning trains on."""
        val = self.val if val is None else val
        return ImageSet(torch.cat([self.train.images, val.images]), torch.cat([self.train.labels, val.labels]))

    def holdout(self, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
        """Val cut in two, stratified and fixed by ``seed``: ``(fit, select)``.

        ``select`` (``fraction`` of val) is kept out of the fine-tuning's step 2, so ensembles
        can be chosen, and compared with the single nets, on images no member trained on.
        """
        if not 0.0 < fraction < 1.0:
            raise Natv2Error(f"config key finetune.selection_holdout: {fraction} is not a fraction strictly between 0 and 1")
        labels = self.val.labels.cpu().numpy()
        n_select = int(round(fraction * len(labels)))
        try:
            select, fit = stratified_take(labels, n_select, stream(seed, "holdout"))
        except ValueError as err:
            raise Natv2Error(f"finetune.selection_holdout={fraction}: val split: {err}") from None
        if len(select) == 0:
            raise Natv2Error(f"finetune.selection_holdout={fraction}: holds out no image of the {len(labels)} in val")
        return self.val.select(torch.from_numpy(fit)), self.val.select(torch.from_numpy(select))

    def to(self, device) -> DataBundle:
        return DataBundle(self.classes, self.image_size, self.mean, self.std, self.train.to(device), self.val.to(device),
                          self.test.to(device), self.pad, self.flip)


# --------------------------------------------------------------------------------------------
# the split


def stratified_take(labels: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into ``(taken, kept)``, both sorted.

    Exactly ``n_take`` are taken, in proportion to each class's size (largest remainder), and
    every class keeps at least one image. Which images of a class are taken is drawn by ``rng``.
    """
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    room = counts - 1
    if not 0 <= n_take <= room.sum():
        raise ValueError(f"cannot take {n_take} of {len(labels)} images and keep one of each of {len(counts)} classes")
    exact = n_take * counts / len(labels)
    quota = np.minimum(np.floor(exact).astype(np.int64), room)
    # the remainder goes one by one to the classes furthest below their exact share
    by_need = np.argsort(quota - exact, kind="stable")
    while (short := n_take - quota.sum()) > 0:
        for k in by_need[quota[by_need] < room[by_need]][:short]:
            quota[k] += 1
    taken, kept = [], []
    for start, count, q in zip(starts, counts, quota):
        members = rng.permutation(order[start : start + count])
        taken.append(members[:q])
        kept.append(members[q:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(kept))


def _size_value(value: float, key: str) -> None:
    if value >= 1 and value != int(value):
        raise Natv2Error(f"config key {key}: {value} is neither a fraction below 1 nor a whole number of images")


def _resolve_size(value: float, n: int) -> int:
    """A fraction (< 1) of ``n`` images, at least one, or a count (>= 1)."""
    return max(1, round(value * n)) if value < 1 else int(value)


def _take(labels: np.ndarray, value: float, key: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = _resolve_size(value, len(labels))
    n_classes = len(np.unique(labels))
    if n > len(labels) - n_classes:
        raise Natv2Error(
            f"config key {key}: {value} asks for {n} of {len(labels)} images, which leaves fewer than "
            f"one training image per class ({n_classes} classes)"
        )
    return stratified_take(labels, n, rng)


def make_split(labels: np.ndarray, n_pool: int, cfg: DatasetConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Disjoint, stratified index arrays ``train``, ``val``, ``test`` into ``labels``.

    ``labels[:n_pool]`` is the training pool, the rest the source's official test split. Without
    one, test (``test_size``) is carved from the pool first; val (``val_size``) is then held
    out of what remains; ``max_train`` finally caps train (stratified, each class keeps one).
    """
    pool = np.arange(n_pool)
    if n_pool < len(labels):
        test = np.arange(n_pool, len(labels))
    else:
        taken, kept = _take(labels[pool], cfg.test_size, f"datasets.{cfg.key}.test_size", rng)
        test, pool = pool[taken], pool[kept]
    taken, kept = _take(labels[pool], cfg.val_size, f"datasets.{cfg.key}.val_size", rng)
    val, train = pool[taken], pool[kept]
    if cfg.max_train is not None and cfg.max_train < len(train):
        n_drop = min(len(train) - cfg.max_train, len(train) - len(np.unique(labels[train])))
        _, kept = stratified_take(labels[train], n_drop, rng)
        train = train[kept]
    return {"train": train, "val": val, "test": test}


def channel_stats(images: torch.Tensor, index: np.ndarray) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std of ``images[index]`` in [0, 1] units (from histograms)."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for chunk in np.array_split(index, max(1, math.ceil(len(index) / 4096))):
        x = images.index_select(0, torch.from_numpy(chunk)).numpy()
        for c in range(3):
            hist[c] += np.bincount(x[:, c].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    n = hist.sum(axis=1)
    mean = hist @ values / n
    var = np.maximum(hist @ values**2 / n - mean**2, 0.0)
    # a constant channel (degenerate data) would divide by zero when normalising
    std = np.maximum(np.sqrt(var), 1.0 / 255.0)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def prepare_split(settings: Settings, ds_key: str, out_dir: str | Path, *, workers: int | None = None) -> Path:
    """Decode dataset ``ds_key``, split it, write ``out_dir/split.json`` and the cache; return the json path.

    Deterministic for ``settings.seed``. Everything is checked and decoded before anything is
    written; a failure while writing removes both files, so either both are whole or none is there.
    """
    from natv2.sources import load_source

    cfg = settings.dataset(ds_key)
    _size_value(cfg.val_size, f"datasets.{ds_key}.val_size")
    _size_value(cfg.test_size, f"datasets.{ds_key}.test_size")
    t0 = time.perf_counter()
    raw = load_source(cfg, workers)
    labels = raw.labels.numpy()
    index = make_split(labels, raw.n_pool, cfg, stream(settings.seed, "split"))
    mean, std = channel_stats(raw.images, index["train"])
    meta = {
        "format": SPLIT_FORMAT,
        "dataset": ds_key,
        "kind": cfg.kind,
        "origin": raw.origin,
        "classes": raw.classes,
        "image_size": cfg.image_size,
        "mean": mean,
        "std": std,
        "pad": cfg.pad,
        "flip": cfg.flip,
        "seed": settings.seed,
        "val_size": cfg.val_size,
        "test_size": cfg.test_size if not raw.has_test else None,
        "max_train": cfg.max_train,
        "test_from": "official test split" if raw.has_test else "training pool",
        "cache": CACHE_FILE,
        "n_images": len(labels),
        "counts": {name: len(ix) for name, ix in index.items()},
        "class_counts": {name: np.bincount(labels[ix], minlength=len(raw.classes)).tolist() for name, ix in index.items()},
        "indices": {name: ix.tolist() for name, ix in index.items()},
    }
    split_json = _write_outputs(Path(out_dir), raw.images, raw.labels, meta)
    counts = meta["counts"]
    log.info(
        "%s: %d train / %d val / %d test images, %d classes, %d px, in %.1f s -> %s",
        ds_key, counts["train"], counts["val"], counts["test"], len(raw.classes), cfg.image_size,
        time.perf_counter() - t0, split_json,
    )
    return split_json


def _json_text(meta: dict) -> str:
    return json.dumps(meta, indent=2) + "\n"


def _write_outputs(out_dir: Path, images: torch.Tensor, labels: torch.Tensor, meta: dict) -> Path:
    """Write the cache and split.json to temporary names, then rename both (cache first).

    Old outputs go first, so a failure leaves neither an old split.json paired with a new
    cache nor a cache without its split; a kill can only land between the two renames.
    """
    split_json, cache = out_dir / SPLIT_FILE, out_dir / CACHE_FILE
    split_json.unlink(missing_ok=True)
    cache.unlink(missing_ok=True)
    try:
        # contexts exit in reverse order: the cache is renamed into place, then split.json
        with atomic_path(split_json) as tmp_json, atomic_path(cache) as tmp_cache:
            # in memory first: identical splits give identical bytes (see natv2.io.torch_bytes)
            fill(tmp_cache, torch_bytes({"images": images.contiguous(), "labels": labels}))
            fill(tmp_json, _json_text(meta).encode())
    except BaseException:
        cache.unlink(missing_ok=True)
        split_json.unlink(missing_ok=True)
        raise
    return split_json


# --------------------------------------------------------------------------------------------
# loading


def load_data(split_json: str | Path, device=None) -> DataBundle:
    """The split written by :func:`prepare_split`, its images on ``device`` (default: cpu)."""
    split_json = Path(split_json)
    meta = read_json(split_json)
    needed = ("format", "classes", "image_size", "mean", "std", "pad", "flip", "cache", "n_images", "indices")
    missing = [k for k in needed if not isinstance(meta, dict) or k not in meta]
    if missing or meta["format"] != SPLIT_FORMAT:
        raise Natv2Error(f"{split_json}: not a natv2 split of format {SPLIT_FORMAT} (missing {', '.join(missing) or 'format'}); re-run natv2 split")
    cache_path = split_json.parent / meta["cache"]
    cache = load_torch(cache_path)
    images, labels = (cache.get("images"), cache.get("labels")) if isinstance(cache, dict) else (None, None)
    size, n = meta["image_size"], meta["n_images"]
    if not (
        isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
        and images.dtype == torch.uint8 and tuple(images.shape) == (n, 3, size, size)
        and labels.dtype == torch.int64 and tuple(labels.shape) == (n,)
    ):
        raise Natv2Error(f"{cache_path}: does not hold the {n} images of {size} px that {split_json.name} describes; re-run natv2 split")
    sets = {}
    for name in SPLITS:
        index = torch.as_tensor(meta["indices"].get(name, []), dtype=torch.int64)
        if len(index) and (index.min() < 0 or index.max() >= n):
            raise Natv2Error(f"{split_json}: indices of {name} out of range for {n} images; re-run natv2 split")
        sets[name] = ImageSet(images.index_select(0, index), labels.index_select(0, index))
    bundle = DataBundle(list(meta["classes"]), size, tuple(meta["mean"]), tuple(meta["std"]), sets["train"], sets["val"], sets["test"],
                        int(meta["pad"]), bool(meta["flip"]))
    return bundle.to(device) if device is not None else bundle


# --------------------------------------------------------------------------------------------
# batches


def _crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the zero-padded batch and random horizontal flip, as one gather.

    Image i reads rows ``dy_i + 0..S-1`` and columns ``dx_i + 0..S-1`` (reversed when it is
    mirrored, probability 1/2) of its padded copy, with dy_i, dx_i uniform in 0..2*pad: a flat
    index per image, so the whole batch is one ``torch.gather`` (no per-image Python loop).
    """
    b, c, s, _ = x.shape
    device = x.device
    width = s + 2 * pad
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b, 1), generator=generator).to(device)
    span = torch.arange(s, device=device)
    rows, cols = offsets[0] + span, offsets[1] + span  # b x s each
    if flip:
        mirrored = (torch.rand(b, 1, generator=generator) < 0.5).to(device)
        cols = torch.where(mirrored, cols.flip(1), cols)
    flat = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, s * s).expand(b, c, s * s)
    return torch.gather(x.reshape(b, c, width * width), 2, flat).view(b, c, s, s)


def resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of a batch to ``resolution`` square (antialiased when shrinking); float32 out.

    The one resize of training and evaluation batches (uint8 cached images or normalised float).
    No-op (but for the cast) when the batch already has that size. On the CPU a uint8 batch is
    resized as uint8 (torch's vectorised uint8 path, several times faster than float; rounding to
    uint8 loses nothing the cached images had); elsewhere on float.
    """
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x.float()
    size, antialias = (resolution, resolution), resolution < x.shape[-1]
    if x.device.type == "cpu":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias).float()
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)


def batches(
    images: ImageSet,
    batch_size: int,
    *,
    resolution: int,
    mean: Sequence[float],
    std: Sequence[float],
    train: bool,
    generator: torch.Generator | None = None,
    device=None,
    pad: int = 4,
    flip: bool = True,
    drop_last: bool | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over ``images`` as ``(x float32 B x 3 x R x R normalised, y int64 B)`` on ``device``.

    ``train``: shuffled with ``generator`` (a CPU torch.Generator, required), randomly cropped
    from the image zero-padded by ``pad`` pixels (at the cached size) and flipped; the last
    partial batch is dropped (``drop_last`` defaults to ``train``) unless it is the only one.
    Otherwise in order, unaugmented. Both: resized to ``resolution`` (bilinear, antialiased when
    shrinking) and normalised with ``mean``/``std``. ``device`` defaults to the images' device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if train and generator is None:
        raise ValueError("batches(train=True) needs a torch.Generator: every random choice is seeded")
    device = torch.device(device) if device is not None else images.device
    n = len(images)
    order = torch.randperm(n, generator=generator) if train else torch.arange(n)
    drop = train if drop_last is None else drop_last
    stop = n - n % batch_size if drop and n >= batch_size else n
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    # (x / 255 - mean) / std as one multiply-add
    scale, shift = 1.0 / (255.0 * std_t), -mean_t / std_t
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size].to(images.device)
        x = images.images.index_select(0, index).to(device, non_blocking=True)
        y = images.labels.index_select(0, index).to(device, non_blocking=True)
        if train and (pad > 0 or flip):
            x = _crop_flip(x, pad, flip, generator)
        yield resize(x, resolution).mul_(scale).add_(shift), y
