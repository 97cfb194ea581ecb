"""natv2.splits / natv2.sources: sources, the split, the cache, batches, and every bad input."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from natv2.cli import main
from natv2.config import DEFAULT_CONFIG, DatasetConfig, load_settings
from natv2.errors import Natv2Error
from natv2.sources import SOURCES, _dataset_arrays, decode_files, load_source
from natv2.splits import (
    CACHE_FILE,
    SPLIT_FILE,
    DataBundle,
    ImageSet,
    batches,
    load_data,
    make_split,
    prepare_split,
    stratified_take,
)


def settings_with(datasets: dict | None = None, **overrides):
    return load_settings(overrides={"datasets": datasets or {}, **overrides})


def assert_nothing_written(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], f"a failed run left {left} in {out}"


# --------------------------------------------------------------------------------------------
# small image folders written by the tests

# class -> list of (file name, PIL mode, size, colour); sizes and modes deliberately mixed
FOLDER_TRAIN = {
    "cat": [("a.jpg", "RGB", (40, 30), (200, 30, 30)), ("b.jpg", "RGB", (17, 23), (200, 30, 30)),
            ("c.png", "RGB", (16, 16), (200, 30, 30)), ("d.bmp", "RGB", (50, 20), (200, 30, 30))],
    "dog": [("a.png", "L", (20, 20), 100), ("b.jpg", "L", (33, 31), 100),
            ("c.png", "L", (8, 12), 100), ("d.png", "L", (64, 64), 100)],
    "eel": [("a.png", "RGBA", (64, 48), (0, 0, 250, 128)), ("b.png", "P", (30, 30), None),
            ("c.jpg", "RGB", (25, 25), (0, 0, 250)), ("sub/d.png", "RGB", (20, 40), (0, 0, 250))],
}
FOLDER_TEST = {
    "cat": [("t.jpg", "RGB", (32, 32), (200, 30, 30))],
    "dog": [("t.png", "L", (10, 10), 100)],
}
COLOURS = {"cat": (200, 30, 30), "dog": (100, 100, 100), "eel": (0, 0, 250)}


def _write_image(path: Path, mode: str, size, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":  # a palette image whose only colour is the eel blue
        image = Image.new("P", size, 0)
        image.putpalette([0, 0, 250] + [0, 0, 0] * 255)
    else:
        image = Image.new(mode, size, colour)
    image.save(path)


def write_folder(root: Path, train=FOLDER_TRAIN, test=FOLDER_TEST) -> Path:
    for split, spec in (("train", train), ("test", test)):
        for cls, files in (spec or {}).items():
            for name, mode, size, colour in files:
                _write_image(root / split / cls / name, mode, size, colour)
    return root


def folder_settings(root: Path, **entry):
    return settings_with({"mine": {"kind": "imagefolder", "root": str(root), "image_size": 16, **entry}})


# --------------------------------------------------------------------------------------------
# the split itself


def test_stratified_take_exact_count_proportional_and_disjoint():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    taken, kept = stratified_take(labels, 40, np.random.default_rng(0))
    assert len(taken) == 40 and len(kept) == 160
    assert np.intersect1d(taken, kept).size == 0
    assert np.array_equal(np.sort(np.concatenate([taken, kept])), np.arange(200))
    assert np.bincount(labels[taken]).tolist() == [20, 10, 6, 4]  # 20 % of each class


def test_stratified_take_keeps_one_of_each_class():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 2])  # classes 1 and 2 have one image each
    taken, kept = stratified_take(labels, 5, np.random.default_rng(0))
    assert sorted(set(labels[kept].tolist())) == [0, 1, 2]
    assert len(taken) == 5
    with pytest.raises(ValueError):
        stratified_take(labels, 6, np.random.default_rng(0))


def _cfg(**kw) -> DatasetConfig:
    return settings_with({"t": {"kind": "digits", **kw}}).dataset("t")


def test_make_split_deterministic_disjoint_stratified():
    labels = np.repeat(np.arange(5), 200)
    a = make_split(labels, len(labels), _cfg(val_size=0.1, test_size=0.2), np.random.default_rng(7))
    b = make_split(labels, len(labels), _cfg(val_size=0.1, test_size=0.2), np.random.default_rng(7))
    c = make_split(labels, len(labels), _cfg(val_size=0.1, test_size=0.2), np.random.default_rng(8))
    for name in ("train", "val", "test"):
        assert np.array_equal(a[name], b[name])
    assert not np.array_equal(a["val"], c["val"])
    assert {k: len(v) for k, v in a.items()} == {"train": 720, "val": 80, "test": 200}
    everything = np.concatenate(list(a.values()))
    assert len(np.unique(everything)) == len(everything) == 1000
    for name, per_class in (("train", 144), ("val", 16), ("test", 40)):
        assert np.bincount(labels[a[name]]).tolist() == [per_class] * 5


def test_make_split_official_test_counts_and_max_train():
    labels = np.concatenate([np.repeat(np.arange(3), 100), np.repeat(np.arange(3), 10)])
    split = make_split(labels, 300, _cfg(val_size=30, max_train=60), np.random.default_rng(0))
    assert np.array_equal(split["test"], np.arange(300, 330))  # the official split, untouched
    assert len(split["val"]) == 30 and np.bincount(labels[split["val"]]).tolist() == [10, 10, 10]
    assert len(split["train"]) == 60 and np.bincount(labels[split["train"]]).tolist() == [20, 20, 20]
    assert np.intersect1d(split["train"], split["val"]).size == 0


@pytest.mark.parametrize(
    "entry, key",
    [({"val_size": 0.99}, "datasets.t.val_size"), ({"test_size": 500.0}, "datasets.t.test_size")],
)
def test_make_split_rejects_sizes_that_leave_no_training_images(entry, key):
    labels = np.repeat(np.arange(5), 100)
    with pytest.raises(Natv2Error, match=key):
        make_split(labels, len(labels), _cfg(**{"val_size": 0.1, "test_size": 0.2, **entry}), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------
# digits end to end: split.json + cache, determinism, statistics


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory):
    """Three digits splits: seed 0 twice, seed 1 once (at 16 px to stay quick)."""
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        settings = load_settings(overrides={"seed": seed, "data": {"image_size": 16}})
        out[name] = prepare_split(settings, "digits", tmp_path_factory.mktemp(f"digits_{name}"), workers=1)
    return out


def test_digits_split_files_and_counts(digits_runs):
    meta = json.loads(digits_runs["a"].read_text())
    assert (digits_runs["a"].parent / CACHE_FILE).is_file()
    assert meta["classes"] == [str(i) for i in range(10)] and meta["image_size"] == 16
    assert meta["n_images"] == 1797 and meta["test_from"] == "training pool"
    # test = 20 % of 1797, val = 10 % of the rest, train the remainder
    assert meta["counts"] == {"train": 1294, "val": 144, "test": 359}
    idx = {k: set(v) for k, v in meta["indices"].items()}
    assert not (idx["train"] & idx["val"]) and not (idx["train"] & idx["test"]) and not (idx["val"] & idx["test"])
    assert len(idx["train"] | idx["val"] | idx["test"]) == 1797
    # stratified: every class's share of val and test within one image of its share of all data
    total = np.sum([meta["class_counts"][k] for k in ("train", "val", "test")], axis=0)
    for name in ("val", "test"):
        expected = total * meta["counts"][name] / 1797
        assert np.all(np.abs(np.array(meta["class_counts"][name]) - expected) <= 1.5), name


def test_digits_split_is_deterministic_per_seed(digits_runs):
    a, b, c = (json.loads(digits_runs[k].read_text())["indices"] for k in ("a", "b", "c"))
    assert a == b
    assert a["train"] != c["train"] and a["val"] != c["val"] and a["test"] != c["test"]


def test_identical_splits_write_identical_bytes(digits_runs):
    # torch.save to a path records the (temporary) file name inside the zip: not so here
    a, b = (digits_runs[k].parent / CACHE_FILE for k in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    assert digits_runs["a"].read_bytes() == digits_runs["b"].read_bytes()


def test_load_data_and_normalisation_statistics(digits_runs):
    data = load_data(digits_runs["a"])
    meta = json.loads(digits_runs["a"].read_text())
    assert isinstance(data, DataBundle) and data.n_classes == 10 and data.image_size == 16
    assert (len(data.train), len(data.val), len(data.test)) == (1294, 144, 359)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape == (1294, 3, 16, 16)
    assert data.train.labels.dtype == torch.int64
    cache = torch.load(digits_runs["a"].parent / CACHE_FILE, weights_only=True)
    for name in ("train", "val", "test"):
        index = torch.tensor(meta["indices"][name])
        assert torch.equal(data.split(name).labels, cache["labels"][index])
        assert torch.equal(data.split(name).images, cache["images"][index])
    assert np.bincount(data.val.labels.numpy(), minlength=10).tolist() == meta["class_counts"]["val"]
    # mean/std are those of the train split, in [0, 1] units
    pixels = data.train.images.double() / 255
    assert np.allclose(data.mean, pixels.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(data.std, pixels.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-5)
    # so normalised train batches have mean 0 and std 1 per channel
    xs = torch.cat([x for x, _ in batches(data.train, 500, resolution=16, mean=data.mean, std=data.std, train=False)])
    assert torch.allclose(xs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(xs.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)
    tv = data.trainval()
    assert len(tv) == 1294 + 144 and torch.equal(tv.labels[:1294], data.train.labels)
    assert data.split("val") is data.val and len(data.split("trainval")) == len(tv)


def test_load_data_rejects_a_cache_that_does_not_match(tmp_path, digits_runs):
    import shutil

    split = tmp_path / SPLIT_FILE
    shutil.copy(digits_runs["a"], split)
    torch.save({"images": torch.zeros(5, 3, 16, 16, dtype=torch.uint8), "labels": torch.zeros(5, dtype=torch.int64)}, tmp_path / CACHE_FILE)
    with pytest.raises(Natv2Error, match=r"images\.pt: does not hold the 1797 images"):
        load_data(split)
    (tmp_path / CACHE_FILE).unlink()
    with pytest.raises(Natv2Error, match="checkpoint not found"):
        load_data(split)


def test_a_failure_while_writing_leaves_neither_file(tmp_path, monkeypatch):
    import natv2.splits

    def broken(*args, **kwargs):
        raise OSError("disk full")

    out = tmp_path / "out"
    settings = load_settings(overrides={"data": {"image_size": 8}})
    prepare_split(settings, "digits", out, workers=1)  # an earlier, complete run
    monkeypatch.setattr(natv2.splits, "_json_text", broken)  # fails after the cache is written
    with pytest.raises(Natv2Error, match=r"cannot write \(disk full\)"):  # one line naming the output
        prepare_split(settings, "digits", out, workers=1)
    assert_nothing_written(out)


# --------------------------------------------------------------------------------------------
# imagefolder


def test_imagefolder_mixed_sizes_and_modes(tmp_path):
    root = write_folder(tmp_path / "folder")
    out = tmp_path / "out"
    split = prepare_split(folder_settings(root), "mine", out, workers=2)
    meta = json.loads(split.read_text())
    assert meta["classes"] == ["cat", "dog", "eel"]
    assert meta["test_from"] == "official test split" and meta["counts"]["test"] == 2
    assert meta["counts"]["train"] + meta["counts"]["val"] == 12
    cache = torch.load(out / CACHE_FILE, weights_only=True)
    images, labels = cache["images"], cache["labels"]
    assert images.shape == (14, 3, 16, 16) and images.dtype == torch.uint8
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [0, 1]  # train by class, then test
    for image, label in zip(images, labels.tolist()):
        colour = torch.tensor(COLOURS[["cat", "dog", "eel"][label]], dtype=torch.float32)
        # every file, whatever its size and mode, became a 16x16 RGB image of its colour (JPEG: +-8)
        assert torch.allclose(image.float().mean(dim=(1, 2)), colour, atol=8), (label, image.float().mean(dim=(1, 2)))
    data = load_data(split)
    assert data.test.labels.tolist() == [0, 1]


def test_imagefolder_without_test_folder_carves_test(tmp_path):
    root = write_folder(tmp_path / "folder", test=None)
    meta = json.loads(prepare_split(folder_settings(root, test_size=3), "mine", tmp_path / "out", workers=1).read_text())
    assert meta["test_from"] == "training pool"
    assert meta["counts"]["test"] == 3 and meta["class_counts"]["test"] == [1, 1, 1]
    assert sum(meta["counts"].values()) == 12


def test_decode_files_in_worker_processes_keeps_order(tmp_path):
    paths = []
    for i in range(12):
        path = tmp_path / f"{i:02d}.png"
        Image.new("L", (10 + i, 12), 20 * i).save(path)
        paths.append(path)
    images = decode_files(paths, 8, workers=2, chunk=3)
    assert images.shape == (12, 3, 8, 8)
    assert images[:, 0, 4, 4].tolist() == [20 * i for i in range(12)]


def test_unreadable_image_in_a_worker_names_the_file(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (9, 9)).save(path)
        paths.append(path)
    paths[4].write_bytes(b"\x89PNG but truncated")
    with pytest.raises(Natv2Error, match=r"4\.png: not a readable image"):
        decode_files(paths, 8, workers=2, chunk=2)


def _folder_case(tmp_path: Path, case: str) -> Path:
    root = tmp_path / "folder"
    if case == "missing root":
        return root
    if case == "no train folder":
        (root / "elsewhere").mkdir(parents=True)
    elif case == "no class folders":
        (root / "train").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "train" / "loose.png")
    elif case == "empty class":
        write_folder(root, test=None)
        (root / "train" / "fox").mkdir()
    elif case == "unreadable image":
        write_folder(root, test=None)
        (root / "train" / "dog" / "notes.txt").write_text("not an image")
    elif case == "unknown test class":
        write_folder(root, test={"owl": [("t.png", "L", (8, 8), 5)]})
    return root


FOLDER_ERRORS = {
    "missing root": r"datasets\.mine\.root: .*folder does not exist",
    "no train folder": r"folder: no train/ folder",
    "no class folders": r"train: no class folders",
    "empty class": r"train/fox: empty class folder",
    "unreadable image": r"train/dog/notes\.txt: not a readable image",
    "unknown test class": r"test: class folder\(s\) owl not in",
}


@pytest.mark.parametrize("case", list(FOLDER_ERRORS))
def test_imagefolder_bad_input(tmp_path, case):
    root = _folder_case(tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(Natv2Error, match=FOLDER_ERRORS[case]) as info:
        prepare_split(folder_settings(root), "mine", out, workers=1)
    assert "\n" not in str(info.value)
    assert_nothing_written(out)


def test_bad_entries_of_a_dataset(tmp_path):
    out = tmp_path / "out"
    cases = [
        ({"kind": "imagefolder"}, r"datasets\.x\.root: required for kind imagefolder"),
        ({"kind": "torchvision", "root": str(tmp_path)}, r"datasets\.x\.name: required"),
        ({"kind": "torchvision", "name": "CIFAR11", "root": str(tmp_path)}, r"datasets\.x\.name: 'CIFAR11' is not a torchvision dataset"),
        ({"kind": "digits", "val_size": 12.5}, r"datasets\.x\.val_size: 12\.5 is neither a fraction"),
        ({"kind": "digits", "test_size": 1790}, r"datasets\.x\.test_size: 1790 asks for 1790 of 1797"),
    ]
    for entry, message in cases:
        with pytest.raises(Natv2Error, match=message):
            prepare_split(settings_with({"x": {"image_size": 8, **entry}}), "x", out, workers=1)
        assert_nothing_written(out)
    with pytest.raises(Natv2Error, match="unknown dataset key 'nope'"):
        prepare_split(settings_with(), "nope", out)
    # an unknown kind never passes the schema; the registry says the same for a hand-made entry
    with pytest.raises(Natv2Error, match=r"datasets\.x\.kind: 'lmdb' is not one of digits, torchvision, imagefolder, tinyimagenet"):
        load_source(dataclasses.replace(settings_with({"x": {"kind": "digits"}}).dataset("x"), kind="lmdb"))
    with pytest.raises(Natv2Error, match=r"datasets\.x\.kind"):
        settings_with({"x": {"kind": "lmdb"}})
    assert set(SOURCES) == {"digits", "torchvision", "imagefolder", "tinyimagenet"}


# --------------------------------------------------------------------------------------------
# torchvision: a tiny CIFAR-10 in torchvision's on-disk format (nothing downloads)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny_cifar(tmp_path, monkeypatch):
    """root/cifar-10-batches-py with 5 x 10 training and 20 test images; torchvision's MD5 list
    patched to these files (the real ones check the official release)."""
    import torchvision.datasets as tvd

    rng = np.random.default_rng(0)
    folder = tmp_path / "tv" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    pixels = {}

    def batch(name, n):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        pixels[name] = data.reshape(n, 3, 32, 32)

    for i in range(1, 6):
        batch(f"data_batch_{i}", 10)
    batch("test_batch", 20)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR_CLASSES}, f)
    monkeypatch.setattr(tvd.CIFAR10, "train_list", [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": _md5(folder / "batches.meta")})
    train = np.concatenate([pixels[f"data_batch_{i}"] for i in range(1, 6)])
    return tmp_path / "tv", train, pixels["test_batch"]


def cifar_settings(root: Path, **entry):
    return settings_with({"tiny": {"kind": "torchvision", "name": "CIFAR10", "root": str(root), "val_size": 10, **entry}})


def test_torchvision_reads_from_root(tiny_cifar, tmp_path):
    root, train, test = tiny_cifar
    split = prepare_split(cifar_settings(root, download=False), "tiny", tmp_path / "out", workers=1)
    meta = json.loads(split.read_text())
    assert meta["classes"] == CIFAR_CLASSES and meta["test_from"] == "official test split"
    assert meta["counts"] == {"train": 40, "val": 10, "test": 20}
    assert meta["class_counts"]["val"] == [1] * 10
    cache = torch.load(tmp_path / "out" / CACHE_FILE, weights_only=True)
    assert torch.equal(cache["images"], torch.from_numpy(np.concatenate([train, test])))  # layout kept exactly
    assert cache["labels"].tolist() == [i % 10 for i in range(50)] + [i % 10 for i in range(20)]


@pytest.fixture
def local_http(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path / "www"`` (stands in for the network)."""
    import functools
    import http.server
    import threading

    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_torchvision_downloads_into_root_when_absent(tiny_cifar, local_http, tmp_path, monkeypatch):
    """The download path, fetching an archive from a local HTTP server instead of the internet."""
    import torchvision.datasets as tvd

    src, _, _ = tiny_cifar
    www, url = local_http
    archive = www / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(tvd.CIFAR10, "url", f"{url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", _md5(archive))
    root = tmp_path / "empty_root"
    split = prepare_split(cifar_settings(root), "tiny", tmp_path / "out", workers=1)
    assert (root / "cifar-10-batches-py" / "data_batch_1").is_file()
    assert json.loads(split.read_text())["counts"]["test"] == 20


