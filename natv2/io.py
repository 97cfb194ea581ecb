"""Atomic file output and safe loading.

A step's output appears whole or not at all: everything is written to a temporary name in the
same directory and renamed into place (rename is atomic on POSIX), so a killed run never leaves
a partial file under a declared output name. Outputs get the mode a plain ``open`` would give
(0666 less the umask: 0644 by default), not mkstemp's private 0600, so a group can read them.
``.pt`` files are serialised in memory first: two identical saves give identical bytes (a
direct ``torch.save(obj, path)`` records the temporary file name inside the zip archive). An
OSError while writing (read-only folder, full disk, a file where a folder should be) becomes a
one-line Natv2Error naming the output and the OS reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

from natv2.errors import Natv2Error


def current_umask() -> int:
    """The process umask (read from /proc where it can be, so it is never changed even briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_reason(path: str | os.PathLike, error: OSError) -> str:
    """``"<path>: cannot write (<OS reason>)"``: one line, the reason as the OS words it."""
    reason = error.strerror or str(error) or type(error).__name__
    return f"{path}: cannot write ({reason})"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file has the umask's mode. An OSError (in the block too: it writes the
    output) becomes a Natv2Error naming ``path`` and the OS reason.
    """
    path = Path(path)
    tmp_path = None
    try:
        if path.is_dir():
            raise IsADirectoryError(21, os.strerror(21), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp_path = Path(tmp)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would hide results from the group
        finally:
            os.close(fd)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        if e.filename is not None and str(e.filename) not in (str(path), str(path.parent), str(tmp_path)):
            raise  # about another file (it names it): not this output's to claim
        raise Natv2Error(os_reason(path, e)) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def fill(tmp: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` into the (temporary) file ``tmp``; the one place output bytes are written."""
    with open(tmp, "wb") as f:
        f.write(data)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        fill(tmp, data)


def check_writable(path: str | os.PathLike, *, directory: bool = False) -> None:
    """Fail early, before long work, when the output ``path`` cannot be written.

    Probes the folder the output is written in (``path`` itself for a ``directory`` output
    built in place, else its parent) by creating and removing a small file there; an
    existing ``path`` of the wrong kind (a file given as an output folder, or the reverse)
    is refused too. Raises a one-line Natv2Error naming the path and the OS reason.
    """
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise Natv2Error(f"{path}: cannot write (Not a directory: an output folder is expected)")
    if not directory and path.is_dir():
        raise Natv2Error(f"{path}: cannot write (Is a directory: an output file is expected)")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise Natv2Error(f"{folder}: cannot write (Not a directory: {path} is to be written in it)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".natv2-write-probe.", dir=folder)
        try:
            os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise Natv2Error(f"{folder}: cannot write ({e.strerror or e})") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise Natv2Error(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise Natv2Error(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically, without the index."""
    write_text(path, frame.to_csv(index=False))


def read_csv(path: str | os.PathLike):
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise Natv2Error(f"{path}: file not found")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise Natv2Error(f"{path}: not a readable CSV table ({e})") from None


def torch_bytes(obj: Any) -> bytes:
    """``torch.save(obj)`` to memory: the same object gives the same bytes, whatever the file name.

    (Saved to a path, torch names the archive's top folder after the file, here a random
    temporary name; in memory it is always ``archive/``, which ``torch.load`` reads alike.)
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically. Save only tensors, numbers, strings, lists and dicts: data, not code."""
    write_bytes(path, torch_bytes(obj))


def load_torch(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: a checkpoint is data, never code.

    A missing, truncated or corrupt file raises a one-line Natv2Error naming it.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise Natv2Error(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise Natv2Error(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(e)}") from None
        # torch's own message advises loading with weights_only=False (running the file's code): never do
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise Natv2Error(f"{path}: holds Python objects{what}, not data only (tensors, numbers, strings, lists, "
                         "dicts); natv2 does not load it: re-create it with natv2") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:  # UnpicklingError: above
        raise Natv2Error(f"{path}: not a readable checkpoint (truncated or corrupt?): {_first_line(e)}") from None


def _first_line(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # no terminal colour codes in a log line
    return text.splitlines()[0] if text else type(error).__name__


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
