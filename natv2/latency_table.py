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
- early-exit variants: the stem and the blocks once per exit (key suffix ``/x<exit>``), timed
  in subnets that stop at that exit: a shallow subnet's blocks run faster than the same blocks
  in a deep one (measured on a CPU: 10-45 % for exits 1-4), its weights staying in the caches;
- ``overhead``: whole subnet minus the sum of its parts, the median over the subnets measured
  for the blocks (near 0: the parts' shares cover the whole pass, see below).

Every uniform subnet (all blocks the same kernel x expand) is timed twice, as
:func:`natv2.costs.measure_latency` times the subnets the table predicts (same function,
:func:`natv2.costs.time_forward`: torch.utils.benchmark's Timer, BN folded as
``evaluation.fold_bn``, channels_last, batch ``evaluation.latency_batch_size``,
``evaluation.latency_threads`` threads): once plain (the whole), once with forward hooks that
split every pass into its parts' shares (:class:`_PartTimer`: a part's share runs from the end
of the previous part to its own end, so the dense stages' additions and the framework's work
between modules are counted, and the shares add up to the pass). The hooks' own cost, the
hooked pass minus the plain one per part, is subtracted from every part. Parts are timed in
context, not alone (see :class:`_PartTimer` for why). The table records the device (torch
version, threads, CPU / GPU name), the timing settings and the search space.

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
VERSION = 2  # 2: early-exit spaces' stem and blocks keyed by the exit too
#: space fields a table must agree on with the space it predicts for
SPACE_FIELDS = ("variant", "stem_stride", "widths", "resolutions", "kernels", "expands", "levels", "n_exits")


# --------------------------------------------------------------------------------------------
# keys


def _w(width: float) -> str:
    return f"w{float(width):g}"


def _x(exit: int | None) -> str:
    return "" if exit is None else f"/x{exit}"


def stem_key(width: float, resolution: int, exit: int | None = None) -> str:
    """Key of the stem (early-exit spaces: in a subnet that stops at ``exit``)."""
    return f"stem/{_w(width)}/r{resolution}{_x(exit)}"


def block_key(width: float, resolution: int, stage: int, first: bool, kernel: int, expand: int,
              branches: int | None = None, exit: int | None = None) -> str:
    """Key of one block: stage (0-based), first block of its stage or a later one, its genes
    (and, for parallel blocks, its branch-set key, natv2.variants.BRANCH_KEYS); early-exit
    spaces: in a subnet that stops at ``exit``."""
    key = f"block/{_w(width)}/r{resolution}/s{stage}/{'first' if first else 'later'}/k{kernel}/e{expand}"
    return (key if branches is None else f"{key}/b{branches}") + _x(exit)


def head_key(width: float, resolution: int, exit: int | None = None) -> str:
    """Key of the head (``exit`` None) or of the exit after stage ``exit`` (1-based)."""
    return f"head/{_w(width)}/r{resolution}" if exit is None else f"exit/{_w(width)}/r{resolution}/x{exit}"


def overhead_key(width: float, resolution: int) -> str:
    return f"overhead/{_w(width)}/r{resolution}"


def part_keys(arch, *, exit_suffix: bool = True) -> dict[str, str]:
    """Part name (:func:`static_parts`: ``stem``, ``s/b``, ``head`` or ``x/<exit>``) -> table key,
    for the subnet ``arch`` (a natv2.space.Arch). ``exit_suffix=False`` leaves the exit out of
    the stem's and the blocks' keys (it changes their latency, through the caches, not their counts)."""
    w, r = arch.width, arch.resolution
    ex = arch.exit if exit_suffix else None
    keys = {"stem": stem_key(w, r, ex)}
    n_run = arch.exit if arch.exit is not None else len(arch.stages)  # an early exit skips later stages
    for s, blocks in enumerate(arch.stages[:n_run]):
        sets = arch.branches[s] if arch.branches is not None else (None,) * len(blocks)
        keys.update({f"{s}/{b}": block_key(w, r, s, b == 0, k, e, sets[b], ex) for b, (k, e) in enumerate(blocks)})
    keys["head" if arch.exit is None else f"x/{arch.exit}"] = head_key(w, r, arch.exit)
    return keys