def test_torchvision_absent_without_download_says_where_and_how(tmp_path):
    out = tmp_path / "out"
    root = tmp_path / "nothing_here"
    with pytest.raises(Natv2Error) as info:
        prepare_split(cifar_settings(root, download=False), "tiny", out, workers=1)
    message = str(info.value)
    assert f"not found in {root / 'cifar-10-batches-py'}" in message
    assert "download is false" in message and "download: true" in message and "imagefolder" in message
    assert "\n" not in message
    assert_nothing_written(out)


def test_torchvision_download_failure_is_one_line(tmp_path, monkeypatch):
    """No network, simulated by a URL that cannot be fetched."""
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.CIFAR10, "url", (tmp_path / "no" / "such.tar.gz").as_uri())
    out = tmp_path / "out"
    with pytest.raises(Natv2Error, match=r"datasets\.tiny: torchvision CIFAR10 not found in .* the download failed") as info:
        prepare_split(cifar_settings(tmp_path / "root"), "tiny", out, workers=1)
    assert "\n" not in str(info.value)
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "shape, layout",
    [((4, 28, 28), "gray N x H x W (MNIST)"), ((4, 12, 12, 3), "N x H x W x C (CIFAR)"), ((4, 3, 12, 12), "N x C x H x W (SVHN)")],
)
def test_torchvision_array_layouts(shape, layout):
    class Fake:
        data = np.arange(np.prod(shape), dtype=np.int64).reshape(shape).astype(np.uint8)
        targets = [0, 1, 2, 1]

    images, labels = _dataset_arrays(Fake(), 12, layout)
    assert images.shape == (4, 3, 12, 12) and labels.tolist() == [0, 1, 2, 1]
    if len(shape) == 4 and shape[-1] == 3:
        assert torch.equal(images, torch.from_numpy(Fake.data).permute(0, 3, 1, 2))
    elif len(shape) == 4:
        assert torch.equal(images, torch.from_numpy(Fake.data))


