"""Resume state that belongs to its inputs: a folder, a fingerprint, and nothing left behind.

    state = ResumeFolder(out.parent / ".resume" / "adapt",
                         fingerprint({"data": split_json, "supernet": sup}, {"seed": 0, "adapt": cfg}))
    train(net, data, cfg, TrainRun(..., resume=state.path("train.pt")))
    save_supernet(out, ...)
    state.remove()                      # the output is whole: the state has served

The fingerprint (SHA-256 of each input file + the settings that shape the result, as JSON) is
written first into ``fingerprint.json``. A later run with other inputs (new candidates, a
changed split, other settings) finds a different fingerprint and discards the folder, with a
log line saying what differs, instead of resuming from (or, for a finished state, copying)
another run's weights. A fingerprint that cannot be read (an I/O error, a damaged file) keeps
the folder and raises a one-line Natv2Error: losing hours of training to a transient error is
worse than asking. Used by the supernet phases, the warm-up, the adaptation and the fine-tune.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from natv2.errors import Natv2Error

log = logging.getLogger(__name__)

STAMP = "fingerprint.json"


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (dataclasses as dicts, tuples as lists)."""
    def default(obj):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"resume fingerprint: {type(obj).__name__} is not JSON data")

    return json.loads(json.dumps(value, default=default))


def fingerprint(files: Mapping[str, str | Path], settings: Mapping[str, Any]) -> dict:
    """``{"files": {name: sha256}, "settings": {...}}`` for the input ``files`` and ``settings``."""
    from natv2.io import sha256_file

    return {"files": {name: sha256_file(path) for name, path in files.items()}, "settings": _plain(dict(settings))}


def split_files(split_json: str | Path) -> dict[str, Path]:
    """A split's two files (split.json and the image cache it names), for :func:`fingerprint`."""
    from natv2.io import read_json

    split_json = Path(split_json)
    meta = read_json(split_json)
    cache = meta.get("cache", "images.pt") if isinstance(meta, dict) else "images.pt"
    return {"split": split_json, "images": split_json.parent / str(cache)}


def _differences(saved: Any, current: dict) -> list[str]:
    """Names of what differs (``files.archive``, ``settings.adapt``...), for the log line."""
    if not isinstance(saved, dict):
        return ["everything"]
    names = []
    for part in ("files", "settings"):
        old, new = saved.get(part), current.get(part)
        if not isinstance(old, dict) or not isinstance(new, dict):
            if old != new:
                names.append(part)
            continue
        names += [f"{part}.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return names or ["the layout"]


class ResumeFolder:
    """The resume state of one step's output, valid only for the inputs it was made from."""

    def __init__(self, folder: str | Path, stamp: Mapping[str, Any]):
        from natv2.io import write_json

        self.folder = Path(folder)
        self.fingerprint = _plain(dict(stamp))
        path = self.folder / STAMP
        if self.folder.is_dir():
            if not path.exists():
                # the stamp is written before any state: this is a foreign or pre-fingerprint folder
                self._discard("no fingerprint.json (left by another natv2 version, or by hand)")
            else:
                saved = self._read(path)
                if saved != self.fingerprint:
                    self._discard("made from other inputs: " + ", ".join(_differences(saved, self.fingerprint)) + " differ")
        elif self.folder.exists():
            raise Natv2Error(f"{self.folder}: expected a resume state folder, found a file (delete it to start over)")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            write_json(path, self.fingerprint)

    @staticmethod
    def _read(path: Path) -> Any:
        """The saved fingerprint; a read error keeps the state and stops the step (one line)."""
        try:
            return json.loads(path.read_text())
        except OSError as e:
            reason = e.strerror or str(e)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            reason = f"not valid JSON: {e}"
        raise Natv2Error(f"{path}: cannot read the resume fingerprint ({reason}); the resume state is kept: "
                         f"fix the file, or delete {path.parent} to start over")

    def _discard(self, why: str) -> None:
        log.info("%s: resume state discarded, %s; starting over", self.folder, why)
        shutil.rmtree(self.folder)

    def path(self, name: str) -> Path:
        """A file of the state (e.g. natv2.train's ``resume=`` file)."""
        return self.folder / name

    def remove(self) -> None:
        """Delete the state: call once the step's output is written whole."""
        shutil.rmtree(self.folder, ignore_errors=True)