def arch_keys(arch) -> list[str]:
    """The table keys whose latencies add up to the subnet ``arch`` (a natv2.space.Arch)."""
    return [*part_keys(arch).values(), overhead_key(arch.width, arch.resolution)]


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
    if data.get("version", 1) != VERSION:
        raise Natv2Error(f"{path}: latency table version {data.get('version', 1)}, this natv2 reads version {VERSION}; "
                         f"make it again with `natv2 latency-table`")
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


class _PartTimer:
    """Forward hooks that split every forward pass of ``net`` into its parts' shares.

    A part's share is the time from the end of the previous part (or the start of the pass) to
    its own end, so it holds what runs between the parts too (a dense stage's additions before
    a block, its final sum before the next stage or exit); the time after the last part (the
    return of the forward) goes to that last part. The shares of a pass add up to the pass.

    Parts are timed in context, not alone: a block run in isolation, again and again, keeps its
    weights and its primitives hot and takes a fraction of its time inside a net (measured: the
    blocks' isolated times add up to 60-80 % of the net on a CPU, less the bigger the net), so
    sums of isolated timings would not predict whole nets.
    """

    def __init__(self, net, modules: Mapping[str, Any], device, clock=time.perf_counter) -> None:
        from natv2.costs import _sync

        self.sync = (lambda: _sync(device)) if getattr(device, "type", "cpu") != "cpu" else (lambda: None)
        self.clock = clock
        self.passes: list[dict[str, float]] = []
        self.current: dict[str, float] | None = None
        self.last = 0.0
        self.last_name = None
        self.on = False
        self.handles = [net.register_forward_pre_hook(self._begin), net.register_forward_hook(self._end)]
        for name, m in modules.items():
            self.handles.append(m.register_forward_hook(self._stop(name)))

    def _begin(self, module, args):
        if self.on:
            self.sync()
            self.current, self.last_name, self.last = {}, None, self.clock()

    def _stop(self, name):
        def hook(module, args, output):
            if self.on and self.current is not None:
                self.sync()
                now = self.clock()
                self.current[name] = self.current.get(name, 0.0) + now - self.last
                self.last, self.last_name = now, name
        return hook

    def _end(self, module, args, output):
        if self.on and self.current is not None:
            self.sync()
            if self.last_name is not None:
                self.current[self.last_name] += self.clock() - self.last
            self.passes.append(self.current)
            self.current = None

    def shares(self) -> tuple[dict[str, float], float]:
        """(part -> ms, hooked pass ms): each part's mean share over the typical passes (those
        whose total lies in the interquartile range of the totals, so the parts still add up),
        and the median total of a pass."""
        totals = np.array([sum(p.values()) for p in self.passes])
        lo, hi = np.percentile(totals, [25, 75])
        typical = [p for p, t in zip(self.passes, totals) if lo <= t <= hi] or self.passes
        names = {n for p in typical for n in p}
        return ({n: 1000.0 * float(np.mean([p.get(n, 0.0) for p in typical])) for n in names},
                1000.0 * float(np.median(totals)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _time_parts(net, parts: Mapping[str, Any], x, *, device, clock=None, **timing) -> tuple[dict[str, float], float]:
    """(part -> ms, hooked pass ms, see :meth:`_PartTimer.shares`) over the forward passes of
    ``net`` that :func:`natv2.costs.time_forward` times (``timing``: its repeats, min_time, threads)."""
    import torch

    from natv2.costs import time_forward

    timer = _PartTimer(net, parts, device, clock or time.perf_counter)
    try:
        timer.on = True
        with torch.inference_mode():
            time_forward(lambda: net(x), clock=clock, **{**timing, "warmup": 0})
    finally:
        timer.remove()
    return timer.shares()


def _time_net(net, x, *, clock=None, **timing) -> float:
    """Median time (ms) of ``net(x)`` as natv2.costs.measure_latency times a subnet."""
    import torch

    from natv2.costs import time_forward

    with torch.inference_mode():
        return 1000.0 * statistics.median(time_forward(lambda: net(x), clock=clock, **timing))


def _prepare(static, device, channels_last: bool, fold: bool):
    from natv2.costs import inference_copy

    return inference_copy(static, device, channels_last, fold)


def static_parts(net) -> dict[str, Any]:
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


def measure_table(supernet, *, batch_size: int = 1, repeats: int = 10, warmup: int = 3, min_time: float = 0.1,
                  threads: int | None = 1, device="cpu", channels_last: bool = True, fold: bool = True,
                  progress: bool = False, clock=None) -> LatencyTable:
    """Measure every part of ``supernet``'s search space on ``device`` (see the module docstring).

    ``repeats``, ``warmup``, ``min_time``, ``threads``: as natv2.costs.measure_latency, which
    times the subnets the table predicts (``evaluation.latency_*``). ``clock``: None = wall
    time (what a deployed net costs); ``time.thread_time`` measures CPU time instead, steadier
    on a shared machine (bench/latency_table.py --clock cpu).
    """
    import torch

    from natv2.rng import torch_stream

    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    space = supernet.space
    supernet = supernet.eval()
    sets = list(space.branch_keys) or [None]  # parallel blocks: every branch set is its own entry
    timing = dict(repeats=repeats, min_time=min_time, threads=threads, clock=clock)
    entries: dict[str, float] = {}
    hooks: dict[str, float] = {}  # the hook cost per part subtracted, per width / resolution
    t0 = time.perf_counter()

    def prepared(arch):
        net, fmt = _prepare(supernet.extract(space.encode(arch)), device, channels_last, fold)
        x = torch.randn(batch_size, 3, arch.resolution, arch.resolution, generator=torch_stream(0, "latency"))
        return net, x.to(device).contiguous(memory_format=fmt)

    # early-exit spaces: every exit's blocks are timed in nets that stop there (a shallow net's
    # blocks run faster than the same blocks inside a deep one: its weights stay in the caches)
    exits = list(range(1, space.n_exits + 1)) if space.n_exits else [None]
    for width, res in itertools.product(space.widths, space.resolutions):
        runs = []  # (arch, whole ms, part -> ms, hooked pass ms)
        for ex, kernel, expand, branch_set in itertools.product(exits, space.kernels, space.expands, sets):
            arch = space.uniform(res, width, kernel, expand, ex, branch_set)
            net, x = prepared(arch)
            whole = _time_net(net, x, warmup=warmup, **timing)  # warms the net up for the parts too
            runs.append((arch, whole, *_time_parts(net, static_parts(net), x, device=device, **timing)))
        # the hooks' own cost per part: what the hooked passes take more than the plain ones
        hook = max(0.0, float(np.median([(hooked - whole) / len(parts) for _, whole, parts, hooked in runs])))
        shared: dict[str, list[float]] = {}
        for arch, _, parts, _ in runs:
            kernel, expand = arch.stages[0][0]
            branch_set = None if arch.branches is None else arch.branches[0][0]
            ex = arch.exit
            parts = {name: ms - hook for name, ms in parts.items()}
            for s in range(ex if ex is not None else space.n_stages):
                entries[block_key(width, res, s, True, kernel, expand, branch_set, ex)] = parts[f"{s}/0"]
                later = [parts[f"{s}/{b}"] for b in range(1, space.max_blocks)]
                entries[block_key(width, res, s, False, kernel, expand, branch_set, ex)] = float(np.mean(later))
            shared.setdefault(stem_key(width, res, ex), []).append(parts["stem"])
            shared.setdefault(head_key(width, res, ex), []).append(parts["head" if ex is None else f"x/{ex}"])
        entries.update({key: float(np.mean(ms)) for key, ms in shared.items()})  # the same in every net: their mean
        # what no part holds: the whole minus its parts (near 0: the parts' shares cover the pass;
        # below 0 is noise, the parts timed in other passes than the whole: no credit)
        entries[overhead_key(width, res)] = max(0.0, float(np.median([
            whole - sum(entries[k] for k in arch_keys(arch) if not k.startswith("overhead/"))
            for arch, whole, _, _ in runs])))
        hooks[f"{_w(width)}/r{res}"] = round(hook, 5)
        if progress:
            log.info("latency table: width %g, resolution %d done (%d entries, %.0f s)", width, res, len(entries),
                     time.perf_counter() - t0)
    desc = {"variant": getattr(supernet, "variant", type(supernet).__name__),
            "stem_stride": (getattr(supernet, "config", None) or {}).get("stem_stride"), **space_description(space)}
    settings = {"batch_size": batch_size, "repeats": repeats, "warmup": warmup, "min_time": min_time,
                "threads": threads, "channels_last": channels_last, "fold_bn": fold,
                "clock": "wall" if clock is None else getattr(clock, "__name__", str(clock)), "hook_ms": hooks,
                "n_classes": int(supernet.n_classes), "seconds": round(time.perf_counter() - t0, 1)}
    return LatencyTable(entries, {**device_description(device), "threads": threads}, desc, settings)
