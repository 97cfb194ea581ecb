"""A cheap fingerprint of an image folder's content: relative paths, sizes and mtimes, hashed.

The workflow puts it into the split's rerun fingerprint (workflow/rules/common.smk), so adding,
removing or replacing an image, or adding or removing a class, reruns the split and everything
after it, while an untouched folder reruns nothing. Only file metadata is read (one ``stat``
per file, no image decoding), so it stays cheap for tens of thousands of images.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

# the folders natv2.sources.load_imagefolder reads: root/train/<class>/** and root/test/<class>/**
SPLIT_FOLDERS = ("train", "test")


def _visible(name: str) -> bool:
    return not name.startswith(".")  # as natv2.sources: .DS_Store, editor files are not images


def folder_manifest(root: str | Path) -> list[tuple[str, int, int]]:
    """(path relative to ``root``, size in bytes, mtime in ns) of every file the loader reads, sorted."""
    root = Path(root).expanduser()
    entries = []
    for split in SPLIT_FOLDERS:
        for dirpath, dirnames, filenames in os.walk(root / split):
            dirnames[:] = [d for d in dirnames if _visible(d)]
            for name in filenames:
                if not _visible(name):
                    continue
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except OSError:  # a dangling link: the loader will name it
                    entries.append((path.relative_to(root).as_posix(), -1, -1))
                    continue
                entries.append((path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return sorted(entries)


def manifest_hash(root: str | Path) -> str:
    """sha256 (16 hex digits) of :func:`folder_manifest`; ``"missing"`` when ``root`` is no folder."""
    if not Path(root).expanduser().is_dir():
        return "missing"
    digest = hashlib.sha256()
    for rel, size, mtime in folder_manifest(root):
        digest.update(f"{rel}\t{size}\t{mtime}\n".encode())
    return digest.hexdigest()[:16]
