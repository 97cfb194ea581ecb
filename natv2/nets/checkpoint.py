"""Supernet and static-net checkpoints: data only (config + state_dict + meta), loaded strictly.

    save_supernet(path, net, {"source": "official"})
    net, meta = load_supernet(path)

A file is ``{"format": ..., "version": 1, "config": {...}, "n_classes": int,
"state_dict": {...}, "meta": {...}}``; loading goes through ``natv2.io.load_torch``
(``weights_only=True``). Keys or shapes that do not fit raise a Natv2Error listing the first
mismatches; a truncated or corrupt file raises a Natv2Error naming it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

from natv2.errors import Natv2Error
from natv2.io import load_torch, save_torch

SUPERNET_FORMAT = "natv2-supernet"
STATIC_FORMAT = "natv2-static"
VERSION = 1
MAX_LISTED = 5


def state_dict_mismatches(model: nn.Module, state: Mapping[str, torch.Tensor], *, optional=("num_batches_tracked",)) -> list[str]:
    """Human-readable differences between ``model``'s state_dict and ``state`` (empty = fits)."""
    own = model.state_dict()
    problems = []
    for key, value in own.items():
        if key not in state:
            if not key.endswith(optional):
                problems.append(f"missing {key} {tuple(value.shape)}")
        elif not isinstance(state[key], torch.Tensor):
            problems.append(f"{key}: not a tensor")
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(f"{key}: shape {tuple(state[key].shape)} in file, {tuple(value.shape)} expected")
    for key in state:
        if key not in own:
            problems.append(f"unexpected {key}")
    return problems


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path,
                      what: str = "keys/shapes do not fit the network") -> None:
    """``model.load_state_dict(state)`` or a Natv2Error ``{source}: {what}: <first mismatches>``."""
    if not isinstance(state, Mapping):
        raise Natv2Error(f"{source}: expected a state_dict (mapping of tensors), got {type(state).__name__}")
    problems = state_dict_mismatches(model, state)
    if problems:
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise Natv2Error(f"{source}: {what}: " + "; ".join(problems[:MAX_LISTED]) + more)
    model.load_state_dict(state, strict=False)  # strictness checked above; optional counters may be absent


def _read(path: str | Path, fmt: str) -> dict:
    obj = load_torch(path)
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise Natv2Error(f"{path}: not a {fmt} checkpoint (format {found!r})")
    if obj.get("version") != VERSION:
        raise Natv2Error(f"{path}: checkpoint version {obj.get('version')!r}, this natv2 reads version {VERSION}")
    for key in ("config", "state_dict"):
        if key not in obj:
            raise Natv2Error(f"{path}: checkpoint has no {key!r} entry")
    return obj


@contextlib.contextmanager
def _stored_config(path: str | Path) -> Iterator[None]:
    """A network config stored in checkpoint ``path`` that does not build: an error naming the file."""
    try:
        yield
    except Natv2Error as e:
        raise Natv2Error(f"{path}: the network config stored in this checkpoint is not valid: {e}") from None
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
        raise Natv2Error(f"{path}: the network config stored in this checkpoint is not valid: "
                         f"{type(e).__name__}: {e}") from None


def save_supernet(path: str | Path, net: nn.Module, meta: Mapping[str, Any] | None = None,
                  extra: Mapping[str, Any] | None = None) -> None:
    """Write ``net``; ``extra``: further top-level entries (tensors allowed, e.g. NAT's carried
    adaptation state), read back with :func:`load_supernet_extra`."""
    obj = {
        "format": SUPERNET_FORMAT,
        "version": VERSION,
        "config": net.config,
        "n_classes": int(net.n_classes),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": dict(meta or {}),
    }
    clash = sorted(set(extra or {}) & set(obj))
    if clash:
        raise ValueError(f"save_supernet: extra entries {clash} would overwrite the checkpoint's own")
    obj.update(extra or {})
    save_torch(path, obj)


def load_supernet_extra(path: str | Path, key: str) -> Any:
    """The top-level entry ``key`` that :func:`save_supernet` wrote with ``extra`` (None if absent)."""
    return _read(path, SUPERNET_FORMAT).get(key)


def load_supernet(path: str | Path, map_location: str = "cpu"):
    """``(supernet, meta)`` from a file written by :func:`save_supernet`."""
    from natv2.nets import build_supernet

    obj = _read(path, SUPERNET_FORMAT)
    with _stored_config(path):
        net = build_supernet(obj["config"], int(obj.get("n_classes", 0)))
    load_state_strict(net, obj["state_dict"], path)
    return net.to(map_location), dict(obj.get("meta") or {})


def check_classes(net, n_classes: int, net_path, data_path) -> None:
    """Refuse a supernet whose head does not predict the dataset's ``n_classes`` classes."""
    from natv2.errors import Natv2Error

    have = getattr(net, "n_classes", None)
    if have is not None and int(have) != int(n_classes):
        raise Natv2Error(f"{net_path}: the supernet predicts {have} classes, the dataset {data_path} has {n_classes} "
                         "(warm it up on this dataset first: natv2 warmup)")


def save_static(path: str | Path, net: nn.Module, meta: Mapping[str, Any] | None = None) -> None:
    save_torch(
        path,
        {
            "format": STATIC_FORMAT,
            "version": VERSION,
            "config": net.config,
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "meta": dict(meta or {}),
        },
    )


def load_static(path: str | Path, map_location: str = "cpu"):
    """``(static_net, meta)`` from a file written by :func:`save_static`."""
    from natv2.nets import static_from_config

    obj = _read(path, STATIC_FORMAT)
    with _stored_config(path):
        net = static_from_config(obj["config"])
    load_state_strict(net, obj["state_dict"], path)
    return net.to(map_location), dict(obj.get("meta") or {})
