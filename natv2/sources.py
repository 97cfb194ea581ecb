"""Image sources: each turns one ``datasets:`` entry into uint8 RGB images of the configured size.

The registry :data:`SOURCES` maps a dataset ``kind`` to its loader:

- ``digits``: scikit-learn's bundled handwritten digits (8x8 gray, offline);
- ``torchvision``: a torchvision dataset class by name (CIFAR10, CIFAR100, MNIST, SVHN, ...),
  read from ``root`` when present, downloaded into it when absent and ``download`` is allowed;
- ``imagefolder``: ``root/train/<class>/*`` and optionally ``root/test/<class>/*``, any image
  size or mode, decoded in parallel worker processes;
- ``tinyimagenet``: the official ``tiny-imagenet-200.zip`` unzipped as it is (``wnids.txt``,
  ``words.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images/*.JPEG`` + ``val/val_annotations.txt``);
  the labelled val split serves as the test split (the official test split has no labels).

Every loader returns a :class:`RawDataset`: all images of the source as one uint8
``N x 3 x S x S`` tensor (the training pool first, then the official test split when the source
has one), their int64 labels, and the class names. :mod:`natv2.splits` splits and caches it.
Images are resized so the shorter side is S, then centre-cropped to S x S (the usual
evaluation transform: the aspect ratio is kept, the borders of long images are lost).
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from natv2.config import DatasetConfig
from natv2.errors import Natv2Error

log = logging.getLogger(__name__)

# each decode task returns about this many bytes of pixels (several tasks in flight per worker)
_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class RawDataset:
    """All images of a source at the cache size; ``images[:n_pool]`` is the training pool."""

    classes: list[str]
    images: torch.Tensor  # uint8 N x 3 x S x S
    labels: torch.Tensor  # int64 N, values in 0..len(classes)-1
    n_pool: int  # images[n_pool:] are the source's official test split (none when n_pool == N)
    origin: str  # where the images came from, for split.json

    @property
    def has_test(self) -> bool:
        return self.n_pool < len(self.labels)


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def fit_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``[N x] C x H x W`` (C = 1, 3 or 4) -> RGB ``[N x] 3 x size x size``.

    Shorter side resized to ``size`` (bilinear, antialiased: torchvision's uint8 path, which
    matches Pillow), then centre-cropped. Gray is repeated to RGB; alpha is dropped.
    """
    from torchvision.transforms.v2 import functional as TF

    channels = images.shape[-3]
    if channels == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    elif channels == 4:
        images = images[..., :3, :, :]
    elif channels != 3:
        raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")
    if tuple(images.shape[-2:]) != (size, size):
        images = TF.resize(images, [size], antialias=True)
        images = TF.center_crop(images, [size, size])
    return images.contiguous()


# --------------------------------------------------------------------------------------------
# digits