# --------------------------------------------------------------------------------------------
# batches and subsets


def numbered_set(n=10, size=12, seed=0) -> ImageSet:
    """Random images whose label is their index, so a batch row can be traced to its image."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    return ImageSet(images, torch.arange(n))


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def denormalise(x: torch.Tensor) -> torch.Tensor:
    return (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255


def test_eval_batches_in_order_resized_and_normalised():
    data = numbered_set()
    out = list(batches(data, 4, resolution=12, mean=MEAN, std=STD, train=False))
    assert [len(y) for _, y in out] == [4, 4, 2]  # eval keeps the last partial batch
    x = torch.cat([b for b, _ in out])
    assert x.dtype == torch.float32 and x.shape == (10, 3, 12, 12)
    assert torch.cat([y for _, y in out]).tolist() == list(range(10))
    assert torch.allclose(denormalise(x), data.images.float(), atol=1e-3)
    x20, y20 = next(batches(data, 10, resolution=20, mean=MEAN, std=STD, train=False))
    assert x20.shape == (10, 3, 20, 20) and y20.dtype == torch.int64
    reference = F.interpolate(data.images.float(), size=(20, 20), mode="bilinear", align_corners=False)
    assert (denormalise(x20) - reference).abs().max() <= 1.0  # resized on uint8: rounding only


def _matching_transform(augmented: torch.Tensor, image: torch.Tensor, pad: int):
    """(dy, dx, flipped) such that the zero-padded ``image`` cropped and maybe mirrored is ``augmented``."""
    padded = F.pad(image, (pad, pad, pad, pad))
    size = image.shape[-1]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + size, dx : dx + size]
            for flipped, candidate in ((False, crop), (True, crop.flip(-1))):
                if torch.equal(candidate, augmented):
                    return dy, dx, flipped
    return None


def test_train_batches_are_crops_and_flips_of_their_own_image():
    data = numbered_set(n=40)
    gen = torch.Generator().manual_seed(0)
    seen = []
    transforms = set()
    for x, y in batches(data, 16, resolution=12, mean=MEAN, std=STD, train=True, generator=gen, pad=3):
        assert x.shape == (16, 3, 12, 12) and x.dtype == torch.float32
        pixels = denormalise(x).round().to(torch.uint8)
        for row, label in zip(pixels, y.tolist()):
            found = _matching_transform(row, data.images[label], pad=3)
            assert found is not None, f"batch row of image {label} is not a padded crop / flip of it"
            transforms.add(found)
        seen.extend(y.tolist())
    assert len(seen) == 32 and len(set(seen)) == 32  # two full batches, no repeats; last 8 dropped
    assert len(transforms) > 10  # the crops and flips vary
    assert any(flipped for _, _, flipped in transforms) and any(not flipped for _, _, flipped in transforms)


def test_train_batches_follow_the_generator():
    data = numbered_set(n=20)

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return [(x, y) for x, y in batches(data, 8, resolution=16, mean=MEAN, std=STD, train=True, generator=gen)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))
    assert [x.shape for x, _ in a] == [(8, 3, 16, 16)] * 2


def test_train_batches_without_augmentation_are_the_images():
    data = numbered_set(n=6)
    gen = torch.Generator().manual_seed(0)
    (x, y), = batches(data, 6, resolution=12, mean=MEAN, std=STD, train=True, generator=gen, pad=0, flip=False)
    assert torch.allclose(denormalise(x), data.images[y].float(), atol=1e-3)


def test_batches_edge_cases():
    data = numbered_set(n=3)
    gen = torch.Generator().manual_seed(0)
    # fewer images than one batch: the partial batch is the only one, so it is kept
    assert [len(y) for _, y in batches(data, 8, resolution=12, mean=MEAN, std=STD, train=True, generator=gen)] == [3]
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        next(batches(data, 2, resolution=12, mean=MEAN, std=STD, train=True))


def test_subset_is_seeded_and_drawn_from_the_set():
    data = numbered_set(n=30)
    a = data.subset(10, torch.Generator().manual_seed(0))
    b = data.subset(10, torch.Generator().manual_seed(0))
    c = data.subset(10, torch.Generator().manual_seed(1))
    assert len(a) == 10 and torch.equal(a.labels, b.labels) and not torch.equal(a.labels, c.labels)
    assert len(set(a.labels.tolist())) == 10
    assert torch.equal(a.images, data.images[a.labels])  # each row is the image its label names
    everything = data.subset(99, torch.Generator().manual_seed(0))
    assert sorted(everything.labels.tolist()) == list(range(30)) and everything.labels.tolist() != list(range(30))


def test_subset_of_a_class_sorted_set_mixes_classes_in_every_batch():
    # ImageFolder splits are stored class by class; BN recalibration averages per-batch
    # statistics, so each batch of the drawn subset must hold the classes in their shares
    labels = torch.arange(10).repeat_interleave(100)  # 1000 images, class-sorted
    data = ImageSet(torch.zeros(1000, 3, 1, 1, dtype=torch.uint8), labels)
    sub = data.subset(400, torch.Generator().manual_seed(0))
    for batch in sub.labels.split(100):
        assert len(set(batch.tolist())) == 10, batch.bincount(minlength=10).tolist()


def test_image_set_checks_its_tensors():
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64 of length 2"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# --------------------------------------------------------------------------------------------
# the CLI step


def test_cli_split_with_a_user_dataset_from_an_extra_config_file(tmp_path, capsys):
    root = write_folder(tmp_path / "folder")
    user = tmp_path / "mine.yaml"
    user.write_text(f"datasets:\n  mydata:\n    kind: imagefolder\n    root: {root}\n    image_size: 16\n")
    out = tmp_path / "results" / "mydata" / "data"
    code = main(["split", "--config", str(DEFAULT_CONFIG), "--config", str(user), "--dataset", "mydata", "--out", str(out), "--workers", "1"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out / SPLIT_FILE)
    assert json.loads((out / SPLIT_FILE).read_text())["classes"] == ["cat", "dog", "eel"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "nope"], "natv2: error: unknown dataset key 'nope': the config defines "),
        (["--dataset", "gone", "--config", "GONE"], "natv2: error: config key datasets.gone.root: "),
        (["--dataset", "digits", "--config", "BADTYPE"], "natv2: error: config key data.val_size: 'big' is not of type 'number'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    gone = tmp_path / "gone.yaml"
    gone.write_text(f"datasets:\n  gone: {{kind: imagefolder, root: {tmp_path / 'missing'}}}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  val_size: big\n")
    argv = [{"GONE": str(gone), "BADTYPE": str(bad)}.get(a, a) for a in argv]
    if "--config" in argv:
        argv = ["--config", str(DEFAULT_CONFIG)] + argv
    out = tmp_path / "out"
    assert main(["split", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1
    assert_nothing_written(out)


# --------------------------------------------------------------------------------------------
# integration: CIFAR-10 as an image folder


@pytest.mark.cifar10
@pytest.mark.slow
def test_cifar10_imagefolder(cifar10_root, tmp_path):
    settings = settings_with({"c10": {"kind": "imagefolder", "root": str(cifar10_root), "val_size": 5000}})
    split = prepare_split(settings, "c10", tmp_path)
    meta = json.loads(split.read_text())
    assert meta["classes"] == CIFAR_CLASSES
    assert meta["counts"] == {"train": 45000, "val": 5000, "test": 10000}
    assert meta["class_counts"]["val"] == [500] * 10 and meta["class_counts"]["test"] == [1000] * 10
    data = load_data(split)
    assert len(data.train) + len(data.val) == 50000 and len(data.test) == 10000 and data.n_classes == 10
    assert data.train.images.shape[1:] == (3, 32, 32)
    # CIFAR-10's well-known channel means (0.491, 0.482, 0.447) from the JPEG copy
    assert np.allclose(data.mean, (0.491, 0.482, 0.447), atol=0.005)


def test_a_one_class_dataset_is_refused(tmp_path):
    """One class scores 100 % and means nothing: the split refuses it in one line."""
    root = write_folder(tmp_path / "one", train={"cat": FOLDER_TRAIN["cat"] * 1}, test=None)
    for i in range(3):
        _write_image(root / "train" / "cat" / f"more{i}.png", "RGB", (12, 12), (200, 30, 30))
    with pytest.raises(Natv2Error, match=r"datasets\.mine: .* has 1 class\(es\) \(cat\); a classifier needs at least 2"):
        prepare_split(folder_settings(root), "mine", tmp_path / "out")
    assert not (tmp_path / "out" / "split.json").exists()


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet as downloaded (issue 15.4)

TINY_COLOURS = {"n01443537": (200, 30, 30), "n01629819": (30, 200, 30), "n09999999": (30, 30, 200)}


def write_tiny_imagenet(root: Path) -> Path:
    """A 3-class tree with the official archive's layout (2 train images per class, 3 val images)."""
    wnids = list(TINY_COLOURS)
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # the official file is not sorted
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\n"
                                    "n01629819\tEuropean fire salamander, Salamandra salamandra\n"
                                    "n00000001\tunused entity\n")  # n09999999 has no entry: keeps its wnid
    for wnid, colour in TINY_COLOURS.items():
        for i in range(2):
            _write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "RGB", (64, 64), colour)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t10\t10\n")
    val = [("val_0.JPEG", "n01629819"), ("val_1.JPEG", "n09999999"), ("val_2.JPEG", "n01443537")]
    for name, wnid in val:
        _write_image(root / "val" / "images" / name, "RGB", (64, 64), TINY_COLOURS[wnid])
    (root / "val" / "val_annotations.txt").write_text("".join(f"{n}\t{w}\t0\t0\t63\t63\n" for n, w in val))
    _write_image(root / "test" / "images" / "test_0.JPEG", "RGB", (64, 64), (0, 0, 0))  # unlabelled: ignored
    return root


