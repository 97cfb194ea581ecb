"""natv2.io: output modes, identical bytes, OS errors as one line, safe loading."""
from __future__ import annotations

import errno
import os
import stat

import pandas as pd
import pytest
import torch

from natv2 import io as nio
from natv2.cli import main
from natv2.errors import Natv2Error


@pytest.fixture
def umask():
    """Set a umask for the test, then restore the old one."""
    old = os.umask(0o022)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    nio.write_json(tmp_path / "a.json", {"x": 1})
    nio.save_torch(tmp_path / "b.pt", {"t": torch.zeros(2)})
    nio.write_csv(tmp_path / "c.csv", pd.DataFrame({"x": [1]}))
    for name in ("a.json", "b.pt", "c.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_two_identical_torch_saves_give_identical_bytes(tmp_path):
    obj = {"images": torch.arange(48, dtype=torch.uint8).reshape(1, 3, 4, 4), "labels": torch.tensor([3])}
    nio.save_torch(tmp_path / "one.pt", obj)
    nio.save_torch(tmp_path / "other.pt", obj)  # another name: torch would record it in the archive
    assert (tmp_path / "one.pt").read_bytes() == (tmp_path / "other.pt").read_bytes()
    back = nio.load_torch(tmp_path / "other.pt")
    assert torch.equal(back["images"], obj["images"]) and torch.equal(back["labels"], obj["labels"])


def _full_disk(monkeypatch):
    """Every output write fails as on a full disk."""
    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        if "w" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(nio, "open", fake_open, raising=False)


@pytest.mark.parametrize("writer", ["torch", "json", "csv"])
def test_full_disk_is_one_line_naming_the_output(tmp_path, monkeypatch, writer):
    _full_disk(monkeypatch)
    out = tmp_path / f"out.{writer}"
    with pytest.raises(Natv2Error) as err:
        if writer == "torch":
            nio.save_torch(out, {"t": torch.zeros(1000)})
        elif writer == "json":
            nio.write_json(out, {"x": 1})
        else:
            nio.write_csv(out, pd.DataFrame({"x": [1]}))
    assert str(err.value) == f"{out}: cannot write (No space left on device)"
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no temporary left behind


def test_read_only_folder_is_one_line(tmp_path, monkeypatch):
    # the tests run as root, for whom chmod does not stop a write: the OS answer is simulated
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(nio.tempfile, "mkstemp", refuse)
    with pytest.raises(Natv2Error, match=rf"^{tmp_path}/x.json: cannot write \(Read-only file system\)$"):
        nio.write_json(tmp_path / "x.json", {})
    with pytest.raises(Natv2Error, match=rf"^{tmp_path}: cannot write \(Read-only file system\)$"):
        nio.check_writable(tmp_path / "x.pt")


def test_output_under_a_file_or_onto_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(Natv2Error, match=r"file/out.json: cannot write \(.*(Not a directory|File exists)"):
        nio.write_json(tmp_path / "file" / "out.json", {})
    (tmp_path / "folder").mkdir()
    with pytest.raises(Natv2Error, match=r"folder: cannot write \(Is a directory"):
        nio.save_torch(tmp_path / "folder", {})
    with pytest.raises(Natv2Error, match=r"file: cannot write \(Not a directory"):
        nio.check_writable(tmp_path / "file", directory=True)
    with pytest.raises(Natv2Error, match=r"folder: cannot write \(Is a directory"):
        nio.check_writable(tmp_path / "folder")
    nio.check_writable(tmp_path / "new" / "deeper" / "out.pt")  # missing folders are made, the probe removed
    assert list((tmp_path / "new" / "deeper").iterdir()) == []


def test_cli_output_errors_are_one_line(tmp_path, capsys, monkeypatch):
    shard = tmp_path / "a.csv"
    pd.DataFrame({"genome": ["x"], "top1_err": [1.0], "row": [0]}).to_csv(shard, index=False)
    (tmp_path / "file").write_text("x")
    rc = main(["collect", "--inputs", str(shard), "--out", str(tmp_path / "file" / "out.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"natv2: error: {tmp_path}/file") and "\n" not in err
    _full_disk(monkeypatch)
    rc = main(["collect", "--inputs", str(shard), "--out", str(tmp_path / "out.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"natv2: error: {tmp_path}/out.csv: cannot write (No space left on device)"


def test_cli_turns_any_os_error_into_one_line(tmp_path, capsys, monkeypatch):
    import natv2.steps.collect as collect

    def boom(args):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(tmp_path / "x"))

    monkeypatch.setattr(collect, "run", boom)
    rc = main(["collect", "--inputs", "a.csv", "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"natv2: error: {tmp_path}/x: Input/output error"


class NotData:
    pass


def test_a_pickled_object_is_refused_without_advising_weights_only_false(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"x": NotData()}, path)
    with pytest.raises(Natv2Error) as err:
        nio.load_torch(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: holds Python objects") and "NotData" in msg
    assert "weights_only" not in msg and "can still be loaded" not in msg and "\x1b" not in msg
    assert "\n" not in msg


def test_split_out_that_is_a_file_is_refused_before_reading_the_dataset(tmp_path, capsys, monkeypatch):
    import natv2.splits

    def no_reading(*args, **kwargs):
        raise AssertionError("read the dataset before checking the output")

    monkeypatch.setattr(natv2.splits, "prepare_split", no_reading)
    (tmp_path / "taken").write_text("x")
    rc = main(["split", "--dataset", "digits", "--out", str(tmp_path / "taken")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"natv2: error: {tmp_path}/taken: cannot write (Not a directory") and "\n" not in err