def load_digits(cfg: DatasetConfig, workers: int = 1) -> RawDataset:
    """scikit-learn's 1,797 handwritten digits (8x8, values 0..16); no official test split."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    gray = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    images = fit_images(torch.from_numpy(gray)[:, None], cfg.image_size)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    classes = [str(c) for c in bunch.target_names]
    return RawDataset(classes, images, labels, n_pool=len(labels), origin="sklearn.datasets.load_digits")


# --------------------------------------------------------------------------------------------
# torchvision


def _torchvision_class(cfg: DatasetConfig):
    import torchvision.datasets as tvd

    if not cfg.name:
        raise Natv2Error(f"config key datasets.{cfg.key}.name: required for kind torchvision (e.g. CIFAR10)")
    cls = getattr(tvd, cfg.name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.utils.data.Dataset)):
        raise Natv2Error(
            f"config key datasets.{cfg.key}.name: {cfg.name!r} is not a torchvision dataset class "
            f"(e.g. CIFAR10, CIFAR100, MNIST, FashionMNIST, SVHN, STL10; names are case-sensitive)"
        )
    return cls


def _split_arguments(cls, cfg: DatasetConfig) -> tuple[dict, dict]:
    """Constructor arguments for the train and the test split (``train=`` or ``split=`` styles)."""
    params = inspect.signature(cls.__init__).parameters
    if "download" not in params:
        raise Natv2Error(f"config key datasets.{cfg.key}.name: torchvision {cfg.name} cannot be downloaded by torchvision; use kind imagefolder")
    if "train" in params:
        return {"train": True}, {"train": False}
    if "split" in params:
        return {"split": "train"}, {"split": "test"}
    raise Natv2Error(f"config key datasets.{cfg.key}.name: torchvision {cfg.name} has neither a train= nor a split= argument; use kind imagefolder")


def _open_torchvision(cls, cfg: DatasetConfig, root: Path, split: dict):
    """Read the split from ``root``; download into it when absent and allowed."""
    where = root / cls.base_folder if isinstance(getattr(cls, "base_folder", None), str) else root
    try:
        return cls(root=str(root), download=False, **split)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted. ..."
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    provide = (
        f"put the files there as torchvision.datasets.{cfg.name}(root={str(root)!r}, download=True) "
        f"writes them (copy them from a machine with network), or use kind imagefolder"
    )
    if not cfg.download:
        raise Natv2Error(
            f"datasets.{cfg.key}: torchvision {cfg.name} not found in {where} ({reason}) and "
            f"datasets.{cfg.key}.download is false; {provide}, or set download: true"
        )
    log.info("%s: %s not found in %s; downloading", cfg.key, cfg.name, root)
    try:
        return cls(root=str(root), download=True, **split)
    except Exception as e:  # URLError, HTTPError, timeouts, checksum failures: all one message
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise Natv2Error(
            f"datasets.{cfg.key}: torchvision {cfg.name} not found in {where} and the download failed "
            f"({type(e).__name__}: {first}); {provide}"
        ) from None


def _dataset_arrays(ds, size: int, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 N x 3 x size x size, int64 N) from a torchvision dataset.

    Fast path: the in-memory ``data`` array most torchvision datasets hold (CIFAR: N x H x W x 3,
    MNIST: N x H x W, SVHN/STL10: N x 3 x H x W). Otherwise index the dataset image by image.
    """
    data = getattr(ds, "data", None)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    if data is not None and labels is not None and len(data) == len(labels):
        array = torch.as_tensor(np.asarray(data))
        if array.dtype == torch.uint8 and array.ndim in (3, 4):
            if array.ndim == 3:
                array = array[:, None]
            elif array.shape[1] not in (1, 3, 4) and array.shape[-1] in (1, 3, 4):
                array = array.permute(0, 3, 1, 2)
            images = torch.cat([fit_images(array[i : i + 4096], size) for i in range(0, len(array), 4096)])
            return images, torch.as_tensor(np.asarray(labels), dtype=torch.int64)

    from tqdm import tqdm

    images = torch.empty(len(ds), 3, size, size, dtype=torch.uint8)
    targets = torch.empty(len(ds), dtype=torch.int64)
    for i in tqdm(range(len(ds)), desc=desc, unit="img", mininterval=2):
        image, target = ds[i]
        images[i] = fit_images(_pil_to_tensor(image), size)
        targets[i] = int(target)
    return images, targets


def load_torchvision(cfg: DatasetConfig, workers: int = 1) -> RawDataset:
    """A torchvision dataset by class name, train split as the pool and its test split."""
    cls = _torchvision_class(cfg)
    root = _require_root(cfg)
    train_args, test_args = _split_arguments(cls, cfg)
    train = _open_torchvision(cls, cfg, root, train_args)
    test = _open_torchvision(cls, cfg, root, test_args)
    train_x, train_y = _dataset_arrays(train, cfg.image_size, f"{cfg.key} train")
    test_x, test_y = _dataset_arrays(test, cfg.image_size, f"{cfg.key} test")
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    classes = list(getattr(train, "classes", None) or [])
    if len(classes) != n_classes:
        classes = [str(c) for c in range(n_classes)]
    return RawDataset(
        [str(c) for c in classes],
        torch.cat([train_x, test_x]),
        torch.cat([train_y, test_y]),
        n_pool=len(train_y),
        origin=f"torchvision.datasets.{cfg.name}({str(root)!r})",
    )


# --------------------------------------------------------------------------------------------
# imagefolder


def _require_root(cfg: DatasetConfig) -> Path:
    if not cfg.root:
        raise Natv2Error(f"config key datasets.{cfg.key}.root: required for kind {cfg.kind}")
    return Path(cfg.root).expanduser()


def _visible(name: str) -> bool:
    return not name.startswith(".")  # .DS_Store, .ipynb_checkpoints, editor files


def _scan_classes(folder: Path) -> dict[str, list[Path]]:
    """``folder/<class>/**`` -> {class: sorted files}; every file counts as an image."""
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name))
    if not class_dirs:
        raise Natv2Error(f"{folder}: no class folders (expected {folder}/<class>/<image files>)")
    stray = [p.name for p in folder.iterdir() if p.is_file() and _visible(p.name)]
    if stray:
        log.warning("%s: ignoring %d file(s) outside class folders (e.g. %s)", folder, len(stray), stray[0])
    found = {}
    for class_dir in class_dirs:
        files = []
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            files.extend(Path(dirpath) / f for f in sorted(filenames) if _visible(f))
        if not files:
            raise Natv2Error(f"{class_dir}: empty class folder (expected image files in it)")
        found[class_dir.name] = files
    return found


