"""Latency lookup tables: measure every block configuration on the target device once, then
predict any subnet's latency without building it (OFA's latency tables, issue 15).

``natv2 latency-table --config C --out table.json`` runs on the device the network will be
deployed on (any machine with torch) and measures, for every width and resolution of the
search space (OFA-style, as ``ofa/nas/efficiency_predictor/latency_lookup_table.py`` of OFA's
repository does per (input size, block) key):

- ``stem``: the stem, at the resolution's input;
- ``block``: every kernel x expand (x branch set for parallel-block variants) of every stage, both
  as the stage's first block (stride, channel change) and as a later block, at the input
  shape it gets in a subnet of that resolution;
- ``head`` (single-exit variants) or ``exit`` after every stage (early-exit variants);
- ``overhead``: whole subnet minus the sum of its parts (the dense skips' additions, framework
  overhead), the median over the subnets measured for the blocks.

Parts are timed inside whole forward passes of uniform subnets (forward hooks; see
:class:`_PartTimer` for why not alone), each run as :func:`natv2.costs.measure_latency` runs a
net (BN folded, channels_last, batch ``evaluation.latency_batch_size``, median of ``repeats``
timed passes after ``warmup``). The table records the device (torch version, threads, CPU /
GPU name) and the search space.

:func:`load_table` reads it; :meth:`LatencyTable.predict` sums the entries of a genome's parts:
the objective ``latency_lut`` (``search.latency_table`` names the file).
"""
from __future__ import annotations

import itertools
import logging
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from natv2.errors import Natv2Error

log = logging.getLogger(__name__)

FORMAT = "natv2-latency-table"
VERSION = 1
#: space fields a table must agree on with the space it predicts for
SPACE_FIELDS = ("variant", "stem_stride", "widths", "resolutions", "kernels", "expands", "levels", "n_exits")


# --------------------------------------------------------------------------------------------
# keys


def _w(width: float) -> str:
    return f"w{float(width):g}"


def stem_key(width: float, resolution: int) -> str:
    return f"stem/{_w(width)}/r{resolution}"


def block_key(width: float, resolution: int, stage: int, first: bool, kernel: int, expand: int,
              branches: int | None = None) -> str:
    """Key of one block: stage (0-based), first block of its stage or a later one, its genes
    (and, for parallel blocks, its branch-set key, natv2.variants.BRANCH_KEYS)."""
    key = f"block/{_w(width)}/r{resolution}/s{stage}/{'first' if first else 'later'}/k{kernel}/e{expand}"
    return key if branches is None else f"{key}/b{branches}"


def head_key(width: float, resolution: int, exit: int | None = None) -> str:
    """Key of the head (``exit`` None) or of the exit after stage ``exit`` (1-based)."""
    return f"head/{_w(width)}/r{resolution}" if exit is None else f"exit/{_w(width)}/r{resolution}/x{exit}"


def overhead_key(width: float, resolution: int) -> str:
    return f"overhead/{_w(width)}/r{resolution}"


def arch_keys(arch) -> list[str]:
    """The table keys whose latencies add up to the subnet ``arch`` (a natv2.space.Arch)."""
    w, r = arch.width, arch.resolution
    keys = [stem_key(w, r)]
    n_run = arch.exit if arch.exit is not None else len(arch.stages)  # an early exit skips later stages
    for s, blocks in enumerate(arch.stages[:n_run]):
        sets = arch.branches[s] if arch.branches is not None else (None,) * len(blocks)
        keys += [block_key(w, r, s, b == 0, k, e, sets[b]) for b, (k, e) in enumerate(blocks)]
    keys.append(head_key(w, r, arch.exit))
    keys.append(overhead_key(w, r))
    return keys


# --------------------------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class LatencyTable:
    """A device's latency table: ``entries`` (key -> ms), ``device``, ``space``, ``settings``."""

    entries: Mapping[str, float]
    device: Mapping[str, Any]
    space: Mapping[str, Any]
    settings: Mapping[str, Any]
    path: str = "latency table"

    def check_space(self, space) -> None:
        """Natv2Error when ``space`` (a SearchSpace) needs parts the table was not made for."""
        mine = space_description(space)
        for name in ("stem_stride", "kernels", "expands", "levels", "n_exits"):
            if name in self.space and mine.get(name) is not None and _norm(self.space[name]) != _norm(mine[name]):
                raise Natv2Error(f"{self.path}: made for {name} {self.space[name]}, the search space has {mine[name]}; "
                                 f"run natv2 latency-table with this config")
        for name in ("widths", "resolutions"):
            have = set(_norm(self.space.get(name, [])))
            missing = [v for v in mine[name] if _norm(v) not in have]
            if missing:
                raise Natv2Error(f"{self.path}: no entries for {name} {missing} (has {self.space.get(name)}); "
                                 f"run natv2 latency-table with this config")

    def arch_latency(self, arch) -> float:
        total = 0.0
        for key in arch_keys(arch):
            if key not in self.entries:
                raise Natv2Error(f"{self.path}: no entry {key!r}; the table was made for another search space "
                                 f"(run natv2 latency-table with this config)")
            total += float(self.entries[key])
        return max(total, 0.0)

    def predict(self, space, genomes: Sequence[Any]) -> np.ndarray:
        """Predicted latency (ms) of every genome (int vector or string form); no net is built."""
        out = np.empty(len(genomes))
        for i, g in enumerate(genomes):
            g = space.from_string(g) if isinstance(g, str) else g
            out[i] = self.arch_latency(space.decode(g))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "device": dict(self.device), "space": dict(self.space),
                "settings": dict(self.settings), "entries": dict(sorted(self.entries.items()))}