def test_tinyimagenet_reads_the_official_layout(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    settings = settings_with({"tiny": {"kind": "tinyimagenet", "root": str(root), "image_size": 16,
                                       "val_size": 3, "test_size": 0.2}})
    split = prepare_split(settings, "tiny", tmp_path / "out", workers=1)
    meta = json.loads(split.read_text())
    assert meta["classes"] == ["goldfish", "European fire salamander", "n09999999"]
    assert meta["test_from"] == "official test split" and meta["counts"]["test"] == 3
    assert meta["counts"]["train"] + meta["counts"]["val"] == 6
    cache = torch.load(tmp_path / "out" / CACHE_FILE, weights_only=True)
    assert cache["images"].shape == (9, 3, 16, 16)
    assert cache["labels"].tolist() == [0, 0, 1, 1, 2, 2, 1, 2, 0]  # train by sorted wnid, then val in file order
    for image, label in zip(cache["images"], cache["labels"].tolist()):
        colour = torch.tensor(list(TINY_COLOURS.values())[label], dtype=torch.float32)
        assert torch.allclose(image.float().mean(dim=(1, 2)), colour, atol=8)


def test_tinyimagenet_layout_errors_name_the_file(tmp_path):
    root = write_tiny_imagenet(tmp_path / "tiny")
    settings = settings_with({"tiny": {"kind": "tinyimagenet", "root": str(root), "image_size": 16}})
    (root / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(Natv2Error, match=r"val_1.JPEG: listed in val/val_annotations.txt line 2 but not found"):
        prepare_split(settings, "tiny", tmp_path / "out", workers=1)
    (root / "wnids.txt").unlink()
    with pytest.raises(Natv2Error, match=r"wnids.txt: not found \(Tiny-ImageNet layout"):
        prepare_split(settings, "tiny", tmp_path / "out", workers=1)
    assert_nothing_written(tmp_path / "out")