def _pil_to_tensor(image) -> torch.Tensor:
    """A PIL image (any mode) -> uint8 3 x H x W."""
    from PIL import Image, ImageOps

    if not isinstance(image, Image.Image):  # a dataset that already returns tensors/arrays
        array = torch.as_tensor(np.asarray(image))
        return array[None] if array.ndim == 2 else array
    image = ImageOps.exif_transpose(image)
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def decode_file(path: Path, size: int) -> torch.Tensor:
    """One image file -> uint8 3 x size x size. Raises Natv2Error naming the file if unreadable.

    torchvision's decoder (libjpeg-turbo, libpng, ...) first, for speed; Pillow for every
    other format (BMP, TIFF, PPM, ...).
    """
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB, apply_exif_orientation=True)
        if image.ndim == 4:  # animated GIF: first frame
            image = image[0]
        if image.dtype != torch.uint8:  # 16-bit PNG
            image = (image.to(torch.int32) // 257).to(torch.uint8)
    except RuntimeError:
        from PIL import Image

        try:
            with Image.open(path) as im:
                image = _pil_to_tensor(im)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise Natv2Error(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return fit_images(image, size)


class _DecodeTasks(torch.utils.data.Dataset):
    """Task i decodes a chunk of files; an unreadable file ends the chunk with its message.

    Errors travel as data, not exceptions, so the message reaches the user as one line rather
    than wrapped in a worker traceback.
    """

    def __init__(self, paths: list[Path], size: int, chunk: int):
        self.paths, self.size, self.chunk = paths, size, chunk

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.chunk)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        paths = self.paths[i * self.chunk : (i + 1) * self.chunk]
        out = torch.empty(len(paths), 3, self.size, self.size, dtype=torch.uint8)
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates torchvision.io's decoders (in favour of torchcodec),
            # once per call; they are what the pinned version has, so say nothing per image
            warnings.simplefilter("ignore", DeprecationWarning)
            for j, path in enumerate(paths):
                try:
                    out[j] = decode_file(path, self.size)
                except Natv2Error as e:
                    return out, str(e)
        return out, ""


def decode_files(paths: list[Path], size: int, workers: int = 1, *, chunk: int | None = None, desc: str = "decode") -> torch.Tensor:
    """Decode ``paths`` in order into uint8 ``N x 3 x size x size``, in ``workers`` processes.

    torch's DataLoader runs the worker processes (one torch thread each, clean shutdown when
    an error stops the loop early); each task decodes ``chunk`` files (default: about 4 MB).
    """
    from tqdm import tqdm

    chunk = chunk or max(16, min(1024, _CHUNK_BYTES // (3 * size * size)))
    tasks = _DecodeTasks(paths, size, chunk)
    workers = max(0, min(workers, len(tasks)))
    loader = torch.utils.data.DataLoader(tasks, batch_size=None, num_workers=workers if workers > 1 else 0)
    out = torch.empty(len(paths), 3, size, size, dtype=torch.uint8)
    start, t0 = 0, time.perf_counter()
    with tqdm(total=len(paths), desc=desc, unit="img", mininterval=1) as bar:
        for images, error in loader:
            if error:
                raise Natv2Error(error)
            out[start : start + len(images)] = images
            start += len(images)
            bar.update(len(images))
    seconds = time.perf_counter() - t0
    log.info("decoded %d images in %.1f s (%.0f images/s, %d workers)", len(paths), seconds, len(paths) / max(seconds, 1e-9), max(workers, 1))
    return out


def load_imagefolder(cfg: DatasetConfig, workers: int = 1) -> RawDataset:
    """``root/train/<class>/*`` (the pool) and, when present, ``root/test/<class>/*``."""
    root = _require_root(cfg)
    layout = f"expected {root}/train/<class>/<image files> and optionally {root}/test/<class>/..."
    if not root.is_dir():
        raise Natv2Error(f"config key datasets.{cfg.key}.root: {root} does not exist or is not a folder ({layout})")
    if not (root / "train").is_dir():
        raise Natv2Error(f"{root}: no train/ folder ({layout})")
    train = _scan_classes(root / "train")
    classes = list(train)
    test = _scan_classes(root / "test") if (root / "test").is_dir() else {}
    unknown = sorted(set(test) - set(train))
    if unknown:
        raise Natv2Error(f"{root / 'test'}: class folder(s) {', '.join(unknown)} not in {root / 'train'}")
    paths, labels = [], []
    for files_by_class in (train, test):
        for name, files in files_by_class.items():
            paths.extend(files)
            labels.extend([classes.index(name)] * len(files))
    n_pool = sum(len(files) for files in train.values())
    images = decode_files(paths, cfg.image_size, workers, desc=cfg.key)
    return RawDataset(classes, images, torch.tensor(labels, dtype=torch.int64), n_pool, origin=str(root.resolve()))


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet as downloaded

TINY_LAYOUT = ("wnids.txt, words.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
               "val/val_annotations.txt (the unzipped tiny-imagenet-200.zip)")


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise Natv2Error(f"{path}: not found (Tiny-ImageNet layout: {TINY_LAYOUT})")
    return [line.rstrip("\n\r") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tiny_class_names(wnids: list[str], words_txt: Path) -> list[str]:
    """Readable class names from ``words.txt`` (``wnid<TAB>name, synonym, ...``): the first name.

    A wnid missing from words.txt keeps its wnid; a name shared by two wnids gets its wnid
    appended, so class names stay unique.
    """
    words = {}
    if words_txt.is_file():
        for line in _read_lines(words_txt):
            wnid, _, names = line.partition("\t")
            words[wnid.strip()] = names.split(",")[0].strip()
    else:
        log.warning("%s: not found; class names are the wnids", words_txt)
    names = [words.get(w) or w for w in wnids]
    counts = {n: names.count(n) for n in names}
    return [f"{n} ({w})" if counts[n] > 1 and n != w else n for n, w in zip(names, wnids)]


def scan_tinyimagenet(root: Path) -> tuple[list[str], list[str], list[Path], list[int], int]:
    """(wnids, class names, image paths, labels, n_train) of the official Tiny-ImageNet layout.

    Classes are the wnids of ``wnids.txt`` in sorted order (what ImageFolder gives the same
    folders); train images first (``train/<wnid>/images/``, the ``*_boxes.txt`` beside them are
    ignored), then val images labelled by ``val/val_annotations.txt``.
    """
    if not root.is_dir():
        raise Natv2Error(f"{root}: does not exist or is not a folder (Tiny-ImageNet layout: {TINY_LAYOUT})")
    wnids = sorted(set(w.split()[0] for w in _read_lines(root / "wnids.txt")))
    index = {w: i for i, w in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p.name)) if folder.is_dir() else []
        if not files:
            raise Natv2Error(f"{folder}: no training images for class {wnid} (Tiny-ImageNet layout: {TINY_LAYOUT})")
        paths.extend(files)
        labels.extend([index[wnid]] * len(files))
    n_train = len(paths)
    for line_no, line in enumerate(_read_lines(root / "val" / "val_annotations.txt"), start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise Natv2Error(f"{root / 'val' / 'val_annotations.txt'}: line {line_no}: expected '<file>\\t<wnid>\\t...', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise Natv2Error(f"{root / 'val' / 'val_annotations.txt'}: line {line_no}: wnid {wnid!r} not in wnids.txt")
        image = root / "val" / "images" / name
        if not image.is_file():
            raise Natv2Error(f"{image}: listed in val/val_annotations.txt line {line_no} but not found")
        paths.append(image)
        labels.append(index[wnid])
    return wnids, tiny_class_names(wnids, root / "words.txt"), paths, labels, n_train


def load_tinyimagenet(cfg: DatasetConfig, workers: int = 1) -> RawDataset:
    """Tiny-ImageNet from its official archive layout: train as the pool, the labelled val as test."""
    root = _require_root(cfg)
    _, classes, paths, labels, n_train = scan_tinyimagenet(root)
    images = decode_files(paths, cfg.image_size, workers, desc=cfg.key)
    return RawDataset(classes, images, torch.tensor(labels, dtype=torch.int64), n_train, origin=str(root.resolve()))


# --------------------------------------------------------------------------------------------
# registry

SOURCES: dict[str, Callable[[DatasetConfig, int], RawDataset]] = {
    "digits": load_digits,
    "torchvision": load_torchvision,
    "imagefolder": load_imagefolder,
    "tinyimagenet": load_tinyimagenet,
}


def load_source(cfg: DatasetConfig, workers: int | None = None) -> RawDataset:
    """Load the dataset ``cfg`` describes at ``cfg.image_size`` (``workers`` decode processes)."""
    if cfg.kind not in SOURCES:
        raise Natv2Error(f"config key datasets.{cfg.key}.kind: {cfg.kind!r} is not one of {', '.join(SOURCES)}")
    raw = SOURCES[cfg.kind](cfg, workers or available_cores())
    counts = torch.bincount(raw.labels[: raw.n_pool], minlength=len(raw.classes))
    empty = [raw.classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
    if empty:
        raise Natv2Error(f"datasets.{cfg.key}: class(es) {', '.join(empty)} have no training images")
    if len(raw.classes) < 2:  # one class scores 100 % and means nothing
        raise Natv2Error(f"datasets.{cfg.key}: {raw.origin} has {len(raw.classes)} class(es) "
                         f"({', '.join(raw.classes)}); a classifier needs at least 2")
    return raw