def _norm(value):
    if isinstance(value, (list, tuple)):
        return tuple(_norm(v) for v in value)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def load_table(path: str | Path) -> LatencyTable:
    """Read a table.json written by ``natv2 latency-table``; a wrong file is a one-line Natv2Error."""
    from natv2.io import read_json

    path = Path(path)
    if not path.is_file():
        raise Natv2Error(f"{path}: latency table not found (make it with `natv2 latency-table --config C --out {path}` "
                         f"on the target device)")
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        raise Natv2Error(f"{path}: not a natv2 latency table (format must be {FORMAT!r} with 'entries')")
    bad = [k for k, v in data["entries"].items() if not isinstance(v, (int, float)) or not np.isfinite(v)]
    if bad:
        raise Natv2Error(f"{path}: entry {bad[0]!r} is not a finite number of milliseconds")
    return LatencyTable(data["entries"], data.get("device", {}), data.get("space", {}), data.get("settings", {}),
                        str(path))


# --------------------------------------------------------------------------------------------
# measuring


def device_description(device) -> dict[str, Any]:
    """torch version, threads, CPU and GPU names of the measuring machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if getattr(device, "type", str(device)) == "cuda" else None
    return {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu,
            "gpu": gpu, "platform": platform.platform(), "python": platform.python_version()}


def space_description(space) -> dict[str, Any]:
    return {"widths": list(space.widths), "resolutions": list(space.resolutions), "kernels": list(space.kernels),
            "expands": list(space.expands), "depths": list(space.depths), "levels": list(space.levels),
            "n_exits": int(space.n_exits)}


def _time_ms(module, x, *, repeats: int, warmup: int, device, clock=time.perf_counter) -> float:
    """Median time (ms, wall ``clock`` by default) of ``module(x)``, as natv2.costs.measure_latency times a net."""
    import torch

    from natv2.costs import _sync

    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            t0 = clock()
            module(x)
            _sync(device)
            if i >= warmup:
                times.append(clock() - t0)
    return 1000.0 * statistics.median(times)


class _PartTimer:
    """Forward hooks timing named submodules inside whole forward passes of their net.

    Parts are timed in context, not alone: a block run in isolation, again and again, keeps its
    weights and its primitives hot and takes a fraction of its time inside a net (a factor 3-4
    for small nets on a CPU), so sums of isolated timings would not predict whole nets.
    """

    def __init__(self, modules: Mapping[str, Any], device, clock=time.perf_counter) -> None:
        from natv2.costs import _sync

        self.sync = lambda: _sync(device)
        self.clock = clock
        self.times: dict[str, list[float]] = {name: [] for name in modules}
        self.started: dict[str, float] = {}
        self.on = False
        self.handles = []
        for name, m in modules.items():
            self.handles.append(m.register_forward_pre_hook(self._start(name)))
            self.handles.append(m.register_forward_hook(self._stop(name)))

    def _start(self, name):
        def hook(module, args):
            if self.on:
                self.sync()
                self.started[name] = self.clock()
        return hook

    def _stop(self, name):
        def hook(module, args, output):
            if self.on:
                self.sync()
                self.times[name].append(self.clock() - self.started.pop(name))
        return hook

    def medians(self) -> dict[str, float]:
        return {name: 1000.0 * statistics.median(t) for name, t in self.times.items() if t}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _time_parts(net, parts: Mapping[str, Any], x, *, repeats: int, warmup: int, device,
                clock=time.perf_counter) -> dict[str, float]:
    """Median time (ms) of every part inside ``repeats`` forward passes of ``net`` (after ``warmup``)."""
    import torch

    timer = _PartTimer(parts, device, clock)
    try:
        with torch.inference_mode():
            net(x)  # always one untimed pass: a new net's first pass creates its kernels' primitives
            for i in range(warmup + repeats):
                timer.on = i >= warmup
                net(x)
    finally:
        timer.remove()
    return timer.medians()


def _prepare(static, device, channels_last: bool, fold: bool):
    import torch

    from natv2.nets.layers import fold_bn

    net = fold_bn(static) if fold else static.eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return net.to(device).eval().to(memory_format=fmt), fmt


def _parts(net) -> dict[str, Any]:
    """Named parts of a static net: stem, stage blocks ``s/b``, head or exits ``x/<stage>``."""
    parts = {"stem": net.stem}
    for s, stage in enumerate(net.stages):
        for b, block in enumerate(stage):
            parts[f"{s}/{b}"] = block
    if getattr(net, "head", None) is not None:
        parts["head"] = net.head
    for name, module in getattr(net, "exits", {}).items():
        parts[f"x/{int(name) + 1}"] = module
    return parts


def measure_table(supernet, *, batch_size: int = 1, repeats: int = 10, warmup: int = 3, device="cpu",
                  channels_last: bool = True, fold: bool = True, progress: bool = False,
                  clock=time.perf_counter) -> LatencyTable:
    """Measure every part of ``supernet``'s search space on ``device`` (see the module docstring).

    ``clock``: wall time (the default, what a deployed net costs); ``time.thread_time`` measures
    CPU time instead, steadier on a shared machine (bench/latency_table.py --clock cpu).
    """
    import torch

    from natv2.space import Arch

    device = torch.device(device)
    space = supernet.space
    supernet = supernet.eval()
    sets = list(space.branch_keys) or [None]  # parallel blocks: every branch set is its own entry
    timing = dict(repeats=repeats, warmup=warmup, device=device, clock=clock)
    entries: dict[str, float] = {}
    t0 = time.perf_counter()
    for width, res in itertools.product(space.widths, space.resolutions):
        overheads = []
        last_exit = space.n_exits if space.n_exits else None
        for kernel, expand, branch_set in itertools.product(space.kernels, space.expands, sets):
            arch = Arch(resolution=res, width=width, exit=last_exit,
                        stages=tuple(((kernel, expand),) * space.max_blocks for _ in range(space.n_stages)),
                        branches=None if branch_set is None else
                        tuple((branch_set,) * space.max_blocks for _ in range(space.n_stages)))
            net, fmt = _prepare(supernet.extract(space.encode(arch)), device, channels_last, fold)
            parts = _parts(net)
            x = torch.randn(batch_size, 3, res, res, device=device).contiguous(memory_format=fmt)
            measured = _time_parts(net, parts, x, **timing)
            for s in range(space.n_stages):
                entries[block_key(width, res, s, True, kernel, expand, branch_set)] = measured[f"{s}/0"]
                later = [measured[f"{s}/{b}"] for b in range(1, space.max_blocks)]
                entries[block_key(width, res, s, False, kernel, expand, branch_set)] = float(np.mean(later))
            entries.setdefault(stem_key(width, res), measured["stem"])
            if "head" in measured:
                entries.setdefault(head_key(width, res), measured["head"])
            if last_exit is not None:
                entries.setdefault(head_key(width, res, last_exit), measured[f"x/{last_exit}"])
            whole = _time_ms(net, x, **{**timing, "warmup": max(warmup, 1)})
            parts_sum = sum(entries[k] for k in arch_keys(arch) if not k.startswith("overhead/"))
            overheads.append(whole - parts_sum)
        for ex in range(1, space.n_exits):  # the other exits: the subnet that stops after stage ex
            arch = Arch(resolution=res, width=width, exit=ex,
                        branches=None if sets == [None] else tuple((sets[-1],) * space.max_blocks for _ in range(space.n_stages)),
                        stages=tuple(((space.kernels[0], space.expands[0]),) * space.max_blocks for _ in range(space.n_stages)))
            net, fmt = _prepare(supernet.extract(space.encode(arch)), device, channels_last, fold)
            x = torch.randn(batch_size, 3, res, res, device=device).contiguous(memory_format=fmt)
            exits = {f"x/{ex}": _parts(net)[f"x/{ex}"]}
            entries[head_key(width, res, ex)] = _time_parts(net, exits, x, **timing)[f"x/{ex}"]
        # below zero is noise (the parts were timed in other passes than the whole): no credit
        entries[overhead_key(width, res)] = max(0.0, float(statistics.median(overheads)))
        if progress:
            log.info("latency table: width %g, resolution %d done (%d entries, %.0f s)", width, res, len(entries),
                     time.perf_counter() - t0)
    desc = {"variant": getattr(supernet, "variant", type(supernet).__name__),
            "stem_stride": (getattr(supernet, "config", None) or {}).get("stem_stride"), **space_description(space)}
    settings = {"batch_size": batch_size, "repeats": repeats, "warmup": warmup, "channels_last": channels_last,
                "fold_bn": fold, "n_classes": int(supernet.n_classes), "seconds": round(time.perf_counter() - t0, 1)}
    return LatencyTable(entries, device_description(device), desc, settings)
